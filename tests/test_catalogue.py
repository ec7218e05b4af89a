"""The live catalogue: upserts, replacements and deletes over a base index, searched against brute force,
replayed on open, seen by another process, compacted into a fresh index, and the errors a writer gets."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from unifashion_core.errors import UserError
from unifashion_core.retrieval import catalogue as catalogue_module
from unifashion_core.retrieval.catalogue import (
    Catalogue,
    CatalogueBusy,
    ItemBatch,
    UnknownItem,
    Upload,
    compact,
)
from unifashion_core.retrieval.index import IndexWriter, RetrievalIndex
from unifashion_core.retrieval.payload import ItemRecord

Q, D = 4, 16
META = {"fingerprint": "model-aaa", "manifest_sha256": "m1", "split": "test", "data": "/nowhere"}


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)


def items(prefix: str, count: int, seed: int, fields: dict | None = None) -> dict:
    """``count`` items with vectors, captions and records (category alternates dress / shirt)."""
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i:03d}" for i in range(count)]
    records = [ItemRecord(item_id, f"text {item_id}", f"images/{item_id}.png",
                          fields or {"category": ("dress", "shirt")[i % 2]}) for i, item_id in enumerate(ids)]
    return {"ids": ids, "image": unit(rng, count, Q, D), "text": unit(rng, count, D), "caption": unit(rng, count, D),
            "captions": [f"caption {item_id}" for item_id in ids], "records": records}


def batch(data: dict, uploads: list[Upload | None] | None = None) -> ItemBatch:
    return ItemBatch(data["records"], data["image"], data["text"], data["caption"], data["captions"],
                     uploads or [None] * len(data["ids"]))


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    base = items("base", 40, seed=0)
    writer = IndexWriter(tmp_path / "index", META)
    writer.add(base["ids"], base["image"], base["text"], base["caption"], base["captions"], base["records"])
    writer.finalize("flat")
    return tmp_path / "index"


class Reference:
    """What the catalogue should hold: id -> vectors and record, updated as the test writes."""

    def __init__(self, data: dict) -> None:
        self.items: dict[str, tuple] = {}
        self.add(data)

    def add(self, data: dict) -> None:
        for i, item_id in enumerate(data["ids"]):
            self.items[item_id] = (data["image"][i], data["text"][i], data["caption"][i], data["records"][i])

    def ranking(self, scores: torch.Tensor, ids: list[str], k: int) -> tuple[np.ndarray, list[list[str]]]:
        top = torch.topk(scores, k, dim=1)
        return top.values.numpy(), [[ids[j] for j in row] for row in top.indices.tolist()]

    def search(self, kind: str, queries: np.ndarray, k: int, category: str | None = None) -> tuple:
        ids = sorted(i for i, v in self.items.items() if category is None or v[3].fields.get("category") == category)
        image = torch.from_numpy(np.stack([self.items[i][0] for i in ids]))  # (n, Q, D)
        text = torch.from_numpy(np.stack([self.items[i][1] for i in ids]))
        caption = torch.from_numpy(np.stack([self.items[i][2] for i in ids]))
        q = torch.from_numpy(queries)
        if kind == "texts":
            scores = torch.einsum("mqd,nd->mqn", q, text).amax(1)
        else:
            scores = torch.einsum("md,nqd->mnq", q, image).amax(-1)
            if kind == "composed":
                scores = scores + 0.5 * q @ caption.T
        return self.ranking(scores, ids, k)


def check_against(view, reference: Reference, category: str | None = None) -> None:
    """Every search kind of ``view`` equals brute force over the reference items (filter included)."""
    rng = np.random.default_rng(7)
    filter = {"category": category} if category else None
    allowed = sum(1 for v in reference.items.values() if category is None or v[3].fields.get("category") == category)
    k = min(12, allowed)
    for kind, queries, run in (
        ("images", unit(rng, 6, D), lambda q: view.search_images(q, k, filter)),
        ("texts", unit(rng, 6, Q, D), lambda q: view.search_texts(q, k, filter)),
        ("composed", unit(rng, 6, D), lambda q: view.search_composed(q, k, caption_weight=0.5, filter=filter)),
    ):
        scores, rows = run(queries)
        ref_scores, ref_ids = reference.search(kind, queries, k, category)
        assert [[view.item_at(r).id for r in row] for row in rows.tolist()] == ref_ids
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_upserts_replacements_and_deletes_rank_like_brute_force(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir, expected_fingerprint="model-aaa")
    reference = Reference(items("base", 40, seed=0))
    new = items("new", 15, seed=1)
    catalogue.upsert(batch(new))
    reference.add(new)
    replaced = items("base", 5, seed=2)  # base000..base004 get new vectors and records
    replaced["records"] = [ItemRecord(r.id, "replaced", "", {"category": "coat"}) for r in replaced["records"]]
    catalogue.upsert(batch(replaced))
    reference.add(replaced)
    again = items("new", 3, seed=3)  # live items replaced by live items
    catalogue.upsert(batch(again))
    reference.add(again)
    view = catalogue.delete(["base010", "new005", "base001"])
    for gone in ("base010", "new005", "base001"):
        del reference.items[gone]
    assert view.num_items == len(reference.items) == 40 + 15 - 3 and view.seq == 4
    assert view.item("base002").caption == "replaced" and view.item("new001").caption == "text new001"
    assert not view.contains("base010") and view.contains("base011")
    for category in (None, "dress", "coat"):
        check_against(view, reference, category)
    reopened = Catalogue.open(index_dir).snapshot()  # replayed from disk
    assert reopened.num_items == view.num_items and reopened.seq == 4
    check_against(reopened, reference)
    check_against(reopened, reference, "coat")


def test_a_snapshot_never_changes_and_another_process_sees_writes(index_dir: Path) -> None:
    writer, reader = Catalogue.open(index_dir), Catalogue.open(index_dir)
    before = reader.snapshot()
    writer.upsert(batch(items("new", 3, seed=1)))
    writer.delete(["base000"])
    assert before.num_items == 40 and not before.contains("new000") and before.contains("base000")
    after = reader.snapshot()
    assert after.num_items == 42 and after.contains("new002") and not after.contains("base000")
    with pytest.raises(UnknownItem):
        after.item("base000")


def test_filters_on_a_field_only_live_items_have(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    view = catalogue.upsert(batch(items("new", 4, seed=1, fields={"brand": "acme"})))
    assert "brand" in view.field_names()
    scores, rows = view.search_images(unit(np.random.default_rng(0), 2, D), 10, {"brand": ["acme"]})
    assert rows.shape == (2, 4) and {view.item_at(r).id for r in rows[0]} == {f"new{i:03d}" for i in range(4)}
    with pytest.raises(UserError, match="cannot filter on 'colour'"):
        view.search_images(unit(np.random.default_rng(0), 1, D), 3, {"colour": "red"})
    with pytest.raises(UserError, match="must be a string or a list of strings"):
        view.search_images(unit(np.random.default_rng(0), 1, D), 3, {"brand": 3})
    with pytest.raises(UserError, match="k must be between 1 and the catalogue size"):
        view.search_images(unit(np.random.default_rng(0), 1, D), 45, None)


def test_uploads_are_stored_by_content_and_served_from_the_index(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    data = items("up", 2, seed=4)
    data["records"] = [ItemRecord(r.id, r.caption, "", r.fields) for r in data["records"]]
    view = catalogue.upsert(batch(data, [Upload(b"png-bytes", ".png"), None]))
    path = view.image_file("up000")
    assert path.parent == index_dir.absolute() / "uploads" and path.read_bytes() == b"png-bytes"
    assert view.image_file("up001") is None  # no image of its own and none in the data
    assert view.image_file("base003") == Path("/nowhere/images/base003.png")


def test_compact_folds_everything_into_a_fresh_index(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    reference = Reference(items("base", 40, seed=0))
    new = items("new", 6, seed=1)
    new["records"] = [ItemRecord(r.id, r.caption, "", r.fields) for r in new["records"]]
    catalogue.upsert(batch(new, [Upload(f"image {i}".encode(), ".jpg") for i in range(6)]))
    reference.add(new)
    catalogue.delete(["base000", "new001"])
    del reference.items["base000"], reference.items["new001"]
    before = catalogue.snapshot()
    summary = compact(index_dir)
    assert (summary.num_items, summary.num_segments, summary.num_uploads) == (44, 2, 5)
    assert not (index_dir / "live").exists()
    base = RetrievalIndex.load(index_dir)
    assert base.num_items == 44 and base.meta["generation"] == 1 and base.meta["compacted_segments"] == 2
    assert base.meta["data"] == "/nowhere" and base.kind == "flat"
    assert base.captions[base.row_of("new003")] == "caption new003"
    after = catalogue.snapshot()  # the open catalogue picks up the new base
    assert after.seq == 0 and after.base is not before.base and after.num_items == 44
    check_against(after, reference)
    assert after.image_file("new002").read_bytes() == b"image 2"
    assert compact(index_dir).num_segments == 0  # nothing left to fold
    catalogue.upsert(batch(items("more", 2, seed=5)))  # writes continue on the new base
    assert Catalogue.open(index_dir).snapshot().num_items == 46


def test_deleting_an_unknown_id_writes_nothing(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    with pytest.raises(UnknownItem, match="no item 'nope'"):
        catalogue.delete(["base001", "nope"])
    assert catalogue.snapshot().num_items == 40 and not list((index_dir / "live").glob("*.npz"))


def test_bad_batches_are_refused(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    data = items("new", 2, seed=1)
    with pytest.raises(ValueError, match="caption vectors"):
        catalogue.upsert(ItemBatch(data["records"], data["image"], data["text"], None, None, [None, None]))
    with pytest.raises(ValueError, match="image vectors"):
        catalogue.upsert(batch({**data, "image": data["image"][:, :2]}))
    twice = {**data, "records": [data["records"][0]] * 2}
    with pytest.raises(UserError, match="unique"):
        catalogue.upsert(batch(twice))
    assert catalogue.snapshot().seq == 0


def test_a_damaged_segment_is_refused_and_strays_are_cleaned(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    catalogue.upsert(batch(items("new", 2, seed=1)))
    (index_dir / "live" / ".000000000002.npz.tmp-99999-0a1b2c3d.npz").write_bytes(b"half")  # a killed writer's
    (index_dir / "uploads").mkdir(exist_ok=True)
    (index_dir / "uploads" / ".ab12.png.tmp-99999-0a1b2c3d.png").write_bytes(b"half")  # leftovers
    catalogue.delete(["new000"])
    assert sorted(p.name for p in (index_dir / "live").iterdir()) == ["000000000001.npz", "000000000002.npz"]
    assert not list((index_dir / "uploads").iterdir())
    (index_dir / "live" / "000000000002.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="is damaged"):
        Catalogue.open(index_dir)


def test_an_index_built_by_another_model_is_refused(index_dir: Path) -> None:
    with pytest.raises(UserError, match="different model"):
        Catalogue.open(index_dir, expected_fingerprint="model-bbb")


def test_writers_wait_for_the_lock_then_give_up(index_dir: Path) -> None:
    with catalogue_module._write_lock(index_dir.absolute()):
        with pytest.raises(CatalogueBusy, match="locked by another writer"):
            compact(index_dir, wait_s=0.2)


def test_compacting_an_emptied_catalogue_is_refused(index_dir: Path) -> None:
    catalogue = Catalogue.open(index_dir)
    catalogue.delete([f"base{i:03d}" for i in range(40)])
    assert catalogue.snapshot().num_items == 0
    with pytest.raises(UserError, match="every item"):
        compact(index_dir)


def test_concurrent_searches_see_whole_items_only(index_dir: Path) -> None:
    """While one thread upserts, every search result resolves to a complete record in its view."""
    catalogue = Catalogue.open(index_dir)
    queries = unit(np.random.default_rng(3), 1, D)
    errors: list[str] = []
    done = threading.Event()

    def search() -> None:
        while not done.is_set():
            view = catalogue.snapshot()
            scores, rows = view.search_images(queries, 5)
            for row in rows[0].tolist():
                record = view.item_at(row)
                if record.caption != f"text {record.id}":
                    errors.append(record.id)

    thread = threading.Thread(target=search)
    thread.start()
    for step in range(20):
        data = items(f"w{step}-", 3, seed=10 + step)
        data["image"] = np.repeat(queries[:, None], 3 * Q, axis=0).reshape(3, Q, D)  # always the best hits
        catalogue.upsert(batch(data))
    done.set()
    thread.join()
    assert not errors and catalogue.snapshot().num_items == 100


def test_index_add_remove_and_compact_from_the_cli(tiny_index: Path, tiny_phase1: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from typer.testing import CliRunner

    from unifashion_cli.main import app
    from unifashion_core.data.adapters.demo import prepare_demo
    from unifashion_core.data.manifest import load_dataset

    runner = CliRunner()
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    index, data = tmp_path / "index", tiny_phase1 / "data"
    shutil.copytree(tiny_index, index)
    dataset = load_dataset(data)
    val, test = dataset.split("val"), dataset.split("test")

    def run(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--index", str(index), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    added = run("index", "add", "--data", str(data), "--split", "val", "-q")
    assert (added["added"], added["replaced"], added["images_copied"]) == (len(val), 0, False)
    assert added["num_items"] == len(val) + len(test)
    view = Catalogue.open(index).snapshot()
    assert view.image_file(val[0].id) == dataset.image_path(val[0])  # the base's own dataset: no copy
    found = run("search", "--text", "shirt", "--filter", "split=val", "-k", "4")["results"]
    assert len(found) == 4 and {r["fields"]["split"] for r in found} == {"val"}
    assert found[0]["image"] == str(dataset.image_path(dataset.by_id()[found[0]["id"]]))

    removed = run("index", "remove", val[0].id, test[0].id)
    assert removed["num_items"] == len(val) + len(test) - 2
    refused = runner.invoke(app, ["index", "remove", "nope", "--index", str(index)])
    assert refused.exit_code == 2 and "no item 'nope'" in refused.output

    other = tmp_path / "other"
    prepare_demo(other, num_items=12, image_size=32, seed=5)  # the same ids, other garments
    again = run("index", "add", "--data", str(other), "-q")
    known = {item.id for item in val[1:] + test[1:]}
    assert again["images_copied"] and again["replaced"] == len(known & {i.id for i in load_dataset(other).items})
    view = Catalogue.open(index).snapshot()
    copied = view.image_file("demo-000003")
    assert copied.parent == index.absolute() / "uploads"
    assert copied.read_bytes() == (other / "images" / "demo-000003.png").read_bytes()

    query = ("search", "--text", "blue dress", "--image", str(dataset.image_path(test[2])), "-k", "10")
    before = run(*query)["results"]
    writes = len(list((index / "live").glob("*.npz")))  # one per batch of 64 added, one per remove
    compacted = run("index", "compact", "-q")
    assert compacted["num_segments"] == writes == 3 and compacted["num_items"] == view.num_items
    assert RetrievalIndex.load(index).num_items == view.num_items and not (index / "live").exists()
    after = run(*query)["results"]
    assert [(r["id"], r["image"]) for r in after] == [(r["id"], r["image"]) for r in before]
    assert [r["score"] for r in after] == pytest.approx([r["score"] for r in before], abs=1e-6)
    assert run("index", "compact")["num_segments"] == 0


# --- kill -9 -------------------------------------------------------------------------------------

WRITER_SCRIPT = """
import sys
import numpy as np
from unifashion_core.retrieval.catalogue import Catalogue, ItemBatch, Upload
from unifashion_core.retrieval.payload import ItemRecord

