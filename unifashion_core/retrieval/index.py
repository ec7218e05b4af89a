"""The late-interaction retrieval index (docs/design.md section 5).

An index directory holds, every array in the same row order::

    image_vectors.npy    (N, Q, D) float16 image query vectors (memory-mapped on load)
    text_vectors.npy     (N, D) float16 embeddings of the items' own texts (image -> text search)
    caption_vectors.npy  (N, D) float16 embeddings of generated gallery captions (optional)
    captions.jsonl       the generated captions, one {"id", "caption"} per line (optional)
    ids.jsonl            one {"id"} per line
    items.jsonl, item_offsets.npy, fields.json, field_codes.npy
                         each item's record and filterable fields (see payload.py)
    image.pq, text.pq, caption.pq
                         FAISS 4-bit PQ codes scanned as first stages, one vector per item
                         (kind ``pq`` only, see ann.py)
    meta.json            format_version, fingerprint, manifest_sha256, split, num_items,
                         num_queries, dim, kind, ann, has_captions, created_with (+ caller fields)

Scores: text -> image ``max_q <z_q, t>``; image -> text ``max_q <z_q, t>`` over the image's
Q vectors; composed ``max_q <e, z_q> + w <e, c>``. ``flat`` scores every allowed item exactly;
``pq`` takes candidates from the first stages and re-ranks them exactly from the float16
vectors, so its scores are the exact ones and only the candidate set is approximate.
Vectors are stored as given: the caller passes L2-normalised embeddings. The vectors stay
row-addressable on disk, so a later layer can add and remove items and rebuild the first
stages from them without re-embedding.
"""

import functools
import json
import os
import shutil
import weakref
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

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
from unifashion_core.retrieval import ann
from unifashion_core.retrieval.exact import (
    check_queries,
    exact_search,
    max_over_queries,
    max_sim,
    rerank,
    zero_shot_scorer,
)
from unifashion_core.retrieval.payload import (
    FIELD_CODES,
    ITEM_OFFSETS,
    Filter,
    ItemRecord,
    ItemStore,
    PayloadWriter,
)

FORMAT_VERSION = 2
KINDS = ("flat", "pq")
IMAGE_VECTORS = "image_vectors.npy"
TEXT_VECTORS = "text_vectors.npy"
CAPTION_VECTORS = "caption_vectors.npy"
VECTOR_FILES = {"image": IMAGE_VECTORS, "text": TEXT_VECTORS, "caption": CAPTION_VECTORS}
CAPTIONS = "captions.jsonl"
IDS = "ids.jsonl"
META = "meta.json"
BUILD_META = "build.json"
STAGES = {"image": "image.pq", "text": "text.pq", "caption": "caption.pq"}

CANDIDATE_FACTOR = 4  # Qdrant's composed search fetches 4 k candidates from each vector
COMPOSED_SHARE = 0.5  # of the candidates each of the image and caption stages proposes for a composed query
EXACT_MAX_VECTORS = 1 << 14  # a filter allowing fewer vectors than this is scored exactly
RESIDENT_MAX_BYTES = 64 << 20  # a flat index whose vectors fit in this as float32 is held in RAM as float32
COPY_BLOCK = 10_000  # rows per shard when add_rows carries an index over
_RESERVED = {"format_version", "num_items", "num_queries", "dim", "kind", "ann", "has_captions",
             "created_with"}

Array = np.ndarray
SearchResult = tuple[np.ndarray, np.ndarray]


def _json_roundtrip(data: dict[str, Any]) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(data, sort_keys=True))


