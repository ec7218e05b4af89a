"""The live catalogue: a base index plus a durable log of upserts and deletes (docs/design.md section 9).

An index is built once; a shop's catalogue changes every day. The catalogue keeps the changes in
the index directory ``I``, next to the base index files::

    live/000000000001.npz ...  one segment per acknowledged write, applied in sequence order: the
                               upserted items (ids, records, image/text(/caption) vectors, upload
                               file names) and the deleted ids (tombstones)
    uploads/<sha256><suffix>   the bytes of uploaded images, named by their content
    uploads.jsonl              (written by compact) {"id", "file"} of base items whose image is an upload

A write stores its uploads, then its segment, each flushed to disk before the rename that makes it
visible, so an acknowledged write survives a kill -9 or a power loss and a segment is never half
there; opening the catalogue replays the segments. Writers, in any process, hold an exclusive
``flock`` on the sibling file ``.{I.name}.lock``. Readers take no lock: :meth:`Catalogue.snapshot`
picks up what other processes wrote (segments, a compaction) and returns an immutable
:class:`CatalogueView`, so a search never sees a half-applied write. :func:`compact` folds the base
and the segments into a fresh base index (``IndexWriter``) and swaps it in with a rename.

A search ranks the base with deleted and replaced rows excluded through ``allowed`` (filters passed
through) and the live items by an exact scan, then merges both into the true top k. Rows of a view:
base rows ``0..N-1``, then live slot ``s`` as row ``N + s``.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.fileio import (
    atomic_file,
    fsync_dir,
    read_jsonl,
    remove_stale_siblings,
    replace_dir,
    restore_interrupted,
    write_jsonl,
)
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.exact import (
    check_queries,
    exact_search,
    max_over_queries,
    max_sim,
    top_k,
    zero_shot_scorer,
)
from unifashion_core.retrieval.index import IndexWriter, RetrievalIndex
from unifashion_core.retrieval.payload import Filter, ItemRecord

LIVE = "live"
UPLOADS = "uploads"
UPLOADS_LIST = "uploads.jsonl"
SEGMENT_VERSION = 1
LOCK_WAIT_S = 30.0  # a writer waits this long for another writer (e.g. a compaction) before giving up
COMPACT_BLOCK = 4096  # items copied into the compacted index per IndexWriter.add
# meta.json fields that IndexWriter.finalize sets itself (the rest are the caller's, kept by compact)
WRITER_FIELDS = frozenset({"format_version", "num_items", "num_queries", "dim", "kind", "ann", "has_captions",
                           "created_with"})

Array = np.ndarray
SearchResult = tuple[Array, Array]
Signature = tuple[int, int]  # (inode, mtime_ns) of the base's meta.json: changes when a compaction swaps it


class UnknownItem(UserError):
    """An item id the catalogue does not hold."""


class CatalogueBusy(UserError):
    """Another writer held the catalogue's lock for longer than a writer waits (e.g. a compaction)."""


@dataclass(frozen=True)
class Upload:
    """The encoded bytes of an image the catalogue stores itself (not a file of the dataset).

    Attributes:
        data: the file's bytes.
        suffix: its file suffix, e.g. ``.png``.
    """

    data: bytes
    suffix: str


@dataclass(frozen=True)
class ItemBatch:
    """B embedded items to upsert, in the layout of the index.

    Attributes:
        records: the items' records (id, text, image path relative to the base's data, fields);
            ``image`` is empty for an item whose image is an upload.
        image_vectors: ``(B, Q, D)`` image query embeddings.
        text_vectors: ``(B, D)`` text embeddings.
        caption_vectors: ``(B, D)`` gallery-caption embeddings (exactly when the base has captions).
        captions: the B gallery captions, or None.
        uploads: per item, its image bytes to store, or None (its image is in the base's data).
    """

    records: list[ItemRecord]
    image_vectors: Array
    text_vectors: Array
    caption_vectors: Array | None
    captions: list[str] | None
    uploads: list[Upload | None]

    def check(self, num_queries: int, dim: int, has_captions: bool) -> None:
        """Refuse a batch whose layout differs from the index's, or with repeated or empty ids."""
        size = len(self.records)
        if self.image_vectors.shape != (size, num_queries, dim) or self.text_vectors.shape != (size, dim):
            raise ValueError(f"a batch of {size} items needs ({size}, {num_queries}, {dim}) image vectors and "
                             f"({size}, {dim}) text vectors, got {self.image_vectors.shape} and "
                             f"{self.text_vectors.shape}.")
        if (self.caption_vectors is not None) != has_captions or len(self.uploads) != size:
            raise ValueError("caption vectors must be given exactly when the index has gallery captions, "
                             "and one upload (or None) per item.")
        ids = [record.id for record in self.records]
        if not all(ids) or len(set(ids)) != size:
            raise UserError("item ids must be non-empty and unique within one upsert.")
        vectors = (self.image_vectors, self.text_vectors, self.caption_vectors)
        if not all(np.isfinite(v).all() for v in vectors if v is not None):
            raise ValueError("item vectors contain NaN or infinite values.")