Q, D = {q}, {d}
catalogue = Catalogue.open(sys.argv[1])
for step in range(10_000):
    if step % 4 == 3:  # every fourth write deletes the item written three steps before
        catalogue.delete([f"w{{step - 3:05d}}"])
    else:
        rng = np.random.default_rng(step)
        image = rng.standard_normal((1, Q, D)).astype(np.float32)
        text = rng.standard_normal((1, D)).astype(np.float32)
        record = ItemRecord(f"w{{step:05d}}", f"written at step {{step}}", "", {{"category": "dress"}})
        catalogue.upsert(ItemBatch([record], image, text, text, ["c"], [Upload(f"bytes {{step}}".encode(), ".png")]))
    print(step, flush=True)  # acknowledged: the write returned
"""


def ids_after(before: set[str], writes: int) -> set[str]:
    """The item ids the writer script's first ``writes`` writes leave, from the ids ``before``."""
    alive = set(before)
    for step in range(writes):
        if step % 4 == 3:
            alive.discard(f"w{step - 3:05d}")
        else:
            alive.add(f"w{step:05d}")
    return alive


def held(path: Path) -> set[str]:
    view = Catalogue.open(path).snapshot()
    return {view.item_at(row).id for row in range(view.base.num_items + view.count)
            if view.contains(view.item_at(row).id) and view.item(view.item_at(row).id) == view.item_at(row)}


