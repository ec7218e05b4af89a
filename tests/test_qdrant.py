"""The Qdrant backend in qdrant-client's local mode: parity with the local index (same items, same
scores, same filters), the alias swap that keeps a rebuild invisible until done, and refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models
from typer.testing import CliRunner

from tests.test_index import META, clustered, gallery, unit
from unifashion_cli.main import app
from unifashion_core.errors import UserError
from unifashion_core.retrieval import qdrant as qdrant_module
from unifashion_core.retrieval.index import IndexWriter, RetrievalIndex
from unifashion_core.retrieval.payload import ItemRecord
from unifashion_core.retrieval.qdrant import QdrantIndex, QdrantTarget, point_id, write_collection
from unifashion_core.retrieval.search import open_index

runner = CliRunner()
SCORE_TOLERANCE = 1e-5  # both compute float32 dot products of the same float16 values


def fill(writer: IndexWriter, data: dict, rows: slice = slice(None)) -> IndexWriter:
    for block in range(rows.start or 0, rows.stop or len(data["ids"]), 50):
        part = slice(block, min(block + 50, rows.stop or len(data["ids"])))
        writer.add(data["ids"][part], data["image"][part], data["text"][part], data["caption"][part],
                   data["captions"][part], data["records"][part])
    return writer


@pytest.fixture(scope="module")
def data() -> dict:
    return gallery(num_items=200, num_queries=4, dim=16, seed=11)


@pytest.fixture(scope="module")
def pair(data: dict, tmp_path_factory: pytest.TempPathFactory):
    """The same items as a local flat index and as a Qdrant collection (local mode)."""
    root = tmp_path_factory.mktemp("qdrant")
    local = fill(IndexWriter(root / "local", META), data).finalize("flat")
    write_collection(fill(IndexWriter(root / "remote", META), data), QdrantTarget(path=str(root / "qdrant")))
    remote = open_index(root / "remote", expected_fingerprint="model-aaa")
    yield local, remote
    remote.close()


def as_ids(index, rows: np.ndarray) -> list[list[str]]:
    return [[index.item_at(int(r)).id for r in row if r >= 0] for row in rows]


def assert_same(local: RetrievalIndex, remote: QdrantIndex, local_result, remote_result) -> None:
    assert as_ids(local, local_result[1]) == as_ids(remote, remote_result[1])
    np.testing.assert_allclose(remote_result[0], local_result[0], atol=SCORE_TOLERANCE)


def test_collection_layout(pair, data: dict) -> None:
    local, remote = pair
    assert isinstance(remote, QdrantIndex) and remote.kind == "qdrant"
    assert (remote.num_items, remote.num_queries, remote.dim, remote.fingerprint) == (200, 4, 16, "model-aaa")
    config = remote.client.get_collection(remote.collection).config
    image = config.params.vectors["image"]
    assert image.multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert {name: v.distance for name, v in config.params.vectors.items()} == dict.fromkeys(
        ("image", "text", "caption"), models.Distance.DOT)
    assert config.metadata["fingerprint"] == "model-aaa"
    assert config.metadata["fields"] == ["category", "gender", "split"]
    assert remote.item("item0007") == local.item("item0007") == data["records"][7]
    assert remote.field_values("gender") == local.field_values("gender")
    point = remote.client.retrieve(remote.collection, [point_id("item0007")], with_payload=True)[0]
    assert point.payload["generated_caption"] == "caption 7"


def test_searches_match_the_local_index(pair) -> None:
    """Parity: the same top-10 items in the same order with the same scores, in all three searches."""
    local, remote = pair
    rng = np.random.default_rng(12)
    queries = clustered(rng, 6, 1, 16)[:, 0]
    image_queries = clustered(rng, 4, 4, 16)
    assert_same(local, remote, local.search_images(queries, 10), remote.search_images(queries, 10))
    assert_same(local, remote, local.search_texts(image_queries, 10), remote.search_texts(image_queries, 10))
    for weight in (1.0, 0.3):
        assert_same(local, remote, local.search_composed(queries, 10, caption_weight=weight),
                    remote.search_composed(queries, 10, caption_weight=weight))
    assert_same(local, remote, local.search_composed(queries, 10, use_captions=False),
                remote.search_composed(queries, 10, use_captions=False))


def test_zero_shot_composed_search_matches_the_local_index(pair) -> None:
    """The zero-shot late fusion: exact when the candidates cover the catalogue (4 k >= N), and the
    scores of what it returns exact, with a near-identical top 10, when they do not."""
    local, remote = pair
    rng = np.random.default_rng(15)
    references, texts = clustered(rng, 5, 4, 16), clustered(rng, 5, 1, 16)[:, 0]
    for weight in (0.2, 0.7):
        assert_same(local, remote, local.search_zero_shot(references, texts, 50, weight),
                    remote.search_zero_shot(references, texts, 50, weight))
    wanted = {"category": "skirt", "gender": ["Women", "Unisex"]}
    assert_same(local, remote, local.search_zero_shot(references, texts, 10, 0.4, filter=wanted),
                remote.search_zero_shot(references, texts, 10, 0.4, filter=wanted))
    exact = local.search_zero_shot(references, texts, 10, 0.4)
    found = remote.search_zero_shot(references, texts, 10, 0.4)
    every_score, every_row = local.search_zero_shot(references, texts, 200, 0.4)  # all 200 items, exactly
    for row, ids in enumerate(as_ids(remote, found[1])):
        assert len(set(ids) & set(as_ids(local, exact[1])[row])) >= 9, row
        scores = dict(zip(as_ids(local, every_row[row:row + 1])[0], every_score[row].tolist(), strict=True))
        np.testing.assert_allclose(found[0][row], [scores[i] for i in ids], atol=SCORE_TOLERANCE)


def test_filters_match_the_local_index(pair) -> None:
    local, remote = pair
    queries = clustered(np.random.default_rng(13), 5, 1, 16)[:, 0]
    wanted = {"category": "skirt", "gender": ["Women", "Unisex"]}
    for search in ("search_images", "search_composed"):
        local_result = getattr(local, search)(queries, 10, filter=wanted)
        remote_result = getattr(remote, search)(queries, 10, filter=wanted)
        assert_same(local, remote, local_result, remote_result)
        assert all(local.item_at(r).fields["category"] == "skirt" for r in local_result[1].ravel())
    images = clustered(np.random.default_rng(14), 3, 4, 16)
    assert_same(local, remote, local.search_texts(images, 5, filter={"gender": "Men"}),
                remote.search_texts(images, 5, filter={"gender": "Men"}))


def test_bad_queries_are_user_errors(pair) -> None:
    _, remote = pair
    with pytest.raises(UserError, match="cannot filter on 'brand'"):
        remote.search_images(unit(np.random.default_rng(0), 1, 16), 5, filter={"brand": "acme"})
    with pytest.raises(UserError, match="D=16"):
        remote.search_images(np.ones((1, 8), np.float32), 5)
    with pytest.raises(UserError, match="NaN"):
        remote.search_texts(np.full((1, 4, 16), np.nan, np.float32), 5)
    with pytest.raises(UserError, match="catalogue size \\(200\\)"):
        remote.search_images(np.ones((1, 16), np.float32), 201)
    with pytest.raises(UserError, match="no item 'nope'"):
        remote.item("nope")


def test_upsert_and_delete_by_id(data: dict, tmp_path: Path) -> None:
    """The live catalogue's writes: an upsert adds or replaces by id (new fields become filterable),
    a delete removes; searches see both at once."""
    target = QdrantTarget(path=str(tmp_path / "q"))
    write_collection(fill(IndexWriter(tmp_path / "a", META), data, slice(0, 50)), target)
    index = open_index(tmp_path / "a")
    new = gallery(num_items=2, num_queries=4, dim=16, seed=22)
    records = [ItemRecord("item0003", "replaced", "images/r.png", {"category": "hat"}),
               ItemRecord("brand-new", "new", "images/n.png", {"category": "hat", "brand": "acme"})]
    index.upsert(new["image"], new["text"], records, new["caption"], ["c1", "c2"])
    assert index.num_items == 51 and index.item("item0003").caption == "replaced"
    _, keys = index.search_images(new["image"][:, 0], 1, filter={"brand": "acme"})
    assert [index.item_at(k).id for k in keys[:, 0]] == ["brand-new", "brand-new"]
    index.delete(["brand-new", "never-there"])
    assert index.num_items == 50
    with pytest.raises(UserError, match="no item 'brand-new'"):
        index.item("brand-new")
    with pytest.raises(ValueError, match="caption vectors given"):
        index.upsert(new["image"], new["text"], records)
    index.close()


def test_rebuild_swaps_the_alias_and_a_failed_upload_changes_nothing(data: dict, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = QdrantTarget(path=str(tmp_path / "qdrant"), collection="shop")
    write_collection(fill(IndexWriter(tmp_path / "a", META), data, slice(0, 100)), target)
    write_collection(fill(IndexWriter(tmp_path / "b", META), data, slice(100, 200)), target)
    client = target.connect()
    (alias,) = client.get_aliases().aliases
    assert [c.name for c in client.get_collections().collections] == [alias.collection_name]  # the old one dropped
    client.close()
    calls = []

    def failing_upsert(self, collection, points, wait=True):
        calls.append(len(points))
        if len(calls) == 2:
            raise ConnectionError("cluster went away")
        return original(self, collection, points, wait=wait)

    original = qdrant_module.QdrantClient.upsert
    monkeypatch.setattr(qdrant_module.QdrantClient, "upsert", failing_upsert)
    with pytest.raises(ConnectionError):
        write_collection(fill(IndexWriter(tmp_path / "c", {**META, "fingerprint": "model-bbb"}), data), target)
    monkeypatch.undo()
    assert not (tmp_path / "c" / "meta.json").exists()
    index = open_index(tmp_path / "b", expected_fingerprint="model-aaa")  # still the second build
    assert index.num_items == 100 and index.item("item0150").caption == "text 150"
    assert [c.name for c in index.client.get_collections().collections] == [alias.collection_name]
    index.close()


def test_refuses_another_models_collection(data: dict, tmp_path: Path) -> None:
    target = QdrantTarget(path=str(tmp_path / "qdrant"))
    write_collection(fill(IndexWriter(tmp_path / "a", META), data, slice(0, 50)), target)
    with pytest.raises(UserError, match="different model"):
        open_index(tmp_path / "a", expected_fingerprint="model-zzz")
    client = target.connect()  # another model rebuilt the collection the directory names
    physical = client.get_aliases().aliases[0].collection_name
    client.update_collection(physical, metadata={"fingerprint": "model-bbb"})
    client.create_collection("taken", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    client.close()
    with pytest.raises(UserError, match="filled by a different model \\(fingerprint model-bbb\\)"):
        open_index(tmp_path / "a")
    with pytest.raises(UserError, match="'taken' exists and is not a unifashion alias"):
        write_collection(fill(IndexWriter(tmp_path / "b", META), data, slice(0, 10)),
                         QdrantTarget(path=str(tmp_path / "qdrant"), collection="taken"))
    with pytest.raises(UserError, match="--qdrant-url.*--qdrant-path"):
        QdrantTarget()


def test_demo_parity_through_the_cli(tiny_phase1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (tiny) model on the demo: `unifashion index --backend qdrant` and the local index
    give `unifashion search` the same results, scores and filters."""
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    common = ["--checkpoint", str(tiny_phase1 / "phase1"), "--data", str(tiny_phase1 / "data"), "-q"]
    for out, extra in ((tmp_path / "local", []),
                       (tmp_path / "remote", ["--backend", "qdrant", "--qdrant-path", str(tmp_path / "qdrant")])):
        result = runner.invoke(app, ["index", "--out", str(out), "--captions", *common, *extra])
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "remote" / "meta.json").read_text())["backend"] == "qdrant"
    image = next(iter((tiny_phase1 / "data" / "images").rglob("*.png")))
    queries = [["--text", "red striped shirt"], ["--image", str(image)],
               ["--image", str(image), "--text", "in blue", "--composed", "fused"],
               ["--image", str(image), "--text", "in blue"],  # a phase-1 checkpoint: zero-shot on both backends
               ["--text", "a dress", "--filter", "split=test", "--filter", "category=dress"]]
    for query in queries:
        found = []
        for out in ("local", "remote"):
            result = runner.invoke(app, ["search", *query, "--index", str(tmp_path / out), "-k", "5", "--json"])
            assert result.exit_code == 0, result.output
            found.append(json.loads(result.stdout)["results"])
        assert [r["id"] for r in found[0]] == [r["id"] for r in found[1]] and found[0]
        np.testing.assert_allclose([r["score"] for r in found[1]], [r["score"] for r in found[0]], atol=1e-4)
        assert [r["fields"] for r in found[0]] == [r["fields"] for r in found[1]]
    result = runner.invoke(app, ["index", "--out", str(tmp_path / "x"), "--backend", "qdrant", *common])
    assert result.exit_code == 2 and "--qdrant-url" in result.output