class _LiveRows:
    """Append-only storage of the live items' vectors and records.

    A view reads the first ``count`` rows of the container it holds; a write fills the rows after
    the newest view's count and publishes a new view, so older views never see a changing row.
    """

    def __init__(self, num_queries: int, dim: int, has_captions: bool, capacity: int = 64) -> None:
        self.image = np.zeros((capacity, num_queries, dim), dtype=np.float16)  # (C, Q, D)
        self.text = np.zeros((capacity, dim), dtype=np.float16)  # (C, D)
        self.caption = np.zeros((capacity, dim), dtype=np.float16) if has_captions else None  # (C, D)
        self.records: list[ItemRecord] = []
        self.captions: list[str] = []

    def extended(self, segment: dict[str, Array], count: int) -> "_LiveRows":
        """These rows (or a larger copy) with the segment's items written from row ``count`` on."""
        size = len(segment["ids"])
        rows = self if count + size <= len(self.image) else self._grown(count, count + size)
        end = count + size
        rows.image[count:end], rows.text[count:end] = segment["image_vectors"], segment["text_vectors"]
        if rows.caption is not None:
            rows.caption[count:end] = segment["caption_vectors"]
        del rows.records[count:], rows.captions[count:]
        rows.records += [ItemRecord.from_json(line) for line in segment["records"].tolist()]
        rows.captions += segment["captions"].tolist() if "captions" in segment else [""] * size
        return rows

    def _grown(self, count: int, needed: int) -> "_LiveRows":
        """A new container, twice as large as needed, holding the first ``count`` rows."""
        num_queries, dim = self.image.shape[1:]
        grown = _LiveRows(num_queries, dim, self.caption is not None, capacity=2 * needed)
        grown.image[:count], grown.text[:count] = self.image[:count], self.text[:count]
        if self.caption is not None:
            grown.caption[:count] = self.caption[:count]
        grown.records, grown.captions = self.records[:count], self.captions[:count]
        return grown