def check_batch(
    ids: list[str],
    image_vectors: Array,
    text_vectors: Array,
    caption_vectors: Array | None,
    captions: list[str] | None,
    records: list[ItemRecord] | None,
) -> tuple[int, int, bool]:
    """Validate one batch (``IndexWriter.add``, ``QdrantIndex.upsert``); return its layout
    ``(num_queries, dim, has_captions)``."""
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
    if records is not None and [r.id for r in records] != list(ids):
        raise ValueError("records must be given in the order of ids, one per id.")
    if len(set(ids)) != batch:
        raise ValueError("ids within one add() call must be unique.")
    vectors = (image_vectors, text_vectors) + (() if caption_vectors is None else (caption_vectors,))
    if not all(np.isfinite(v).all() for v in vectors):
        raise ValueError("vectors contain NaN or infinite values.")
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
        self._shard_sizes: list[int] = []  # items per shard: its ids are self._ids' next slice
        self._next_shard = 0  # the number of the next shard file
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
            with np.load(path, allow_pickle=False) as shard:
                self._ids.extend(shard["ids"].tolist())
                num_queries, dim = shard["image_vectors"].shape[1:]
                self._layout = (num_queries, dim, "caption_vectors" in shard.files)
                self._shard_sizes.append(len(shard["ids"]))
            self._shards.append(path)
        # after the last shard's number, not the count: a build killed while its partial directory
        # was being removed leaves gaps, and a name reused from the count would overwrite a shard
        self._next_shard = 1 + max((int(path.stem.removeprefix("shard-")) for path in self._shards), default=-1)

    def done_ids(self) -> set[str]:
        """Ids of the items already added (by this writer or a resumed earlier one)."""
        return set(self._ids)

    @property
    def layout(self) -> tuple[int, int, bool] | None:
        """``(Q, D, has_captions)`` of the added batches; None before the first."""
        return self._layout

    def shards(self) -> Iterator[dict[str, Array]]:
        """The added batches, one dict of arrays per shard (``ids``, ``records``, vectors...)."""
        for path in self._shards:
            yield _read_shard(path)

    def discard(self) -> None:
        """Remove the partial build (after its batches went elsewhere, e.g. to Qdrant)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def add(
        self,
        ids: list[str],
        image_vectors: Array,
        text_vectors: Array,
        caption_vectors: Array | None = None,
        captions: list[str] | None = None,
        records: list[ItemRecord] | None = None,
    ) -> None:
        """Write one batch as a shard file (atomically: a crash loses at most this batch).

        Args:
            ids: the B item ids (not already added).
            image_vectors: ``(B, Q, D)`` image query embeddings.
            text_vectors: ``(B, D)`` embeddings of the items' texts.
            caption_vectors: ``(B, D)`` embeddings of generated captions, or None.
            captions: the B generated captions, or None (given with ``caption_vectors``).
            records: the B items' records (text, image path, filterable fields) in the order
                of ``ids``; None stores bare ids.

        Raises:
            ValueError: shapes that disagree with each other or with earlier batches, ids that
                were already added, records that do not match the ids, or NaN vectors.
        """
        if not ids:
            return
        layout = check_batch(ids, image_vectors, text_vectors, caption_vectors, captions, records)
        if self._layout not in (None, layout):
            raise ValueError(f"batch layout (Q, D, captions) {layout} differs from {self._layout}.")
        if repeated := self.done_ids().intersection(ids):
            raise ValueError(f"{len(repeated)} ids were already added, e.g. {min(repeated)!r}.")
        records = records or [ItemRecord(item_id) for item_id in ids]
        arrays = {"ids": np.array(ids, dtype=str),
                  "records": np.array([r.to_json() for r in records], dtype=str),
                  "image_vectors": np.asarray(image_vectors, dtype=np.float16),
                  "text_vectors": np.asarray(text_vectors, dtype=np.float16)}
        if caption_vectors is not None:
            arrays["caption_vectors"] = np.asarray(caption_vectors, dtype=np.float16)
            arrays["captions"] = np.array(captions, dtype=str)
        path = self.partial / f"shard-{self._next_shard:06d}.npz"
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        self._shards.append(path)
        self._shard_sizes.append(len(ids))
        self._next_shard += 1
        self._ids.extend(ids)
        self._layout = layout

    def add_rows(self, index: "RetrievalIndex", rows: Array) -> None:
        """Carry items of an existing index over as they are (vectors, generated captions, records).

        A compaction writes a fresh index this way: the base index's live rows, then the newly
        added items through :meth:`add`, then :meth:`finalize` (which rebuilds the first stages).

        Args:
            index: a loaded local index with this writer's layout.
            rows: the rows to copy, in the order wanted.
        """
        for block in batch_slices(len(rows), COPY_BLOCK):
            chosen = np.asarray(rows[block])
            captions = None if index.captions is None else [index.captions[row] for row in chosen]
            self.add([index.ids[row] for row in chosen], index.image_vectors[chosen], index.text_vectors[chosen],
                     None if index.caption_vectors is None else index.caption_vectors[chosen], captions,
                     [index.item_at(row) for row in chosen])

    def finalize(self, kind: str = "flat", order: list[str] | None = None) -> "RetrievalIndex":
        """Assemble the shards into the index directory ``out`` and return it loaded.

        Everything is written to a temporary sibling directory renamed to ``out`` at the end;
        the partial build is removed afterwards.

        Args:
            kind: ``flat`` (exact) or ``pq`` (PQ-scan candidates + exact re-rank).
            order: the ids in the row order wanted (must be exactly the added ids); by
                default the order in which they were added.

        Raises:
            UserError: unknown kind or nothing added.
            ValueError: ``order`` is not a permutation of the added ids.
        """
        check_kind(kind)
        if self._layout is None:
            raise UserError(f"no items were added to the index {self.out}; nothing to build.")
        positions = self._positions(order)
        num_queries, dim, has_captions = self._layout
        if kind == "pq":
            ann.check_size(len(positions), dim)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "num_items": len(positions),
                "num_queries": num_queries, "dim": dim, "kind": kind, "ann": None,
                "has_captions": has_captions, "created_with": f"unifashion {__version__}"}
        with atomic_dir(self.out) as tmp:
            self._write_arrays(tmp, positions, self._layout)
            if kind == "pq":
                meta["ann"] = build_stages(tmp, has_captions)
            write_json(tmp / META, meta)
        self.discard()
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

    def _write_arrays(self, tmp: Path, positions: dict[str, int], layout: tuple[int, int, bool]) -> None:
        """Write vectors, ids, captions and item records in final row order.

        The records go to the payload shard by shard in the order of each shard's first row, each
        shard's rows in order: a build resumed with new shards for missing items (a kill while the
        partial directory was removed leaves gaps) writes the same bytes as an uninterrupted one.
        """
        num_items = len(positions)
        num_queries, dim, has_captions = layout

        def create(name: str, shape: tuple[int, ...]) -> Array:
            return np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.float16, shape=shape)

        image = create(IMAGE_VECTORS, (num_items, num_queries, dim))
        text = create(TEXT_VECTORS, (num_items, dim))
        caption = create(CAPTION_VECTORS, (num_items, dim)) if has_captions else None
        captions = [""] * num_items
        payload = PayloadWriter(tmp, num_items)
        starts = np.cumsum([0, *self._shard_sizes])
        first_rows = [min(positions[i] for i in self._ids[start:stop]) for start, stop in pairwise(starts)]
        for _, path in sorted(zip(first_rows, self._shards, strict=True)):
            shard = _read_shard(path)
            rows = np.array([positions[i] for i in shard["ids"].tolist()])
            image[rows], text[rows] = shard["image_vectors"], shard["text_vectors"]
            for row, line in sorted(zip(rows.tolist(), shard["records"].tolist(), strict=True)):
                payload.add(row, ItemRecord.from_json(line))
            if caption is not None:
                caption[rows] = shard["caption_vectors"]
                for row, generated in zip(rows.tolist(), shard["captions"].tolist(), strict=True):
                    captions[row] = generated
        payload.close()
        ids = sorted(positions, key=positions.__getitem__)
        write_jsonl(tmp / IDS, ({"id": i} for i in ids))
        if caption is not None:
            caption.flush()
            write_jsonl(tmp / CAPTIONS, ({"id": i, "caption": c} for i, c in zip(ids, captions, strict=True)))
        text.flush()
        image.flush()


class CatalogueIndex(Protocol):
    """What every backend offers (:class:`RetrievalIndex`, ``qdrant.QdrantIndex``): the three
    searches with filters, item records, and the layout. Search results are ``(scores, rows)``
    where a row is whatever :meth:`item_at` takes (a row number locally, a point id in Qdrant)."""

    path: Path
    meta: dict[str, Any]

    @property
    def num_items(self) -> int: ...

    @property
    def num_queries(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    def item(self, item_id: str) -> ItemRecord: ...

    def item_at(self, row: int) -> ItemRecord: ...

    def field_values(self, name: str) -> list[str]: ...

    def search_images(self, queries: Array, k: int, filter: Filter | None = None,
                      allowed: Array | None = None) -> SearchResult: ...

    def search_texts(self, image_queries: Array, k: int, filter: Filter | None = None,
                     allowed: Array | None = None) -> SearchResult: ...

    def search_composed(self, fused: Array, k: int, caption_weight: float = 1.0, use_captions: bool = True,
                        filter: Filter | None = None, allowed: Array | None = None) -> SearchResult: ...


def check_kind(kind: str) -> None:
    """Refuse an unknown index kind."""
    if kind not in KINDS:
        raise UserError(f"unknown index kind {kind!r}; use flat (exact) or pq (approximate + exact re-rank).")


def build_stages(path: Path, has_captions: bool) -> dict[str, Any]:
    """Build the PQ-scan first stages from the vector files in the index directory ``path``: pooled
    image vectors, texts and (when present) captions, one vector per item.

    Returns:
        ``meta["ann"]``: each stage's parameters.
    """
    image = np.load(path / IMAGE_VECTORS, mmap_mode="r")  # (N, Q, D)
    num_items, _, dim = image.shape
    sources: dict[str, ann.Vectors] = {"image": lambda rows: ann.pooled(image[rows]),
                                       "text": _float32_rows(path / TEXT_VECTORS)}
    if has_captions:
        sources["caption"] = _float32_rows(path / CAPTION_VECTORS)
    return {name: ann.build_stage(vectors, num_items, dim, path / STAGES[name]) for name, vectors in sources.items()}


def _float32_rows(path: Path) -> "ann.Vectors":
    """``rows -> float32 vectors`` of a memory-mapped ``(N, D)`` array."""
    array = np.load(path, mmap_mode="r")
    return lambda rows: np.asarray(array[rows], dtype=np.float32)


class RetrievalIndex:
    """A loaded index: item ids and records, memory-mapped vectors and the first stages.

    Every search returns ``(scores, rows)``, both ``(M, k)`` best first, where ``rows`` index
    :attr:`ids`. ``k`` may not exceed the catalogue; with a filter, fewer items may be
    allowed than ``k`` and then every allowed item is returned (``k`` shrinks). A ``pq``
    search that finds fewer candidates than ``k`` pads with row -1 and score -inf.

    Filters restrict a search to items whose fields match (``{"category": "dress",
    "gender": ["Men", "Unisex"]}``); ``allowed`` is a boolean ``(N,)`` row mask combined with
    the filter (a live catalogue passes its deletions this way). Both apply inside the ranking:
    the result is the top ``k`` of the allowed items.
    """

    def __init__(self, path: Path, meta: dict[str, Any], ids: list[str], vectors: dict[str, Array],
                 captions: list[str] | None, items: ItemStore, stages: dict[str, ann.Stage]) -> None:
        self.path = path
        self.meta = meta
        self.ids = ids
        self.image_vectors = vectors["image"]  # (N, Q, D) float16 (float32 when a small flat index)
        self.text_vectors = vectors["text"]  # (N, D) likewise
        self.caption_vectors = vectors.get("caption")  # (N, D) likewise, or None
        self.captions = captions
        self.items = items
        self.stages = stages
        self._rows: dict[str, int] | None = None

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None) -> "RetrievalIndex":
        """Open an index directory, refusing one built by another model or another format.

        Args:
            path: the index directory.
            expected_fingerprint: the query model's fingerprint; None skips the check.

        Raises:
            UserError: missing, incomplete or inconsistent directory, other format version,
                fingerprint mismatch.
        """
        path = Path(path)
        meta = read_meta(path)
        check_fingerprint(path, meta, expected_fingerprint)
        with refuse_corrupt(path, "rebuild it with `unifashion index --overwrite`", errors=(KeyError, TypeError)):
            vectors = {"image": _open_array(path, IMAGE_VECTORS), "text": _open_array(path, TEXT_VECTORS)}
            captions = None
            if meta["has_captions"]:
                vectors["caption"] = _open_array(path, CAPTION_VECTORS)
                captions = [record["caption"] for record in read_jsonl(path / CAPTIONS)]
            ids = [record["id"] for record in read_jsonl(_need(path, IDS))]
            stages = {name: ann.Stage(_need(path, STAGES[name]), meta["ann"][name])
                      for name in STAGES if meta["ann"] and name in meta["ann"]}
            if stages:  # the re-rank reads scattered rows: read them, do not map them
                vectors = {name: RowReads(array, path / VECTOR_FILES[name]) for name, array in vectors.items()}
            elif sum(array.size for array in vectors.values()) * 4 <= RESIDENT_MAX_BYTES:
                # a small flat index (a shop's catalogue served by `unifashion serve`): every search scans
                # every vector, so convert them once rather than per query
                vectors = {name: np.asarray(array, dtype=np.float32) for name, array in vectors.items()}
            index = cls(path, meta, ids, vectors, captions, ItemStore(path), stages)
        index._check_consistent()
        return index

    def _check_consistent(self) -> None:
        """Every file describes the same N items."""
        num_items, num_queries, dim = len(self.ids), self.meta["num_queries"], self.meta["dim"]
        expected = {IMAGE_VECTORS: (self.image_vectors.shape, (num_items, num_queries, dim)),
                    TEXT_VECTORS: (self.text_vectors.shape, (num_items, dim)),
                    META: (self.meta["num_items"], num_items),
                    ITEM_OFFSETS: (self.items.offsets.shape, (num_items, 2)),
                    FIELD_CODES: (self.items.codes.shape, (len(self.items.names), num_items))}
        if self.caption_vectors is not None:
            expected[CAPTION_VECTORS] = (self.caption_vectors.shape, (num_items, dim))
            expected[CAPTIONS] = (len(self.captions or ()), num_items)
        for name, stage in self.stages.items():
            expected[STAGES[name]] = (stage.ntotal, num_items)
        for name, (found, wanted) in expected.items():
            if found != wanted:
                raise UserError(f"index {self.path} is inconsistent: {name} holds {found} where {IDS} "
                                f"implies {wanted}; rebuild it with `unifashion index`.")

    @property
    def num_items(self) -> int:
        """N, the number of indexed items."""
        return len(self.ids)

    @property
    def num_queries(self) -> int:
        """Q, the number of query vectors per image."""
        return int(self.image_vectors.shape[1])

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return int(self.image_vectors.shape[2])

    @property
    def kind(self) -> str:
        """``flat`` or ``pq``."""
        return str(self.meta["kind"])

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the model that embedded the items."""
        return str(self.meta["fingerprint"])

    @functools.cached_property
    def data_root(self) -> Path:
        """The directory the records' image paths are relative to (``meta["data"]``)."""
        return Path(self.meta.get("data") or ".")

    def as_exact(self) -> "RetrievalIndex":
        """This index scored exactly (as ``flat``), sharing its vector files: the parity reference."""
        vectors = {"image": self.image_vectors, "text": self.text_vectors}
        if self.caption_vectors is not None:
            vectors["caption"] = self.caption_vectors
        return RetrievalIndex(self.path, {**self.meta, "kind": "flat"}, self.ids, vectors, self.captions,
                              self.items, {})

    def row_of(self, item_id: str) -> int:
        """The row of an item id.

        Raises:
            UserError: no such item.
        """
        if self._rows is None:
            self._rows = {item_id: row for row, item_id in enumerate(self.ids)}
        if item_id not in self._rows:
            raise UserError(f"no item {item_id!r} in the index {self.path}.")
        return self._rows[item_id]

    def item(self, item_id: str) -> ItemRecord:
        """The record (text, image path relative to ``meta["data"]``, fields) of an item id."""
        return self.items.record(self.row_of(item_id))

    def item_at(self, row: int) -> ItemRecord:
        """The record of a row, e.g. one a search returned."""
        return self.items.record(row)

    def field_values(self, name: str) -> list[str]:
        """The distinct values of a filterable field, sorted."""
        return self.items.values(name)

    def search_images(self, queries: Array, k: int, filter: Filter | None = None,
                      allowed: Array | None = None) -> SearchResult:
        """Rank images for text (or fused) queries by ``max_q <z_q, query>``.

        Args:
            queries: ``(M, D)`` query embeddings.
            k: how many items to return per query (at most N).
            filter: ``{field: value or [values]}`` the items must match, or None.
            allowed: boolean ``(N,)`` rows that may be returned, or None.

        Returns:
            scores ``(M, k)`` float32 and item rows ``(M, k)`` int64.

        Raises:
            UserError: wrong shape, NaN or infinite queries, ``k`` outside 1..N, a filter on an
                unknown field.
        """
        queries = self._check_queries(queries, 2)
        mask, k = self._allowed(filter, allowed, k)
        return self._rank_images(queries, k, mask, caption_weight=None)

    def search_texts(self, image_queries: Array, k: int, filter: Filter | None = None,
                     allowed: Array | None = None) -> SearchResult:
        """Rank the items' texts for image queries by ``max_q <z_q, t>``.

        Args:
            image_queries: ``(M, Q, D)`` image query embeddings.
            k, filter, allowed: as in :meth:`search_images`.

        Returns:
            scores ``(M, k)`` and item rows ``(M, k)``.
        """
        image_queries = self._check_queries(image_queries, 3)
        mask, k = self._allowed(filter, allowed, k)
        if k == 0:
            return _empty(len(image_queries))

        def score(rows: slice, items: Any) -> Array:
            return max_over_queries(image_queries[rows], self.text_vectors[items])  # (m, n)

        if self._exact(mask, 1):
            return exact_search(score, len(image_queries), _rows(mask), self.num_items, k, self.dim)
        flat = image_queries.reshape(-1, self.dim)  # (M * Q, D)
        found = self.stages["text"].candidates(flat, k, mask)  # (M * Q, C)
        return rerank(lambda query, rows: score(slice(query, query + 1), rows)[0],
                      found.reshape(len(image_queries), -1), k)

    def search_composed(
        self, fused: Array, k: int, caption_weight: float = 1.0, use_captions: bool = True,
        filter: Filter | None = None, allowed: Array | None = None,
    ) -> SearchResult:
        """Composed retrieval: ``max_q <e, z_q> + caption_weight * <e, c>`` (paper Table 4; docs/design.md section 5).

        Without gallery captions in the index, or with ``use_captions=False``, the first term
        alone (the paper's "w/o cap"), i.e. :meth:`search_images`.

        Args:
            fused: ``(M, D)`` fused embeddings of (reference image, modification text).
            k: how many items to return per query (at most N).
            caption_weight: ``w`` (1 in the paper's code).
            use_captions: add the caption term when the index has captions.
            filter, allowed: as in :meth:`search_images`.

        Returns:
            scores ``(M, k)`` and item rows ``(M, k)``.
        """
        fused = self._check_queries(fused, 2)
        mask, k = self._allowed(filter, allowed, k)
        with_captions = use_captions and self.caption_vectors is not None
        return self._rank_images(fused, k, mask, caption_weight if with_captions else None)

    def search_zero_shot(
        self, references: Array, texts: Array, k: int, image_weight: float, filter: Filter | None = None,
        allowed: Array | None = None,
    ) -> SearchResult:
        """Composed retrieval by the zero-shot late fusion (``metrics.cir.zero_shot_scores``): an exact
        scan of the image vectors, for checkpoints without phase-2 training.

        Args:
            references: ``(M, Q, D)`` reference image embeddings.
            texts: ``(M, D)`` embeddings of the modification texts.
            k, filter, allowed: as in :meth:`search_images`.
            image_weight: weight of the image->image term, in [0, 1].
        """
        references, texts = self._check_queries(references, 3), self._check_queries(texts, 2)
        mask, k = self._allowed(filter, allowed, k)
        if k == 0:
            return _empty(len(texts))
        score = zero_shot_scorer(references, texts, image_weight)
        return exact_search(lambda rows, items: score(rows, self.image_vectors[items]), len(texts), _rows(mask),
                            self.num_items, k, self.num_queries * self.dim)

    def _rank_images(self, queries: Array, k: int, mask: Array | None, caption_weight: float | None) -> SearchResult:
        """Top ``k`` items by the image term (+ the caption term when ``caption_weight`` is set)."""
        if k == 0:
            return _empty(len(queries))

        def score(rows: slice, items: Any) -> Array:
            scores = max_sim(queries[rows], self.image_vectors[items])  # (m, n)
            if caption_weight is not None:
                captions = np.asarray(self.caption_vectors[items], dtype=np.float32)  # (n, D)
                scores += caption_weight * queries[rows] @ captions.T
            return scores

        if self._exact(mask, self.num_queries):
            return exact_search(score, len(queries), _rows(mask), self.num_items, k,
                                self.num_queries * self.dim)
        if caption_weight is None:
            found = self.stages["image"].candidates(queries, k, mask)  # (M, C) by pooled image vector
        else:  # half by pooled image vector, half by caption: one re-rank's worth of rows, as text->image
            found = np.concatenate([self.stages[name].candidates(queries, k, mask, share=COMPOSED_SHARE)
                                    for name in ("image", "caption")], axis=1)
        return rerank(lambda query, rows: score(slice(query, query + 1), rows)[0], found, k)

    def _exact(self, mask: Array | None, per_item: int) -> bool:
        """Score exactly: a flat index, or a filter that leaves few vectors to score."""
        return self.kind == "flat" or (mask is not None and int(mask.sum()) * per_item <= EXACT_MAX_VECTORS)

    def _check_queries(self, queries: Array, ndim: int) -> Array:
        return check_queries(queries, ndim, self.dim)

    def _allowed(self, filter: Filter | None, allowed: Array | None, k: int) -> tuple[Array | None, int]:
        """The allowed-row mask (None: all rows) and ``k`` capped at the allowed count."""
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.num_items:
            raise UserError(f"k must be between 1 and the catalogue size ({self.num_items}), got {k}.")
        mask = self.items.allowed_rows(filter) if filter else None
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.shape != (self.num_items,) or allowed.dtype != bool:
                raise ValueError(f"allowed must be a boolean ({self.num_items},) row mask, got "
                                 f"{allowed.dtype} {allowed.shape}.")
            mask = allowed if mask is None else mask & allowed
        return mask, int(k) if mask is None else min(int(k), int(mask.sum()))


