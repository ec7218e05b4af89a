"""The late-interaction index: exact and IVF search against brute force, filters, item records,
resume, atomicity and the errors a damaged index or a bad query gets."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from unifashion_core.data.manifest import Item
from unifashion_core.errors import UserError
from unifashion_core.retrieval import ann
from unifashion_core.retrieval import index as index_module
from unifashion_core.retrieval.index import FORMAT_VERSION, IndexWriter, RetrievalIndex
from unifashion_core.retrieval.payload import ItemRecord

META = {"fingerprint": "model-aaa", "manifest_sha256": "m123", "split": "test"}
CATEGORIES = ("dress", "shirt", "skirt")
GENDERS = ("Men", "Women", "Unisex")


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random unit vectors along the last axis, rounded to float16 as the index stores them."""
    x = rng.standard_normal(shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)


def clustered(rng: np.random.Generator, num_items: int, num_queries: int, dim: int) -> np.ndarray:
    """(N, Q, D) unit vectors around 20 cluster centres: neighbours that an IVF must tell apart."""
    centres = unit(rng, 20, dim)[rng.integers(0, 20, num_items)]  # (N, D)
    x = centres[:, None] + 0.6 * rng.standard_normal((num_items, num_queries, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)


def gallery(num_items: int, num_queries: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"item{i:04d}" for i in range(num_items)]
    records = [ItemRecord(item_id, f"text {i}", f"images/{item_id}.png",
                          {"category": CATEGORIES[i % 3], "gender": GENDERS[i % 2 + (i % 7 == 0)], "split": "test"})
               for i, item_id in enumerate(ids)]
    image = clustered(rng, num_items, num_queries, dim)
    return {"ids": ids, "image": image, "text": unit(rng, num_items, dim), "caption": unit(rng, num_items, dim),
            "captions": [f"caption {i}" for i in range(num_items)], "records": records}


def build(out: Path, data: dict, kind: str = "flat", captions: bool = True, shard: int = 25) -> RetrievalIndex:
    writer = IndexWriter(out, META)
    for start in range(0, len(data["ids"]), shard):
        rows = slice(start, start + shard)
        writer.add(data["ids"][rows], data["image"][rows], data["text"][rows],
                   data["caption"][rows] if captions else None,
                   data["captions"][rows] if captions else None, data["records"][rows])
    return writer.finalize(kind)


def brute_force(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of an (M, N) score matrix with torch, best first."""
    top = torch.topk(scores, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def image_scores(queries: np.ndarray, image: np.ndarray) -> torch.Tensor:
    """(M, D) queries against (N, Q, D) items: max over queries."""
    return torch.einsum("md,nqd->mnq", torch.from_numpy(queries), torch.from_numpy(image)).amax(-1)


def text_scores(image_queries: np.ndarray, text: np.ndarray) -> torch.Tensor:
    """(M, Q, D) image queries against (N, D) texts: max over the image's queries."""
    return torch.einsum("mqd,nd->mqn", torch.from_numpy(image_queries), torch.from_numpy(text)).amax(1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact, strict=True)]))


@pytest.fixture(scope="module")
def data() -> dict:
    return gallery(num_items=90, num_queries=4, dim=16)


@pytest.fixture(scope="module")
def flat(data: dict, tmp_path_factory: pytest.TempPathFactory) -> RetrievalIndex:
    return build(tmp_path_factory.mktemp("flat") / "index", data)


@pytest.fixture(scope="module")
def large() -> dict:
    return gallery(num_items=1500, num_queries=8, dim=32, seed=5)  # 12,000 image vectors


@pytest.fixture(scope="module")
def pq(large: dict, tmp_path_factory: pytest.TempPathFactory) -> RetrievalIndex:
    """A pq index proposing 256 of 1,500 items for a top-10: the first stage really is partial."""
    return build(tmp_path_factory.mktemp("pq") / "index", large, kind="pq", shard=500)


def test_layout_meta_and_records(flat: RetrievalIndex, data: dict) -> None:
    assert flat.ids == data["ids"] and flat.captions == data["captions"]
    assert np.load(flat.path / "image_vectors.npy", mmap_mode="r").dtype == np.float16  # stored as float16
    # a flat index this small is held in RAM as float32 (its searches skip a conversion per query)
    assert type(flat.image_vectors) is np.ndarray and flat.image_vectors.dtype == np.float32
    np.testing.assert_array_equal(flat.image_vectors, data["image"])
    meta = flat.meta
    assert (meta["format_version"], meta["fingerprint"], meta["manifest_sha256"], meta["split"],
            meta["num_items"], meta["num_queries"], meta["dim"], meta["kind"], meta["ann"]) == (
        FORMAT_VERSION, "model-aaa", "m123", "test", 90, 4, 16, "flat", None)
    assert meta["has_captions"] and meta["created_with"].startswith("unifashion ")
    assert flat.item("item0007") == data["records"][7] == flat.item_at(7)
    assert flat.row_of("item0042") == 42
    assert flat.field_values("gender") == ["Men", "Unisex", "Women"]
    with pytest.raises(UserError, match="no item 'nope'"):
        flat.item("nope")