@dataclass(frozen=True)
class CatalogueView:
    """An immutable state of the catalogue: searches and item look-ups on one consistent set of items.

    Searches take the arguments of :class:`RetrievalIndex`'s and return ``(scores, rows)`` in this
    view's rows (resolve them with :meth:`item_at` on the same view).
    """

    path: Path
    base: RetrievalIndex
    signature: Signature
    base_allowed: Array | None  # (N,) bool: base rows neither deleted nor replaced; None: all
    live: _LiveRows
    count: int  # live slots in this view (deleted and replaced ones included)
    alive: Array  # (count,) bool
    live_slots: dict[str, int]  # id -> slot of each live item
    uploads: dict[str, str]  # id -> file in uploads/ of each item whose image is an upload
    seq: int  # the last segment applied
    num_items: int

    @property
    def meta(self) -> dict[str, Any]:
        """The base index's ``meta.json`` (fingerprint, data, checkpoint, ...)."""
        return self.base.meta

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the model that embedded the items."""
        return self.base.fingerprint

    @property
    def num_queries(self) -> int:
        """Q, query vectors per image."""
        return self.base.num_queries

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return self.base.dim

    @property
    def has_captions(self) -> bool:
        """Whether items carry gallery-caption vectors (composed retrieval "w/ cap")."""
        return self.live.caption is not None

    @property
    def num_live(self) -> int:
        """Items held by the segments (upserted since the base was built)."""
        return len(self.live_slots)

    def contains(self, item_id: str) -> bool:
        """Whether the catalogue holds ``item_id``."""
        return item_id in self.live_slots or self._base_row(item_id) is not None

    def item(self, item_id: str) -> ItemRecord:
        """The record of an item id.

        Raises:
            UnknownItem: no such item.
        """
        if (slot := self.live_slots.get(item_id)) is not None:
            return self.live.records[slot]
        if (row := self._base_row(item_id)) is None:
            raise UnknownItem(f"no item {item_id!r} in the catalogue.")
        return self.base.item_at(row)

    def item_at(self, row: int) -> ItemRecord:
        """The record of a row a search of this view returned."""
        num_base = self.base.num_items
        return self.base.item_at(row) if row < num_base else self.live.records[row - num_base]

    def image_file(self, item_id: str, record: ItemRecord | None = None) -> Path | None:
        """Where an item's image is on this machine (an upload or a dataset file), or None.

        ``record``: the item's record when the caller holds it (a search result), saving a look-up.
        """
        if (name := self.uploads.get(item_id)) is not None:
            return self.path / UPLOADS / name
        image = (record or self.item(item_id)).image
        return self.base.data_root / image if image else None

    def image_vectors_of(self, item_id: str) -> Array:
        """``(Q, D)`` float32 image vectors of an item (search "more like this" without re-embedding)."""
        if (slot := self.live_slots.get(item_id)) is not None:
            return self.live.image[slot].astype(np.float32)
        if (row := self._base_row(item_id)) is None:
            raise UnknownItem(f"no item {item_id!r} in the catalogue.")
        return np.asarray(self.base.image_vectors[row], dtype=np.float32)

    def field_names(self) -> list[str]:
        """Every filterable field some item has, sorted."""
        live = {name for slot in self.live_slots.values() for name in self.live.records[slot].fields}
        return sorted(set(self.base.items.names) | live)

    # --- searches ----------------------------------------------------------------------------

    def search_images(self, queries: Array, k: int, filter: Filter | None = None) -> SearchResult:
        """Rank images for text (or fused) queries ``(M, D)`` by ``max_q <z_q, query>``."""
        queries = self._check_queries(queries, 2)

        def live(rows: slice, slots: Array) -> Array:
            return max_sim(queries[rows], self.live.image[slots])  # (m, n)

        return self._search(k, filter, lambda kb, allowed: self.base.search_images(queries, kb, filter, allowed),
                            live, len(queries), self.num_queries * self.dim)

    def search_texts(self, image_queries: Array, k: int, filter: Filter | None = None) -> SearchResult:
        """Rank the items' texts for image queries ``(M, Q, D)`` by ``max_q <z_q, t>``."""
        image_queries = self._check_queries(image_queries, 3)

        def live(rows: slice, slots: Array) -> Array:
            return max_over_queries(image_queries[rows], self.live.text[slots])  # (m, n)

        return self._search(k, filter, lambda kb, allowed: self.base.search_texts(image_queries, kb, filter, allowed),
                            live, len(image_queries), self.dim)

    def search_composed(self, fused: Array, k: int, caption_weight: float = 1.0, use_captions: bool = True,
                        filter: Filter | None = None) -> SearchResult:
        """Composed retrieval ``max_q <e, z_q> + caption_weight * <e, c>`` for fused queries ``(M, D)``.

        Without gallery captions, or with ``use_captions=False``, the first term alone.
        """
        fused = self._check_queries(fused, 2)
        with_captions = use_captions and self.has_captions

        def live(rows: slice, slots: Array) -> Array:
            scores = max_sim(fused[rows], self.live.image[slots])  # (m, n)
            if with_captions:
                scores += caption_weight * fused[rows] @ self.live.caption[slots].astype(np.float32).T
            return scores

        def base(kb: int, allowed: Array | None) -> SearchResult:
            return self.base.search_composed(fused, kb, caption_weight, use_captions, filter, allowed)

        return self._search(k, filter, base, live, len(fused), self.num_queries * self.dim)

    def search_zero_shot(self, references: Array, texts: Array, k: int, image_weight: float,
                         filter: Filter | None = None) -> SearchResult:
        """Composed retrieval by the zero-shot late fusion (``RetrievalIndex.search_zero_shot``)."""
        references, texts = self._check_queries(references, 3), self._check_queries(texts, 2)
        score = zero_shot_scorer(references, texts, image_weight)

        def base(kb: int, allowed: Array | None) -> SearchResult:
            return self.base.search_zero_shot(references, texts, kb, image_weight, filter, allowed)

        return self._search(k, filter, base, lambda rows, slots: score(rows, self.live.image[slots]), len(texts),
                            self.num_queries * self.dim)

    def _search(self, k: int, filter: Filter | None, base: Callable[[int, Array | None], SearchResult],
                live: Callable[[slice, Array], Array], num_queries: int, floats_per_item: int) -> SearchResult:
        """The top ``k`` of the base's allowed rows and the live items that match ``filter``."""
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.num_items:
            raise UserError(f"k must be between 1 and the catalogue size ({self.num_items}), got {k}.")
        filter = self._check_filter(filter)
        found = [_empty(num_queries)]
        if self._base_may_match(filter):
            found.append(base(min(int(k), self.base.num_items), self.base_allowed))
        slots = np.flatnonzero(self._live_mask(filter))
        if len(slots):
            scores, picked = exact_search(live, num_queries, slots, self.count, min(int(k), len(slots)),
                                          floats_per_item)
            found.append((scores, picked + self.base.num_items))
        scores, rows = np.concatenate([s for s, _ in found], axis=1), np.concatenate([r for _, r in found], axis=1)
        if scores.shape[1] == 0:
            return scores, rows
        best, columns = top_k(scores, min(int(k), scores.shape[1]))
        return best.astype(np.float32), np.take_along_axis(rows, columns, axis=1).astype(np.int64)

    def _check_queries(self, queries: Array, ndim: int) -> Array:
        return check_queries(queries, ndim, self.dim)

    def _check_filter(self, filter: Filter | None) -> dict[str, list[str]]:
        """``filter`` as ``{field: [values]}``; a field no item has or a non-string value is a UserError."""
        checked = {}
        for name, wanted in (filter or {}).items():
            values = [wanted] if isinstance(wanted, str) else wanted
            if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
                raise UserError(f"filter {name!r} must be a string or a list of strings, got {wanted!r}.")
            if name not in (known := self.field_names()):
                raise UserError(f"cannot filter on {name!r}: no indexed item has that field "
                                f"(fields: {', '.join(known) or 'none'}).")
            checked[name] = list(values)
        return checked

    def _base_may_match(self, filter: dict[str, list[str]]) -> bool:
        """False when no base row can match: none left, or a filter field only live items have."""
        alive = self.base_allowed is None or bool(self.base_allowed.any())
        return alive and set(filter) <= set(self.base.items.names)

    def _live_mask(self, filter: dict[str, list[str]]) -> Array:
        """``(count,)`` bool: live slots that are alive and match every field of ``filter``."""
        mask = self.alive.copy()
        records = self.live.records
        for name, values in filter.items():
            allowed = set(values)
            mask &= np.fromiter((records[slot].fields.get(name) in allowed for slot in range(self.count)),
                                dtype=bool, count=self.count)
        return mask

    def _base_row(self, item_id: str) -> int | None:
        """The base row of an item that is still live there, else None."""
        try:
            row = self.base.row_of(item_id)
        except UserError:
            return None
        return row if self.base_allowed is None or self.base_allowed[row] else None

    # --- writes ------------------------------------------------------------------------------

    def applied(self, segment: dict[str, Array]) -> "CatalogueView":
        """This view with one more segment applied: its deletions, then its upserts (replacing ids)."""
        ids, uploads_of = segment["ids"].tolist(), segment["uploads"].tolist()
        base_allowed = None if self.base_allowed is None else self.base_allowed.copy()
        alive, slots, uploads = self.alive.copy(), dict(self.live_slots), dict(self.uploads)
        for item_id in segment["deleted"].tolist() + ids:
            if (slot := slots.pop(item_id, None)) is not None:
                alive[slot] = False
            elif (row := self._base_row(item_id)) is not None:
                base_allowed = np.ones(self.base.num_items, dtype=bool) if base_allowed is None else base_allowed
                base_allowed[row] = False
            uploads.pop(item_id, None)
        for offset, (item_id, upload) in enumerate(zip(ids, uploads_of, strict=True)):
            slots[item_id] = self.count + offset
            if upload:
                uploads[item_id] = upload
        num_base = self.base.num_items if base_allowed is None else int(base_allowed.sum())
        return replace(self, base_allowed=base_allowed, live=self.live.extended(segment, self.count),
                       count=self.count + len(ids), alive=np.concatenate([alive, np.ones(len(ids), dtype=bool)]),
                       live_slots=slots, uploads=uploads, seq=self.seq + 1, num_items=num_base + len(slots))

    def blocks(self, size: int) -> Iterator[dict[str, Any]]:
        """Every item, base rows first, in blocks of ``size`` as ``IndexWriter.add`` takes them."""
        base_rows = np.arange(self.base.num_items) if self.base_allowed is None else np.flatnonzero(self.base_allowed)
        for rows in batch_slices(len(base_rows), size):
            yield _base_block(self.base, base_rows[rows])
        live_slots = np.flatnonzero(self.alive)
        for rows in batch_slices(len(live_slots), size):
            chosen = live_slots[rows]
            yield {"ids": [self.live.records[s].id for s in chosen], "image_vectors": self.live.image[chosen],
                   "text_vectors": self.live.text[chosen],
                   "caption_vectors": None if self.live.caption is None else self.live.caption[chosen],
                   "captions": [self.live.captions[s] for s in chosen] if self.has_captions else None,
                   "records": [self.live.records[s] for s in chosen]}