def test_a_writer_killed_at_random_moments_loses_no_acknowledged_write(index_dir: Path) -> None:
    """SIGKILL a process that upserts and deletes in a loop, three times at seeded random moments: the
    catalogue then holds every acknowledged write (and at most the one in flight), opens cleanly, and
    takes writes and a compaction again."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng, acknowledged, before = random.Random(12), 0, held(index_dir)
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT.format(q=Q, d=D), str(index_dir)],
                                  stdout=subprocess.PIPE, text=True)
        target = rng.randrange(2, 12)
        lines = [writer.stdout.readline() for _ in range(target)]  # waits for `target` acknowledgements
        time.sleep(rng.uniform(0.0, 0.05))  # then lands anywhere in a later write
        writer.send_signal(signal.SIGKILL)
        lines += writer.stdout.readlines()
        assert writer.wait(timeout=60) == -signal.SIGKILL and all(lines)
        done = int(lines[-1]) + 1  # steps of this run (each run starts again at step 0)
        found = held(index_dir)
        assert found in (ids_after(before, done), ids_after(before, done + 1)), "an acknowledged write was lost"
        acknowledged, before = acknowledged + done, found
    Catalogue.open(index_dir).upsert(batch(items("after", 2, seed=9)))  # cleans what a killed write left
    assert not list((index_dir / "live").glob(".*")) and not list((index_dir / "uploads").glob(".*"))
    expected = held(index_dir)
    compact(index_dir)
    assert held(index_dir) == expected and acknowledged >= 6


def test_a_compaction_killed_at_any_moment_keeps_the_catalogue(index_dir: Path, tmp_path: Path) -> None:
    """SIGKILL `compact` at delays spread over its run time (one write before each): every time the
    catalogue holds the same items (compacted or not), and the next compaction finishes the job."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    catalogue = Catalogue.open(index_dir)
    for step in range(30):
        catalogue.upsert(batch(items(f"s{step}-", 5, seed=100 + step)))
    catalogue.delete([f"base{i:03d}" for i in range(0, 40, 3)])
    started = time.perf_counter()
    compact(shutil.copytree(index_dir, tmp_path / "timed"))
    seconds = time.perf_counter() - started
    script = ("import sys; from unifashion_core.retrieval.catalogue import compact; print('go', flush=True); "
              "compact(sys.argv[1])")
    statuses = []
    for step in range(10):
        catalogue.upsert(batch(items(f"k{step}-", 2, seed=200 + step)))
        expected = held(index_dir)
        process = subprocess.Popen([sys.executable, "-c", script, str(index_dir)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()
        time.sleep(seconds * step / 8)
        process.send_signal(signal.SIGKILL)
        statuses.append(process.wait(timeout=60))
        assert held(index_dir) == expected
    print("compaction exit statuses", statuses)
    assert statuses.count(-signal.SIGKILL) >= 3, statuses
    compact(index_dir)
    assert held(index_dir) == expected and Catalogue.open(index_dir).snapshot().seq == 0
    leftovers = {p.name for p in index_dir.parent.iterdir() if p.name.startswith(f".{index_dir.name}.")}
    assert leftovers == {f".{index_dir.name}.lock"}, leftovers  # no half-built or set-aside directory


def test_a_compaction_killed_between_its_two_renames_is_put_back(index_dir: Path) -> None:
    """The one moment the index directory is absent: a killed compaction left only the previous
    directory, renamed aside; opening the catalogue (or writing to it) puts it back."""
    import subprocess
    import sys

    catalogue = Catalogue.open(index_dir)
    catalogue.upsert(batch(items("new", 3, seed=1)))
    expected = held(index_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = index_dir.with_name(f".{index_dir.name}.old-{int(dead.stdout)}-0a1b2c3d")
    index_dir.rename(aside)
    assert held(index_dir) == expected and not aside.exists()
    index_dir.rename(aside)
    catalogue.delete(["new000"])  # a writer that held the old state puts it back too
    assert held(index_dir) == expected - {"new000"}