def test_records_from_the_manifest() -> None:
    item = Item("a1", "images/a1.jpg", "val", "blue shirt", category="shirt",
                attributes={"gender": "Men", "year": 2012, "sale": True, "season": None, "colour": "", "split": "x"})
    record = ItemRecord.from_manifest(item)
    assert record == ItemRecord("a1", "blue shirt", "images/a1.jpg",
                                {"gender": "Men", "year": "2012", "sale": "true", "category": "shirt", "split": "val"})
    assert ItemRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize("k", [1, 10, 90])
def test_flat_search_images_equals_brute_force(flat: RetrievalIndex, data: dict, k: int) -> None:
    queries = unit(np.random.default_rng(1), 20, 16)
    scores, items = flat.search_images(queries, k)
    ref_scores, ref_items = brute_force(image_scores(queries, data["image"]), k)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_search_texts_equals_brute_force(flat: RetrievalIndex, data: dict) -> None:
    image_queries = unit(np.random.default_rng(2), 12, 4, 16)
    scores, items = flat.search_texts(image_queries, 10)
    ref_scores, ref_items = brute_force(text_scores(image_queries, data["text"]), 10)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_search_composed_equals_brute_force(flat: RetrievalIndex, data: dict) -> None:
    fused = unit(np.random.default_rng(3), 15, 16)
    full = image_scores(fused, data["image"]) + 0.7 * torch.from_numpy(fused @ data["caption"].T)
    scores, items = flat.search_composed(fused, 10, caption_weight=0.7)
    ref_scores, ref_items = brute_force(full, 10)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    without = flat.search_images(fused, 10)
    weight_zero = flat.search_composed(fused, 10, caption_weight=0.0)
    np.testing.assert_array_equal(weight_zero[1], without[1])
    np.testing.assert_allclose(weight_zero[0], without[0], atol=1e-5)
    np.testing.assert_array_equal(flat.search_composed(fused, 10, use_captions=False)[1], without[1])