def _base_block(base: RetrievalIndex, rows: Array) -> dict[str, Any]:
    """The stored vectors, captions and records of some base rows (what a compaction copies)."""
    return {"ids": [base.ids[r] for r in rows.tolist()], "image_vectors": base.image_vectors[rows],
            "text_vectors": base.text_vectors[rows],
            "caption_vectors": None if base.caption_vectors is None else base.caption_vectors[rows],
            "captions": None if base.captions is None else [base.captions[r] for r in rows.tolist()],
            "records": [base.item_at(r) for r in rows.tolist()]}


def _empty(num_queries: int) -> SearchResult:
    return np.empty((num_queries, 0), dtype=np.float32), np.empty((num_queries, 0), dtype=np.int64)


# --- files -------------------------------------------------------------------------------------


def _segment_path(path: Path, seq: int) -> Path:
    return path / LIVE / f"{seq:012d}.npz"


def _signature(path: Path) -> Signature | None:
    """Identity of the base index in place (None while a compaction swaps the directory)."""
    try:
        stat = os.stat(path / "meta.json")
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _read_segment(path: Path) -> dict[str, Array]:
    try:
        with np.load(path, allow_pickle=False) as segment:
            arrays = {name: segment[name] for name in segment.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"catalogue segment {path} is damaged ({exc}); restore the index directory from a "
                        "backup.") from exc
    if int(arrays.get("version", -1)) != SEGMENT_VERSION:
        raise UserError(f"catalogue segment {path} has another format version; use the unifashion that wrote it.")
    return arrays


