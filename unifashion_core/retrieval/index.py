"""The late-interaction retrieval index (docs/design.md section 5).

An index directory holds::

    index.faiss          FAISS inner-product index over all N * Q image query vectors
    image_vectors.npy    (N, Q, D) float16 query vectors (memory-mapped on load)
    text_vectors.npy     (N, D) float16 embeddings of the items' own texts (image -> text search)
    caption_vectors.npy  (N, D) float16 embeddings of generated gallery captions (optional)
    captions.jsonl       the generated captions, one {"id", "caption"} per line (optional)
    ids.jsonl            one {"id"} per line, row order of every array
    meta.json            format_version, fingerprint, manifest_sha256, split, num_items,
                         num_queries, dim, kind, ann, has_captions, created_with (+ caller fields)

The image-text score is ``max_q <z_q, t>``. ``flat`` indexes are exact; ``hnsw`` and ``ivfpq``
collect candidate items approximately, then re-rank them exactly from the float16 vectors.
Vectors are stored as given: the caller passes L2-normalised embeddings.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from unifashion_core import __version__
from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.fileio import (
    atomic_dir,
    atomic_file,
    read_json,
    read_jsonl,
    refuse_corrupt,
    write_json,
    write_jsonl,
)

FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivfpq")
INDEX_FILE = "index.faiss"
IMAGE_VECTORS = "image_vectors.npy"
TEXT_VECTORS = "text_vectors.npy"
CAPTION_VECTORS = "caption_vectors.npy"
CAPTIONS = "captions.jsonl"
IDS = "ids.jsonl"
META = "meta.json"
BUILD_META = "build.json"

CANDIDATE_FACTOR = 4  # ANN first stage fetches k * Q * 4 vectors before the exact re-rank
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64  # raised to the number of vectors asked for at search time
IVFPQ_NBITS = 8
IVFPQ_MIN_VECTORS = 39 * (1 << IVFPQ_NBITS)  # FAISS k-means wants ~39 points per centroid
IVFPQ_NPROBE = 32
_RESERVED = {"format_version", "num_items", "num_queries", "dim", "kind", "ann", "has_captions",
             "created_with"}
_BLOCK_FLOATS = 1 << 24  # about 64 MB of float32 per scoring block
_QUERY_BLOCK = 256

Array = np.ndarray
SearchResult = tuple[np.ndarray, np.ndarray]


def _json_roundtrip(data: dict[str, Any]) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(data, sort_keys=True))


def _check_batch(
    ids: list[str],
    image_vectors: Array,
    text_vectors: Array,
    caption_vectors: Array | None,
    captions: list[str] | None,
) -> tuple[int, int, bool]:
    """Validate one ``add`` call; return its layout (num_queries, dim, has_captions)."""
    if image_vectors.ndim != 3 or text_vectors.ndim != 2:
        raise ValueError("image_vectors must be (B, Q, D) and text_vectors (B, D).")
    batch, num_queries, dim = image_vectors.shape
    if len(ids) != batch or text_vectors.shape != (batch, dim):
        raise ValueError(f"{len(ids)} ids, image_vectors {image_vectors.shape} and text_vectors "
                         f"{text_vectors.shape} do not agree.")
    if (caption_vectors is None) != (captions is None):
        raise ValueError("pass caption_vectors and captions together, or neither.")
    if caption_vectors is not None and (caption_vectors.shape != (batch, dim)
                                        or len(captions or ()) != batch):
        raise ValueError(f"caption_vectors must be ({batch}, {dim}) with {batch} captions.")
    if len(set(ids)) != batch:
        raise ValueError("ids within one add() call must be unique.")
    return num_queries, dim, caption_vectors is not None


def _read_shard(path: Path) -> dict[str, Array]:
    """All arrays of one shard file."""
    with np.load(path, allow_pickle=False) as shard:
        return {name: shard[name] for name in shard.files}


class IndexWriter:
    """Builds an index directory from batches of vectors; resumable after a crash.

    Batches are written as shard files to a hidden sibling directory ``.{out.name}.partial``
    together with the build ``meta``. Re-creating a writer with the same meta resumes the
    build (``done_ids`` tells which items to skip); a different meta starts over. ``out``
    itself appears only when :meth:`finalize` succeeds.

    Args:
        out: the index directory to create (replaced on success if it exists).
        meta: fields stored in ``meta.json``; must contain ``fingerprint`` (the model's) and
            should contain ``manifest_sha256`` and ``split`` (None when absent). Any extra
            JSON-serialisable fields are kept. The whole dict identifies the build for resuming.
    """

    def __init__(self, out: str | Path, meta: dict[str, Any]) -> None:
        if "fingerprint" not in meta:
            raise ValueError("index meta needs a 'fingerprint'.")
        if reserved := sorted(_RESERVED & meta.keys()):
            raise ValueError(f"index meta fields {reserved} are set by the writer.")
        self.out = Path(out).absolute()
        defaults = {"manifest_sha256": None, "split": None}
        self.meta: dict[str, Any] = _json_roundtrip({**defaults, **meta})
        self.partial = self.out.parent / f".{self.out.name}.partial"
        self._shards: list[Path] = []
        self._ids: list[str] = []
        self._layout: tuple[int, int, bool] | None = None
        self._open_partial()

    def _open_partial(self) -> None:
        """Resume the partial build if its meta matches, else start a fresh one."""
        build = self.partial / BUILD_META
        try:
            same = build.is_file() and read_json(build) == self.meta
        except UserError:
            same = False
        if not same:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)
            write_json(build, self.meta)
        for stray in self.partial.glob(".shard-*.tmp-*"):  # a batch being written when a run was killed
            stray.unlink()
        for path in sorted(self.partial.glob("shard-*.npz")):
            shard = _read_shard(path)
            self._shards.append(path)
            self._ids.extend(shard["ids"].tolist())
            num_queries, dim = shard["image_vectors"].shape[1:]
            self._layout = (num_queries, dim, "caption_vectors" in shard)

    def done_ids(self) -> set[str]:
        """Ids of the items already added (by this writer or a resumed earlier one)."""
        return set(self._ids)

    def add(
        self,
        ids: list[str],
        image_vectors: Array,
        text_vectors: Array,
        caption_vectors: Array | None = None,
        captions: list[str] | None = None,
    ) -> None:
        """Write one batch as a shard file (atomically: a crash loses at most this batch).

        Args:
            ids: the B item ids (not already added).
            image_vectors: ``(B, Q, D)`` image query embeddings.
            text_vectors: ``(B, D)`` embeddings of the items' texts.
            caption_vectors: ``(B, D)`` embeddings of generated captions, or None.
            captions: the B generated captions, or None (given with ``caption_vectors``).

        Raises:
            ValueError: shapes that disagree with each other or with earlier batches, or ids
                that were already added.
        """
        if not ids:
            return
        layout = _check_batch(ids, image_vectors, text_vectors, caption_vectors, captions)
        if self._layout not in (None, layout):
            raise ValueError(f"batch layout (Q, D, captions) {layout} differs from {self._layout}.")
        if repeated := self.done_ids().intersection(ids):
            raise ValueError(f"{len(repeated)} ids were already added, e.g. {min(repeated)!r}.")
        arrays = {"ids": np.array(ids, dtype=str),
                  "image_vectors": np.asarray(image_vectors, dtype=np.float16),
                  "text_vectors": np.asarray(text_vectors, dtype=np.float16)}
        if caption_vectors is not None:
            arrays["caption_vectors"] = np.asarray(caption_vectors, dtype=np.float16)
            arrays["captions"] = np.array(captions, dtype=str)
        path = self.partial / f"shard-{len(self._shards):06d}.npz"
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        self._shards.append(path)
        self._ids.extend(ids)
        self._layout = layout

    def finalize(self, kind: str = "flat", order: list[str] | None = None) -> "RetrievalIndex":
        """Assemble the shards into the index directory ``out`` and return it loaded.

        Everything is written to a temporary sibling directory renamed to ``out`` at the end;
        the partial build is removed afterwards.

        Args:
            kind: ``flat`` (exact), ``hnsw`` or ``ivfpq`` (approximate first stage).
            order: the ids in the row order wanted (must be exactly the added ids); by
                default the order in which they were added.

        Raises:
            UserError: unknown kind, nothing added, or too few vectors to train ``ivfpq``.
            ValueError: ``order`` is not a permutation of the added ids.
        """
        if kind not in KINDS:
            raise UserError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}.")
        if self._layout is None:
            raise UserError(f"no items were added to the index {self.out}; nothing to build.")
        positions = self._positions(order)
        num_queries, dim, has_captions = self._layout
        num_vectors = len(positions) * num_queries
        if kind == "ivfpq" and num_vectors < IVFPQ_MIN_VECTORS:
            raise UserError(f"only {num_vectors} vectors, too few to train an ivfpq index (needs "
                            f"{IVFPQ_MIN_VECTORS}); use --kind flat (exact) or hnsw.")
        meta = {**self.meta, "format_version": FORMAT_VERSION, "num_items": len(positions),
                "num_queries": num_queries, "dim": dim, "kind": kind,
                "has_captions": has_captions, "created_with": f"unifashion {__version__}"}
        with atomic_dir(self.out) as tmp:
            image_vectors = self._write_arrays(tmp, positions, self._layout)
            index, meta["ann"] = _build_faiss(kind, image_vectors)
            faiss.write_index(index, str(tmp / INDEX_FILE))
            write_json(tmp / META, meta)
        shutil.rmtree(self.partial, ignore_errors=True)
        return RetrievalIndex.load(self.out)

    def _positions(self, order: list[str] | None) -> dict[str, int]:
        """Final row of each added id."""
        if order is None:
            return {item_id: row for row, item_id in enumerate(self._ids)}
        if len(set(order)) != len(order) or set(order) != set(self._ids):
            missing = len(set(order) - set(self._ids))
            extra = len(set(self._ids) - set(order))
            raise ValueError(f"order must list each added id once ({missing} ids not added, "
                             f"{extra} added ids not listed, or duplicates).")
        return {item_id: row for row, item_id in enumerate(order)}

    def _write_arrays(
        self, tmp: Path, positions: dict[str, int], layout: tuple[int, int, bool]
    ) -> Array:
        """Write vectors, ids and captions in final row order; return the image vectors."""
        num_items = len(positions)
        num_queries, dim, has_captions = layout

        def create(name: str, shape: tuple[int, ...]) -> Array:
            return np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.float16, shape=shape)

        image = create(IMAGE_VECTORS, (num_items, num_queries, dim))
        text = create(TEXT_VECTORS, (num_items, dim))
        caption = create(CAPTION_VECTORS, (num_items, dim)) if has_captions else None
        captions = [""] * num_items
        for path in self._shards:
            shard = _read_shard(path)
            rows = np.array([positions[i] for i in shard["ids"].tolist()])
            image[rows], text[rows] = shard["image_vectors"], shard["text_vectors"]
            if caption is not None:
                caption[rows] = shard["caption_vectors"]
                for row, text_ in zip(rows, shard["captions"].tolist(), strict=True):
                    captions[row] = text_
        ids = sorted(positions, key=positions.__getitem__)
        write_jsonl(tmp / IDS, ({"id": i} for i in ids))
        if caption is not None:
            caption.flush()
            records = ({"id": i, "caption": c} for i, c in zip(ids, captions, strict=True))
            write_jsonl(tmp / CAPTIONS, records)
        text.flush()
        image.flush()
        return image


def _build_faiss(kind: str, image_vectors: Array) -> tuple[Any, dict[str, int]]:
    """A FAISS inner-product index over all ``N * Q`` vectors, and its search parameters."""
    dim = image_vectors.shape[-1]
    flat = image_vectors.reshape(-1, dim)  # (N * Q, D)
    if kind == "flat":
        index, ann = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        ann = {"hnsw_m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    else:
        index, ann = _train_ivfpq(flat)
    for block in batch_slices(len(flat), _BLOCK_FLOATS // dim):
        index.add(np.ascontiguousarray(flat[block], dtype=np.float32))
    return index, ann


def _train_ivfpq(flat: Array) -> tuple[Any, dict[str, int]]:
    """An untrained-then-trained IVF-PQ index sized for ``len(flat)`` vectors."""
    num_vectors, dim = flat.shape
    nlist = max(1, min(int(4 * num_vectors**0.5), num_vectors // 39))
    pq_m = max(m for m in range(1, max(1, min(64, dim // 4)) + 1) if dim % m == 0)
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{IVFPQ_NBITS}",
                                faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False
    sample = np.linspace(0, num_vectors - 1, min(num_vectors, 256 * max(nlist, 256))).astype(int)
    index.train(np.ascontiguousarray(flat[sample], dtype=np.float32))
    return index, {"nlist": nlist, "pq_m": pq_m, "nprobe": min(nlist, IVFPQ_NPROBE)}


def _top_k(scores: Array, k: int) -> SearchResult:
    """Row-wise top ``k`` of ``(M, N)`` scores, best first: scores and columns ``(M, k)``."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (M, k) unordered
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def _max_sim(queries: Array, vectors: Array) -> Array:
    """``(M, D)`` queries against ``(n, Q, D)`` item vectors: ``(M, n)`` max over Q."""
    per_query = np.einsum("nqd,md->mnq", np.asarray(vectors, dtype=np.float32), queries)
    return per_query.max(axis=2)  # (M, n)


def _first_distinct(scores: Array, items: Array, k: int) -> SearchResult:
    """Keep the first ``k`` distinct items of each row of a best-first vector ranking.

    Missing results (fewer distinct items) are padded with index -1 and score -inf.
    """
    num_rows = items.shape[0]
    out_scores = np.full((num_rows, k), -np.inf, dtype=np.float32)
    out_items = np.full((num_rows, k), -1, dtype=np.int64)
    for row in range(num_rows):
        keep = items[row] >= 0
        row_items, row_scores = items[row][keep], scores[row][keep]
        first = np.sort(np.unique(row_items, return_index=True)[1])[:k]
        out_items[row, : len(first)] = row_items[first]
        out_scores[row, : len(first)] = row_scores[first]
    return out_scores, out_items


class RetrievalIndex:
    """A loaded index: item ids, memory-mapped vectors and the FAISS index.

    Every search returns ``(scores, indices)``, both ``(M, k)`` with ``k`` capped at the
    number of items, best first; ``indices`` are rows of :attr:`ids`.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        ids: list[str],
        faiss_index: Any,
        image_vectors: Array,
        text_vectors: Array,
        caption_vectors: Array | None = None,
        captions: list[str] | None = None,
    ) -> None:
        self.meta = meta
        self.ids = ids
        self.image_vectors = image_vectors  # (N, Q, D) float16
        self.text_vectors = text_vectors  # (N, D) float16
        self.caption_vectors = caption_vectors  # (N, D) float16 or None
        self.captions = captions
        self._faiss = faiss_index

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None) -> "RetrievalIndex":
        """Open an index directory, refusing one built by another model or a newer version.

        Args:
            path: the index directory.
            expected_fingerprint: the query model's fingerprint; None skips the check.

        Raises:
            UserError: missing or incomplete directory, newer format, fingerprint mismatch.
        """
        path = Path(path)
        meta = _read_meta(path)
        fingerprint = meta.get("fingerprint")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise UserError(f"index {path} was built by a different model (fingerprint "
                            f"{fingerprint}), the query model is {expected_fingerprint}; "
                            "rebuild it with `unifashion index`.")
        for name in (INDEX_FILE, IMAGE_VECTORS, TEXT_VECTORS, IDS):
            if not (path / name).is_file():
                raise UserError(f"index {path} is incomplete ({name} is missing); rebuild it "
                                "with `unifashion index`.")
        with refuse_corrupt(path, "rebuild it with `unifashion index --overwrite`", errors=(KeyError, TypeError)):
            ids = [record["id"] for record in read_jsonl(path / IDS)]
            captions = None
            caption_vectors = None
            if meta.get("has_captions"):
                captions = [record["caption"] for record in read_jsonl(path / CAPTIONS)]
                caption_vectors = np.load(path / CAPTION_VECTORS, mmap_mode="r")
            index = cls(meta, ids, faiss.read_index(str(path / INDEX_FILE)),
                        np.load(path / IMAGE_VECTORS, mmap_mode="r"),
                        np.load(path / TEXT_VECTORS, mmap_mode="r"), caption_vectors, captions)
        if not (len(ids) == len(index.image_vectors) == len(index.text_vectors)
                and index._faiss.ntotal == len(ids) * index.num_queries):
            raise UserError(f"index {path} is inconsistent (ids and vectors differ in length); "
                            "rebuild it with `unifashion index`.")
        return index

    @property
    def num_items(self) -> int:
        """N, the number of indexed items."""
        return len(self.ids)

    @property
    def num_queries(self) -> int:
        """Q, the number of query vectors per image."""
        return int(self.image_vectors.shape[1])

    @property
    def kind(self) -> str:
        """``flat``, ``hnsw`` or ``ivfpq``."""
        return str(self.meta["kind"])

    def search_images(self, queries: Array, k: int) -> SearchResult:
        """Rank images for text (or fused) queries by ``max_q <z_q, query>``.

        Args:
            queries: ``(M, D)`` query embeddings.
            k: how many items to return per query (capped at N).

        Returns:
            scores ``(M, k)`` float32 and item indices ``(M, k)`` int64.
        """
        queries, k = self._check(queries, 2, k)
        if self.kind == "flat":
            num_vectors = min(self._faiss.ntotal, k * self.num_queries)
            scores, vector_ids = self._faiss.search(queries, num_vectors)  # (M, k * Q)
            return _first_distinct(scores, vector_ids // self.num_queries, k)
        return self._search_ann(queries, k, caption_weight=None)

    def search_texts(self, image_queries: Array, k: int) -> SearchResult:
        """Rank the items' texts for image queries by ``max_q <z_q, t>`` (exact).

        Args:
            image_queries: ``(M, Q, D)`` image query embeddings.
            k: how many items to return per query (capped at N).

        Returns:
            scores ``(M, k)`` and item indices ``(M, k)``.
        """
        image_queries, k = self._check(image_queries, 3, k)

        def score(rows: slice, items: slice) -> Array:
            texts = np.asarray(self.text_vectors[items], dtype=np.float32)  # (n, D)
            return np.einsum("mqd,nd->mqn", image_queries[rows], texts).max(axis=1)  # (m, n)

        return self._exact_search(score, len(image_queries), image_queries.shape[1], k)

    def search_composed(
        self, fused: Array, k: int, caption_weight: float = 1.0, use_captions: bool = True
    ) -> SearchResult:
        """Composed retrieval: ``max_q <e, z_q> + caption_weight * <e, c>`` (paper Table 4; docs/design.md section 5).

        Without gallery captions in the index, or with ``use_captions=False``, the first term
        alone (the paper's "w/o cap"), i.e. :meth:`search_images`.

        Args:
            fused: ``(M, D)`` fused embeddings of (reference image, modification text).
            k: how many items to return per query (capped at N).
            caption_weight: ``w`` (1 in the paper's code).
            use_captions: add the caption term when the index has captions.

        Returns:
            scores ``(M, k)`` and item indices ``(M, k)``.
        """
        if not use_captions or self.caption_vectors is None:
            return self.search_images(fused, k)
        fused, k = self._check(fused, 2, k)
        if self.kind != "flat":
            return self._search_ann(fused, k, caption_weight)

        def score(rows: slice, items: slice) -> Array:
            captions = np.asarray(self.caption_vectors[items], dtype=np.float32)  # (n, D)
            images = _max_sim(fused[rows], self.image_vectors[items])  # (m, n)
            return images + caption_weight * fused[rows] @ captions.T

        return self._exact_search(score, len(fused), self.num_queries, k)

    def _check(self, queries: Array, ndim: int, k: int) -> tuple[Array, int]:
        """Queries as contiguous float32 of the right shape, and ``k`` capped at N."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        dim = self.image_vectors.shape[2]
        if queries.ndim != ndim or queries.shape[-1] != dim:
            raise ValueError(f"queries must have {ndim} dimensions ending in D={dim}, got "
                             f"{queries.shape}.")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        return queries, min(k, self.num_items)

    def _exact_search(
        self, score: Callable[[slice, slice], Array], num_rows: int, per_item: int, k: int
    ) -> SearchResult:
        """Top ``k`` of a dense score, computed block by block to bound memory."""
        items_per_block = max(1, _BLOCK_FLOATS // (_QUERY_BLOCK * per_item))
        results = []
        for rows in batch_slices(num_rows, _QUERY_BLOCK):
            scores = np.concatenate([score(rows, items) for items in
                                     batch_slices(self.num_items, items_per_block)], axis=1)  # (m, N)
            results.append(_top_k(scores, k))
        return (np.concatenate([s for s, _ in results]).astype(np.float32),
                np.concatenate([i for _, i in results]).astype(np.int64))

    def _search_ann(self, queries: Array, k: int, caption_weight: float | None) -> SearchResult:
        """Approximate candidates from FAISS, then an exact re-rank (+ caption term)."""
        num_vectors = min(self._faiss.ntotal, k * self.num_queries * CANDIDATE_FACTOR)
        params = faiss.ParameterSpace()
        if self.kind == "hnsw":
            params.set_index_parameter(self._faiss, "efSearch",
                                       max(self.meta["ann"]["ef_search"], num_vectors))
        else:
            params.set_index_parameter(self._faiss, "nprobe", self.meta["ann"]["nprobe"])
        _, vector_ids = self._faiss.search(queries, num_vectors)  # (M, K)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_items = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            found = vector_ids[row][vector_ids[row] >= 0]
            candidates = np.unique(found // self.num_queries)  # (c,) sorted rows
            if len(candidates) == 0:
                continue
            scores = _max_sim(query[None], self.image_vectors[candidates])  # (1, c)
            if caption_weight is not None and self.caption_vectors is not None:
                captions = np.asarray(self.caption_vectors[candidates], dtype=np.float32)
                scores = scores + caption_weight * captions @ query
            top_scores, top = _top_k(scores, min(k, len(candidates)))
            out_scores[row, : top.shape[1]] = top_scores[0]
            out_items[row, : top.shape[1]] = candidates[top[0]]
        return out_scores, out_items


def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of an index directory, checked to be one this version can read."""
    if not path.is_dir():
        raise UserError(f"index {path} does not exist; build one with `unifashion index`.")
    if not (path / META).is_file():
        raise UserError(f"{path} is not a unifashion index (no {META}); build one with "
                        "`unifashion index`.")
    meta = read_json(path / META)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise UserError(f"{path} is not a unifashion index ({META} has no format_version).")
    if version > FORMAT_VERSION:
        raise UserError(f"index {path} has format version {version}, newer than this unifashion "
                        f"reads ({FORMAT_VERSION}); upgrade unifashion or rebuild the index.")
    return meta