def test_a_flat_index_too_large_for_ram_is_mapped_and_ranks_the_same(flat: RetrievalIndex,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from unifashion_core.retrieval import index as index_module

    monkeypatch.setattr(index_module, "RESIDENT_MAX_BYTES", 90 * 4 * 16 * 4 - 1)  # below the image vectors alone
    mapped = RetrievalIndex.load(flat.path)
    assert isinstance(mapped.image_vectors, np.memmap) and mapped.image_vectors.dtype == np.float16
    assert isinstance(mapped.caption_vectors, np.memmap)
    rng = np.random.default_rng(11)
    queries, image_queries = unit(rng, 9, 16), unit(rng, 9, 4, 16)
    for search in (lambda ix: ix.search_images(queries, 10), lambda ix: ix.search_texts(image_queries, 10),
                   lambda ix: ix.search_composed(queries, 10),
                   lambda ix: ix.search_images(queries, 5, {"gender": "Men"}),
                   lambda ix: ix.search_zero_shot(image_queries, queries, 10, 0.4)):
        (scores, rows), (mapped_scores, mapped_rows) = search(flat), search(mapped)
        np.testing.assert_array_equal(rows, mapped_rows)
        np.testing.assert_allclose(scores, mapped_scores, atol=1e-6)


def test_composed_without_captions_is_the_image_term(data: dict, tmp_path: Path) -> None:
    index = build(tmp_path / "nocap", data, captions=False)
    assert index.captions is None and not index.meta["has_captions"]
    fused = unit(np.random.default_rng(4), 5, 16)
    np.testing.assert_array_equal(index.search_composed(fused, 7)[1], index.search_images(fused, 7)[1])


def test_exact_search_in_small_blocks_matches(flat: RetrievalIndex, data: dict,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The running top-k across blocks equals the one-block result."""
    from unifashion_core.retrieval import exact

    queries = unit(np.random.default_rng(9), 300, 16)  # two query blocks
    whole = flat.search_images(queries, 10)
    monkeypatch.setattr(exact, "BLOCK_FLOATS", 64)  # blocks of 10 items
    monkeypatch.setattr(exact, "QUERY_BLOCK", 64)
    blocked = flat.search_images(queries, 10)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)


def test_pq_parity_with_exact(pq: RetrievalIndex, large: dict) -> None:
    """ANN vs exact on clustered vectors: recall@10 >= 0.95 and every returned score exact."""
    assert pq.meta["ann"]["image"]["candidates"] == 256 and pq.meta["ann"]["image"]["ntotal"] == 1500
    rng = np.random.default_rng(6)
    queries = clustered(rng, 40, 1, 32)[:, 0]
    image = image_scores(queries, large["image"])
    composed = image + torch.from_numpy(queries @ large["caption"].T)
    image_queries = clustered(rng, 40, 8, 32)
    texts = text_scores(image_queries, large["text"])
    for (scores, items), full in ((pq.search_images(queries, 10), image),
                                  (pq.search_composed(queries, 10), composed),
                                  (pq.search_texts(image_queries, 10), texts)):
        assert recall(items, brute_force(full, 10)[1]) >= 0.95, recall(items, brute_force(full, 10)[1])
        np.testing.assert_allclose(scores, np.take_along_axis(full.numpy(), items, axis=1), atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_filters_rank_only_the_allowed_items(kind: str, pq: RetrievalIndex, large: dict, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A filtered top-10 is the top-10 of the allowed items (exact for flat, recall >= 0.95 for pq,
    whose scan proposes allowed items only)."""
    index = pq if kind == "pq" else build(tmp_path / "flat", large, shard=500)
    monkeypatch.setattr(index_module, "EXACT_MAX_VECTORS", 0)
    genders = np.array([r.fields["gender"] for r in large["records"]])
    categories = np.array([r.fields["category"] for r in large["records"]])
    allowed = (categories == "dress") & np.isin(genders, ["Men", "Unisex"])
    queries = clustered(np.random.default_rng(7), 30, 1, 32)[:, 0]
    full = image_scores(queries, large["image"])
    full[:, ~torch.from_numpy(allowed)] = -torch.inf
    ref_scores, ref_items = brute_force(full, 10)
    scores, items = index.search_images(queries, 10, filter={"category": "dress", "gender": ["Men", "Unisex"]})
    assert allowed[items].all()
    assert recall(items, ref_items) >= (1.0 if kind == "flat" else 0.95)
    np.testing.assert_allclose(scores, np.take_along_axis(full.numpy(), items, axis=1), atol=1e-5)
    deleted = np.ones(len(allowed), dtype=bool)
    deleted[ref_items[:, 0]] = False  # a live catalogue removes rows through `allowed`
    _, kept = index.search_images(queries, 10, filter={"category": "dress"}, allowed=deleted)
    assert not np.isin(kept, ref_items[:, 0]).any() and (categories[kept] == "dress").all()


def test_filter_edge_cases(flat: RetrievalIndex) -> None:
    queries = unit(np.random.default_rng(8), 2, 16)
    scores, rows = flat.search_images(queries, 10, filter={"category": "hat"})
    assert scores.shape == rows.shape == (2, 0)  # nothing matches: no results, no error
    few = np.flatnonzero(flat.items.allowed_rows({"gender": "Unisex"}))
    _, rows = flat.search_texts(unit(np.random.default_rng(8), 2, 4, 16), 50, filter={"gender": "Unisex"})
    assert rows.shape == (2, len(few)) and set(rows[0]) == set(few)  # k shrinks to the allowed items
    with pytest.raises(UserError, match="cannot filter on 'colour'.*fields: category, gender, split"):
        flat.search_images(queries, 5, filter={"colour": "red"})
    with pytest.raises(UserError, match="string or a list of strings"):
        flat.search_composed(queries, 5, filter={"category": 3})


@pytest.mark.parametrize(("call", "message"), [
    (lambda index: index.search_images(np.ones((2, 8), np.float32), 5), "D=16.*got shape \\(2, 8\\)"),
    (lambda index: index.search_texts(np.ones((2, 16), np.float32), 5), "\\(M, Q, D\\)"),
    (lambda index: index.search_images(np.full((1, 16), np.nan, np.float32), 5), "NaN"),
    (lambda index: index.search_composed(np.ones((1, 16), np.float32), 91), "catalogue size \\(90\\)"),
    (lambda index: index.search_images(np.ones((1, 16), np.float32), 0), "between 1"),
])
def test_bad_queries_are_user_errors(flat: RetrievalIndex, call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call(flat)


def test_writer_refuses_bad_batches(data: dict, tmp_path: Path) -> None:
    writer = IndexWriter(tmp_path / "index", META)
    with pytest.raises(ValueError, match="records must be given in the order of ids"):
        writer.add(data["ids"][:3], data["image"][:3], data["text"][:3], records=data["records"][1:4])
    bad = data["image"][:3].copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        writer.add(data["ids"][:3], bad, data["text"][:3])
    with pytest.raises(UserError, match="unknown index kind 'ivfpq'"):
        writer.finalize("ivfpq")


def test_resume_keeps_shards_of_the_same_build(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "index"
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:30], data["image"][:30], data["text"][:30], records=data["records"][:30])
    writer.add(data["ids"][30:50], data["image"][30:50], data["text"][30:50], records=data["records"][30:50])
    resumed = IndexWriter(out, dict(META))
    assert resumed.done_ids() == set(data["ids"][:50])
    with pytest.raises(ValueError, match="already added"):
        resumed.add(data["ids"][40:60], data["image"][40:60], data["text"][40:60])
    resumed.add(data["ids"][50:], data["image"][50:], data["text"][50:], records=data["records"][50:])
    order = data["ids"][::-1]
    index = resumed.finalize(order=order)
    assert index.ids == order and index.item_at(0) == data["records"][-1]
    np.testing.assert_array_equal(np.asarray(index.text_vectors, np.float32), data["text"][::-1])
    assert index.field_values("category") == list(CATEGORIES)
    assert not resumed.partial.exists()
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:10], data["image"][:10], data["text"][:10])
    other = IndexWriter(out, {**META, "fingerprint": "model-bbb"})
    assert other.done_ids() == set()