def _write_file(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a temporary name, flushed to disk before the rename (``atomic_file``)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def _write_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the catalogue's exclusive write lock (any process), waiting at most ``wait_s`` for it."""
    try:
        handle = open(_lock_path(path), "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"cannot write to the catalogue {path}: {exc.strerror} ({_lock_path(path)}).") from exc
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CatalogueBusy(f"the catalogue {path} is locked by another writer (a compaction?) for "
                                        f"over {wait_s:.0f} s; try again later.") from None
                time.sleep(0.05)
        yield
    finally:
        handle.close()  # releases the lock


def _load_view(path: Path, expected_fingerprint: str | None) -> CatalogueView:
    """The base index at ``path`` with every segment replayed.

    A compaction killed between the two renames that swap the new base in left only the previous
    directory (complete, with its segments): it is put back first.
    """
    with contextlib.suppress(OSError):  # another process put it back at the same moment
        restore_interrupted(path)
    signature = _signature(path)
    base = RetrievalIndex.load(path, expected_fingerprint)
    uploads = {}
    if (path / UPLOADS_LIST).is_file():
        uploads = {record["id"]: record["file"] for record in read_jsonl(path / UPLOADS_LIST)}
    view = CatalogueView(path, base, signature or (0, 0), None,
                         _LiveRows(base.num_queries, base.dim, base.caption_vectors is not None), 0,
                         np.zeros(0, dtype=bool), {}, uploads, 0, base.num_items)
    return _caught_up(view)


def _caught_up(view: CatalogueView) -> CatalogueView:
    """``view`` with the segments written since applied (FileNotFoundError: a compaction is swapping)."""
    while (segment := _segment_path(view.path, view.seq + 1)).exists():
        view = view.applied(_read_segment(segment))
    return view


class Catalogue:
    """The live catalogue of one index directory: snapshots to search, upserts and deletes.

    Safe to share between threads: searches use :meth:`snapshot`, writes are serialised (and
    serialised with other processes' writes by the file lock).

    Args:
        view: the state loaded by :meth:`open`.
        expected_fingerprint: the query model's fingerprint (checked again after a compaction).
    """

    def __init__(self, view: CatalogueView, expected_fingerprint: str | None) -> None:
        self.path = view.path
        self._view = view
        self._expected = expected_fingerprint
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, expected_fingerprint: str | None = None) -> "Catalogue":
        """Open an index directory as a live catalogue, replaying its segments.

        Raises:
            UserError: the index is missing, damaged or built by another model; a damaged segment.
        """
        path = Path(path).absolute()
        return cls(_load_view(path, expected_fingerprint), expected_fingerprint)

    def snapshot(self) -> CatalogueView:
        """The current state, with what other processes wrote since the last call picked up.

        While another thread is picking up or writing, the state before it is returned.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._view = self._refreshed(self._view)
            except FileNotFoundError:  # a compaction is swapping the directory: next time
                pass
            finally:
                self._lock.release()
        return self._view

    def _refreshed(self, view: CatalogueView) -> CatalogueView:
        signature = _signature(self.path)
        if signature is None:
            raise FileNotFoundError(self.path / "meta.json")
        if signature != view.signature:
            return _load_view(self.path, self._expected)
        return _caught_up(view)

    def upsert(self, batch: ItemBatch) -> CatalogueView:
        """Add or replace items, durably: on return the write is on disk and in the returned view.

        Raises:
            UserError: repeated or empty ids; CatalogueBusy when another writer holds the lock.
            ValueError: vectors that do not fit the index (another model).
        """

        def segment(view: CatalogueView) -> dict[str, Array]:
            batch.check(view.num_queries, view.dim, view.has_captions)
            arrays = {"ids": np.array([r.id for r in batch.records], dtype=str),
                      "records": np.array([r.to_json() for r in batch.records], dtype=str),
                      "image_vectors": np.asarray(batch.image_vectors, dtype=np.float16),
                      "text_vectors": np.asarray(batch.text_vectors, dtype=np.float16),
                      "uploads": np.array(self._store_uploads(batch.uploads), dtype=str)}
            if batch.caption_vectors is not None:
                arrays["caption_vectors"] = np.asarray(batch.caption_vectors, dtype=np.float16)
                arrays["captions"] = np.array(batch.captions or [""] * len(batch.records), dtype=str)
            return arrays

        return self._write(segment)

    def delete(self, ids: list[str]) -> CatalogueView:
        """Remove items, durably.

        Raises:
            UnknownItem: an id the catalogue does not hold (nothing is removed then).
        """

        def segment(view: CatalogueView) -> dict[str, Array]:
            if missing := [item_id for item_id in ids if not view.contains(item_id)]:
                raise UnknownItem(f"no item {missing[0]!r} in the catalogue"
                                  + (f" (and {len(missing) - 1} more unknown ids)." if len(missing) > 1 else "."))
            return {"image_vectors": np.zeros((0, view.num_queries, view.dim), dtype=np.float16),
                    "text_vectors": np.zeros((0, view.dim), dtype=np.float16),
                    "caption_vectors": np.zeros((0, view.dim), dtype=np.float16),
                    "deleted": np.array(sorted(set(ids)), dtype=str)}

        return self._write(segment)

    def _write(self, make_segment: Callable[[CatalogueView], dict[str, Array]]) -> CatalogueView:
        """Catch up, build the next segment, write it durably, apply it."""
        with self._lock, _write_lock(self.path):
            remove_stale_siblings(self.path)  # what a killed compaction left (no other writer runs now)
            try:
                view = self._refreshed(self._view)
            except FileNotFoundError as exc:
                raise UserError(f"the index {self.path} is gone; nothing was written.") from exc
            (self.path / LIVE).mkdir(exist_ok=True)
            for folder in (LIVE, UPLOADS):  # what a writer that was killed mid-write left
                for stray in (self.path / folder).glob(".*.tmp-*"):
                    stray.unlink()
            nothing = np.array([], dtype=str)
            arrays = {"ids": nothing, "records": nothing, "uploads": nothing, "deleted": nothing,
                      **make_segment(view), "version": np.array(SEGMENT_VERSION)}
            target = _segment_path(self.path, view.seq + 1)
            _write_file(target, lambda handle: np.savez(handle, **arrays))
            fsync_dir(target.parent)
            self._view = view.applied(arrays)
            return self._view

    def _store_uploads(self, uploads: list[Upload | None]) -> list[str]:
        """Write each upload to ``uploads/`` (named by content, flushed to disk); their file names."""
        folder = self.path / UPLOADS
        folder.mkdir(exist_ok=True)
        names = []
        for upload in uploads:
            if upload is None:
                names.append("")
                continue
            name = hashlib.sha256(upload.data).hexdigest() + upload.suffix
            if not (folder / name).is_file():
                _write_file(folder / name, lambda handle, data=upload.data: handle.write(data))
            names.append(name)
        fsync_dir(folder)
        fsync_dir(self.path)
        return names


@dataclass(frozen=True)
class CompactSummary:
    """What a compaction did.

    Attributes:
        index: the index directory.
        num_items: items in the compacted index.
        num_segments: segments folded in (0: there was nothing to do).
        num_uploads: items whose image is an upload kept in ``uploads/``.
    """

    index: Path
    num_items: int
    num_segments: int
    num_uploads: int


def compact(path: str | Path, progress: Progress = NullProgress(), wait_s: float = LOCK_WAIT_S) -> CompactSummary:
    """Fold the live segments into a fresh base index, atomically.

    The new index (same kind, same model fingerprint) is built with ``IndexWriter`` in a hidden
    sibling directory, the uploads still in use are linked into it, and it replaces ``path`` with
    a rename; the write lock is held throughout, so no write is lost. A server on the index picks
    the new base up at its next request. Files of the old directory other than the index's own
    are not carried over.

    Raises:
        UserError: not an index, every item deleted, or CatalogueBusy.
    """
    path = Path(path).absolute()
    with _write_lock(path, wait_s):
        remove_stale_siblings(path)  # what a killed compaction left
        view = _load_view(path, None)
        if view.seq == 0:
            return CompactSummary(path, view.num_items, 0, len(view.uploads))
        if view.num_items == 0:
            raise UserError(f"every item of {path} was deleted; an index cannot be empty, so there is nothing to "
                            "compact into (upsert items first, or build a new index).")
        out = path.parent / f".{path.name}.compacted"
        shutil.rmtree(out, ignore_errors=True)
        meta = {key: value for key, value in view.meta.items() if key not in WRITER_FIELDS}
        meta.update(generation=int(meta.get("generation", 0)) + 1, compacted_segments=view.seq)
        writer = IndexWriter(out, meta)
        done = writer.done_ids()  # a compaction of the same state that was interrupted resumes
        progress.start("compact", view.num_items)
        for block in view.blocks(COMPACT_BLOCK):
            keep = [i for i, item_id in enumerate(block["ids"]) if item_id not in done]
            if keep:
                writer.add(*_subset(block, keep))
            progress.advance("compact", len(block["ids"]))
        writer.finalize(view.base.kind)
        _carry_uploads(view, out)
        replace_dir(out, path)
        return CompactSummary(path, view.num_items, view.seq, len(view.uploads))


def _subset(block: dict[str, Any], keep: list[int]) -> tuple[Any, ...]:
    """``IndexWriter.add``'s arguments for the items ``keep`` of a block."""
    chosen = np.array(keep)

    def pick(values: Any) -> Any:
        if values is None:
            return None
        return values[chosen] if isinstance(values, np.ndarray) else [values[i] for i in keep]

    return tuple(pick(block[name]) for name in ("ids", "image_vectors", "text_vectors", "caption_vectors",
                                                "captions", "records"))


def _carry_uploads(view: CatalogueView, out: Path) -> None:
    """Link (or copy) the uploads of the compacted items into ``out`` and list them in uploads.jsonl."""
    if not view.uploads:
        return
    (out / UPLOADS).mkdir()
    for name in sorted(set(view.uploads.values())):
        source, target = view.path / UPLOADS / name, out / UPLOADS / name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    write_jsonl(out / UPLOADS_LIST, ({"id": item_id, "file": name} for item_id, name in sorted(view.uploads.items())))
