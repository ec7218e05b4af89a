"""The late-interaction index: exact and ANN search against brute force, resume, atomicity."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unifashion_core.errors import UserError
from unifashion_core.retrieval import index as index_module
from unifashion_core.retrieval.index import FORMAT_VERSION, IndexWriter, RetrievalIndex

META = {"fingerprint": "model-aaa", "manifest_sha256": "m123", "split": "test"}


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random unit vectors along the last axis, rounded to float16 as the index stores them."""
    x = rng.standard_normal(shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)


def gallery(num_items: int, num_queries: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"ids": [f"item{i:04d}" for i in range(num_items)],
            "image": unit(rng, num_items, num_queries, dim), "text": unit(rng, num_items, dim),
            "caption": unit(rng, num_items, dim),
            "captions": [f"caption {i}" for i in range(num_items)]}


def build(out: Path, data: dict, kind: str = "flat", captions: bool = True,
          shard: int = 25) -> RetrievalIndex:
    writer = IndexWriter(out, META)
    for start in range(0, len(data["ids"]), shard):
        rows = slice(start, start + shard)
        writer.add(data["ids"][rows], data["image"][rows], data["text"][rows],
                   data["caption"][rows] if captions else None,
                   data["captions"][rows] if captions else None)
    return writer.finalize(kind)