def test_resume_after_a_kill_while_the_partial_build_was_being_removed(data: dict, tmp_path: Path) -> None:
    """A kill during the final removal of ``.index.partial`` leaves its meta and some shards, with
    gaps; the next build re-adds the missing items in new shards and overwrites none (a shard
    named after the count of those left overwrote a live one: its rows had no record), and its
    files are byte for byte an uninterrupted build's (the records went to the payload in shard
    order, which CI's kill test caught)."""
    out = tmp_path / "index"
    writer = IndexWriter(out, META)
    for start in range(0, 90, 15):
        rows = slice(start, start + 15)
        writer.add(data["ids"][rows], data["image"][rows], data["text"][rows], records=data["records"][rows])
    for gone in ("shard-000001.npz", "shard-000003.npz"):  # what rmtree had removed when the kill came
        (writer.partial / gone).unlink()
    resumed = IndexWriter(out, dict(META))
    missing = [row for row, item_id in enumerate(data["ids"]) if item_id not in resumed.done_ids()]
    assert missing == list(range(15, 30)) + list(range(45, 60))
    for part in (missing[:15], missing[15:]):
        resumed.add([data["ids"][r] for r in part], data["image"][part], data["text"][part],
                    records=[data["records"][r] for r in part])
    assert len({path.name for path in resumed.partial.glob("shard-*.npz")}) == 6
    index = resumed.finalize(order=data["ids"])
    assert [index.item_at(row) for row in range(90)] == data["records"]
    np.testing.assert_array_equal(np.asarray(index.text_vectors, np.float32), data["text"])
    straight = IndexWriter(tmp_path / "straight", META)  # the same batches, uninterrupted
    for start in range(0, 90, 15):
        rows = slice(start, start + 15)
        straight.add(data["ids"][rows], data["image"][rows], data["text"][rows], records=data["records"][rows])
    straight.finalize(order=data["ids"])

    def files(root: Path) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(root.iterdir())}

    reference = files(tmp_path / "straight")
    differing = {name for name, content in files(out).items() if reference.get(name) != content}
    assert not differing, f"a resumed build wrote other bytes than an uninterrupted one in {sorted(differing)}"


def test_add_rows_carries_an_index_over_for_compaction(flat: RetrievalIndex, data: dict, tmp_path: Path) -> None:
    """A compaction: the live rows of a base index plus new items, finalized into a fresh index."""
    live = np.array([row for row in range(90) if row % 4])  # rows 0, 4, 8, ... were deleted
    writer = IndexWriter(tmp_path / "compacted", META)
    writer.add_rows(flat, live)
    new = gallery(num_items=3, num_queries=4, dim=16, seed=21)
    new_ids = ["new-a", "new-b", "new-c"]
    writer.add(new_ids, new["image"], new["text"], new["caption"], new["captions"],
               [ItemRecord(i, "new", "images/new.png", {"category": "hat"}) for i in new_ids])
    compacted = writer.finalize("pq")
    assert compacted.ids == [data["ids"][row] for row in live] + new_ids
    np.testing.assert_array_equal(np.asarray(compacted.image_vectors[: len(live)]), flat.image_vectors[live])
    assert compacted.captions[:2] == [data["captions"][1], data["captions"][2]]
    assert compacted.item("item0005") == data["records"][5] and compacted.item("new-b").fields == {"category": "hat"}
    _, rows = compacted.search_images(new["image"][:, 0], 1, filter={"category": "hat"})
    assert [compacted.ids[r] for r in rows[:, 0]] == new_ids