def _rows(mask: Array | None) -> Array | None:
    """Sorted allowed rows of a mask (None: all)."""
    return None if mask is None else np.flatnonzero(mask)


def _empty(num_queries: int) -> SearchResult:
    """The result of a search that allows no item."""
    return np.empty((num_queries, 0), dtype=np.float32), np.empty((num_queries, 0), dtype=np.int64)


def _need(path: Path, name: str) -> Path:
    """``path / name``, which must exist."""
    if not (path / name).is_file():
        raise UserError(f"index {path} is incomplete ({name} is missing); rebuild it with `unifashion index`.")
    return path / name


def _open_array(path: Path, name: str) -> Array:
    """A memory-mapped ``.npy`` of the index, or a UserError if it is missing or damaged."""
    with refuse_corrupt(_need(path, name), "rebuild it with `unifashion index --overwrite`"):
        return np.load(path / name, mmap_mode="r")


class RowReads:
    """A memory-mapped ``.npy`` whose scattered rows are read with ``pread`` rather than mapped.

    A page fault on a mapped row also maps the neighbouring pages already in the page cache
    (the kernel's fault-around, which ``MADV_RANDOM`` does not turn off), so at 1M items the
    re-rank's 256 rows per query left 4 GB of vector pages in the searching process's resident set
    after 200 queries. Read rows are copied out instead; slices and single rows (sequential scans)
    still come from the map. Sorted row arrays, as the re-rank asks, read runs of adjacent rows at once.

    Args:
        array: the file opened with ``np.load(..., mmap_mode="r")``.
        path: the same file.
    """

    def __init__(self, array: np.memmap, path: Path) -> None:
        self._map = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self._row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self._offset = int(array.offset)
        self._path = path
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return len(self._map)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Array:
        return np.asarray(self._map, dtype=dtype)

    def __getitem__(self, key: Any) -> Array:
        if not (isinstance(key, np.ndarray) and key.ndim == 1 and key.dtype.kind in "iu"):
            return self._map[key]
        rows = key.astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._map)):
            raise IndexError(f"rows out of range for {len(self._map)} items")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)  # (n, row bytes)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # positions where a run of consecutive rows starts
        buffer = memoryview(flat.reshape(-1))
        size = self._row_bytes
        for start, stop, row in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], rows[starts].tolist(),
                                    strict=True):
            target = buffer[start * size : stop * size]
            if os.preadv(self._fd, [target], self._offset + row * size) != target.nbytes:
                raise UserError(f"{self._path} is shorter than its header says; rebuild the index with "
                                "`unifashion index --overwrite`.")
        return out


def check_fingerprint(path: str | Path, meta: dict[str, Any], expected: str | None) -> None:
    """Refuse an index (or collection) whose vectors another model made."""
    if expected is not None and meta.get("fingerprint") != expected:
        raise UserError(f"index {path} was built by a different model (fingerprint {meta.get('fingerprint')}), "
                        f"the query model is {expected}; rebuild it with `unifashion index`.")


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of an index directory, checked to be one this version reads."""
    if not path.is_dir():
        raise UserError(f"index {path} does not exist; build one with `unifashion index`.")
    if not (path / META).is_file():
        raise UserError(f"{path} is not a unifashion index (no {META}); build one with `unifashion index`.")
    meta = read_json(path / META)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise UserError(f"{path} is not a unifashion index ({META} has no format_version).")
    if version > FORMAT_VERSION:
        raise UserError(f"index {path} has format version {version}, newer than this unifashion "
                        f"reads ({FORMAT_VERSION}); upgrade unifashion or rebuild the index.")
    if version < FORMAT_VERSION:
        raise UserError(f"index {path} has format version {version}, written by an older unifashion; "
                        "rebuild it with `unifashion index`.")
    return meta