def brute_force(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of an (M, N) score matrix with torch, best first."""
    top = torch.topk(scores, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def image_scores(queries: np.ndarray, image: np.ndarray) -> torch.Tensor:
    """(M, D) queries against (N, Q, D) items: max over queries."""
    return torch.einsum("md,nqd->mnq", torch.from_numpy(queries), torch.from_numpy(image)).amax(-1)


@pytest.fixture(scope="module")
def data() -> dict:
    return gallery(num_items=90, num_queries=4, dim=16)


@pytest.fixture(scope="module")
def flat(data: dict, tmp_path_factory: pytest.TempPathFactory) -> RetrievalIndex:
    return build(tmp_path_factory.mktemp("flat") / "index", data)


def test_layout_and_meta(flat: RetrievalIndex, data: dict) -> None:
    assert flat.ids == data["ids"] and flat.captions == data["captions"]
    assert isinstance(flat.image_vectors, np.memmap) and flat.image_vectors.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(flat.image_vectors, dtype=np.float32), data["image"])
    meta = flat.meta
    assert (meta["format_version"], meta["fingerprint"], meta["manifest_sha256"], meta["split"],
            meta["num_items"], meta["num_queries"], meta["dim"], meta["kind"]) == (
        FORMAT_VERSION, "model-aaa", "m123", "test", 90, 4, 16, "flat")
    assert meta["has_captions"] and meta["created_with"].startswith("unifashion ")


@pytest.mark.parametrize("k", [1, 10, 200])
def test_flat_search_images_equals_brute_force(flat: RetrievalIndex, data: dict, k: int) -> None:
    queries = unit(np.random.default_rng(1), 20, 16)
    scores, items = flat.search_images(queries, k)
    ref_scores, ref_items = brute_force(image_scores(queries, data["image"]), min(k, 90))
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_search_texts_equals_brute_force(flat: RetrievalIndex, data: dict) -> None:
    image_queries = unit(np.random.default_rng(2), 12, 4, 16)
    scores, items = flat.search_texts(image_queries, 10)
    full = torch.einsum("mqd,nd->mqn", torch.from_numpy(image_queries),
                        torch.from_numpy(data["text"])).amax(1)  # (M, N)
    ref_scores, ref_items = brute_force(full, 10)
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
    np.testing.assert_array_equal(flat.search_composed(fused, 10, use_captions=False)[1],
                                  without[1])


def test_composed_without_captions_is_the_image_term(data: dict, tmp_path: Path) -> None:
    index = build(tmp_path / "nocap", data, captions=False)
    assert index.captions is None and not index.meta["has_captions"]
    fused = unit(np.random.default_rng(4), 5, 16)
    np.testing.assert_array_equal(index.search_composed(fused, 7)[1],
                                  index.search_images(fused, 7)[1])


def test_hnsw_recall_and_exact_rerank(tmp_path: Path) -> None:
    data = gallery(num_items=400, num_queries=8, dim=32, seed=5)  # 3,200 vectors
    index = build(tmp_path / "hnsw", data, kind="hnsw", shard=200)
    queries = unit(np.random.default_rng(6), 40, 32)
    _, exact = brute_force(image_scores(queries, data["image"]), 10)
    scores, items = index.search_images(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(items, exact, strict=True)])
    assert recall >= 0.9
    rescored = np.take_along_axis(image_scores(queries, data["image"]).numpy(), items, axis=1)
    np.testing.assert_allclose(scores, rescored, atol=1e-5)  # the re-rank is exact
    scores, items = index.search_composed(queries, 10)
    full = image_scores(queries, data["image"]) + torch.from_numpy(queries @ data["caption"].T)
    np.testing.assert_allclose(scores, np.take_along_axis(full.numpy(), items, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_ivfpq_needs_enough_vectors(data: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="too few.*flat"):
        build(tmp_path / "ivf", data, kind="ivfpq")
    assert not (tmp_path / "ivf").exists()


@pytest.mark.slow
def test_ivfpq_recall(tmp_path: Path) -> None:
    data = gallery(num_items=1250, num_queries=8, dim=16, seed=7)  # 10,000 vectors
    index = build(tmp_path / "ivf", data, kind="ivfpq", shard=500)
    queries = unit(np.random.default_rng(8), 30, 16)
    _, exact = brute_force(image_scores(queries, data["image"]), 10)
    _, items = index.search_images(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(items, exact, strict=True)])
    assert recall >= 0.9


def test_resume_keeps_shards_of_the_same_build(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "index"
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:30], data["image"][:30], data["text"][:30])
    writer.add(data["ids"][30:50], data["image"][30:50], data["text"][30:50])
    resumed = IndexWriter(out, dict(META))
    assert resumed.done_ids() == set(data["ids"][:50])
    with pytest.raises(ValueError, match="already added"):
        resumed.add(data["ids"][40:60], data["image"][40:60], data["text"][40:60])
    resumed.add(data["ids"][50:], data["image"][50:], data["text"][50:])
    order = data["ids"][::-1]
    index = resumed.finalize(order=order)
    assert index.ids == order
    np.testing.assert_array_equal(np.asarray(index.text_vectors, np.float32), data["text"][::-1])
    assert not resumed.partial.exists()
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:10], data["image"][:10], data["text"][:10])
    other = IndexWriter(out, {**META, "fingerprint": "model-bbb"})
    assert other.done_ids() == set()


def test_finalize_is_atomic(data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index"
    writer = IndexWriter(out, META)
    writer.add(data["ids"][:20], data["image"][:20], data["text"][:20])
    assert not out.exists()
    out.mkdir()
    (out / "old.txt").write_text("previous index")

    def broken_write(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(index_module.faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        writer.finalize()
    assert (out / "old.txt").read_text() == "previous index"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.partial", "index"]
    monkeypatch.undo()
    assert IndexWriter(out, META).finalize().num_items == 20
    assert not (out / "old.txt").exists()


def test_load_refuses_other_models_and_newer_formats(flat: RetrievalIndex, data: dict,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "index"
    build(path, data, shard=90)
    assert RetrievalIndex.load(path, expected_fingerprint="model-aaa").num_items == 90
    with pytest.raises(UserError, match="different model .*model-aaa.*model-zzz.*unifashion index"):
        RetrievalIndex.load(path, expected_fingerprint="model-zzz")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="newer"):
        RetrievalIndex.load(path)
    with pytest.raises(UserError, match="does not exist"):
        RetrievalIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a unifashion index"):
        RetrievalIndex.load(tmp_path / "empty")