def test_finalize_is_atomic(data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index"
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:20], data["image"][:20], data["text"][:20])
    assert not out.exists()
    out.mkdir()
    (out / "old.txt").write_text("previous index")

    def broken_write(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ann.faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        writer.finalize("pq")
    assert (out / "old.txt").read_text() == "previous index"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.partial", "index"]
    monkeypatch.undo()
    index = IndexWriter(out, META).finalize("pq")
    assert index.num_items == 20 and index.item_at(3) == ItemRecord("item0003")
    assert not (out / "old.txt").exists()


def test_load_refuses_other_models_and_formats(data: dict, tmp_path: Path) -> None:
    path = tmp_path / "index"
    build(path, data, shard=90)
    assert RetrievalIndex.load(path, expected_fingerprint="model-aaa").num_items == 90
    with pytest.raises(UserError, match="different model .*model-aaa.*model-zzz.*unifashion index"):
        RetrievalIndex.load(path, expected_fingerprint="model-zzz")
    meta = json.loads((path / "meta.json").read_text())
    for version, message in ((FORMAT_VERSION + 1, "newer"), (1, "older unifashion; rebuild")):
        (path / "meta.json").write_text(json.dumps({**meta, "format_version": version}))
        with pytest.raises(UserError, match=message):
            RetrievalIndex.load(path)
    with pytest.raises(UserError, match="does not exist"):
        RetrievalIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a unifashion index"):
        RetrievalIndex.load(tmp_path / "empty")


def _drop_last_id(path: Path) -> None:
    lines = (path / "ids.jsonl").read_text().splitlines()
    (path / "ids.jsonl").write_text("\n".join(lines[:-1]) + "\n")


def _short_texts(path: Path) -> None:
    np.save(path / "text_vectors.npy", np.load(path / "text_vectors.npy")[:-1])


def _other_stage(path: Path) -> None:
    faiss.write_index(faiss.IndexFlatIP(16), str(path / "text.pq"))


def _truncated_vectors(path: Path) -> None:
    data = (path / "image_vectors.npy").read_bytes()
    (path / "image_vectors.npy").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("damage", "message"), [
    (_drop_last_id, "inconsistent: image_vectors.npy holds \\(90, 4, 16\\) where ids.jsonl implies \\(89, 4, 16\\)"),
    (_short_texts, "inconsistent: text_vectors.npy"),
    (_other_stage, "inconsistent: text.pq holds 0 where ids.jsonl implies 90"),
    (_truncated_vectors, "image_vectors.npy is damaged or cut short"),
    (lambda path: (path / "field_codes.npy").unlink(), "incomplete \\(field_codes.npy is missing\\)"),
])
def test_load_refuses_files_that_disagree(data: dict, tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "index"
    build(path, data, kind="pq", shard=90)
    damage(path)
    with pytest.raises(UserError, match=message):
        RetrievalIndex.load(path)


def test_pq_index_reads_rerank_rows_without_mapping_them(pq, tmp_path):
    """A pq index reads scattered rows with pread (same bytes as the map), and refuses a short file."""
    assert isinstance(pq.image_vectors, index_module.RowReads)
    mapped = np.load(pq.path / index_module.IMAGE_VECTORS, mmap_mode="r")
    rows = np.array([7, 3, 4, 5, 5, pq.num_items - 1, 0])  # unsorted, a run, a repeat, both ends
    assert np.array_equal(pq.image_vectors[rows], mapped[rows])
    assert np.array_equal(pq.image_vectors[np.sort(rows)], mapped[np.sort(rows)])
    assert np.array_equal(pq.image_vectors[2], mapped[2]) and np.array_equal(np.asarray(pq.text_vectors), np.load(
        pq.path / index_module.TEXT_VECTORS))
    with pytest.raises(IndexError):
        pq.image_vectors[np.array([pq.num_items])]
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((10, 4), np.float16))
    reads = index_module.RowReads(np.load(short, mmap_mode="r"), short)
    short.write_bytes(short.read_bytes()[:-16])  # the last row cut off after the header was read
    with pytest.raises(UserError, match="shorter than its header"):
        reads[np.array([9])]
