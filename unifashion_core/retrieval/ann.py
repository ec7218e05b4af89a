"""The approximate first stage: an exhaustive scan of 4-bit PQ codes, one vector per item.

The image stage holds each item's pooled query vector (the normalised mean of its Q vectors),
the text and caption stages the item's text and caption vectors, each as ``D / 2`` 4-bit product
quantiser codes (``D / 4`` bytes: 64 at D = 256) scanned with FAISS's SIMD fast-scan kernels.
A stage only proposes candidate rows; the index re-ranks them exactly from the float16 vectors,
so scores are exact and only the candidate set is approximate.

Why this design (measured with ``unifashion bench index`` and the scans in the README "Scaling"):
at 1M items in 10,000 tight clusters, IVF with a build-affordable 1,024 lists (over all N * Q
vectors or over pooled vectors) lost most of its recall because the lists were coarser than the
clusters, and an HNSW graph over the pooled vectors found only 75 % of the top-10 at ef 256
(greedy routing between isolated clusters), while the pooled top-200 holds 99.6 % of the max-sim
top-10. A scan has no routing or partition to miss: it costs ``D / 4`` bytes per item and query,
about 6 ms for 1M items on one core, and it is linear in N (see the sizing table).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError

CANDIDATES = 256  # candidate items per query for k <= 16 ...
CANDIDATES_PER_RESULT = 16  # ... and 16 k beyond
ADD_BLOCK = 1 << 16  # vectors converted to float32 and encoded at a time
TRAIN_SAMPLE = 1 << 16  # vectors the product quantiser is trained on
MIN_ITEMS = 16  # 4-bit codebooks have 16 centroids

Array = np.ndarray
Vectors = Callable[[slice | Array], Array]  # rows -> (n, D) float32 vectors of those items


def pooled(image_vectors: Array) -> Array:
    """``(n, Q, D)`` query vectors -> ``(n, D)`` normalised means: one vector per item."""
    mean = np.asarray(image_vectors, dtype=np.float32).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def check_size(num_items: int, dim: int) -> None:
    """Refuse a catalogue the product quantiser cannot be trained on."""
    if num_items < MIN_ITEMS or dim % 2:
        raise UserError(f"--kind pq needs at least {MIN_ITEMS} items and an even width (got {num_items} items, "
                        f"D={dim}); use --kind flat (exact).")


def build_stage(vectors: Vectors, num_items: int, dim: int, path: Path) -> dict[str, Any]:
    """Train the codes on a sample, encode every item and write the stage to ``path``.

    Args:
        vectors: ``vectors(rows) -> (n, D)`` float32 vectors of the given rows.
        num_items: N.
        dim: D (even).
        path: the FAISS file to write.

    Returns:
        the stage's parameters for ``meta.json``.
    """
    check_size(num_items, dim)
    factory = f"IVF1,PQ{dim // 2}x4fs"  # one list: the scan is exhaustive, and it takes ID selectors
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.min_points_per_centroid = 1  # small catalogues train on what they have, silently
    sample = np.unique(np.linspace(0, num_items - 1, min(num_items, TRAIN_SAMPLE)).astype(np.int64))
    index.train(vectors(sample))
    for rows in batch_slices(num_items, ADD_BLOCK):
        index.add(vectors(rows))
    faiss.write_index(index, str(path))
    return {"factory": factory, "candidates": CANDIDATES, "ntotal": int(index.ntotal)}


class Stage:
    """A loaded first stage: candidate rows for single-vector queries, optionally among allowed rows.

    Args:
        path: the FAISS file written by :func:`build_stage`.
        params: what :func:`build_stage` returned.
    """

    def __init__(self, path: Path, params: dict[str, Any]) -> None:
        self.index = faiss.read_index(str(path))
        self.params = params

    @property
    def ntotal(self) -> int:
        """How many items the stage holds."""
        return int(self.index.ntotal)

    def candidates(self, queries: Array, k: int, allowed: Array | None = None, share: float = 1.0) -> Array:
        """Candidate rows for the top ``k`` of each query (-1 where fewer items are allowed).

        Args:
            queries: ``(M, D)`` float32 queries.
            k: results the caller keeps; ``max(candidates, 16 k)`` rows are proposed.
            allowed: boolean ``(N,)`` mask of the rows that may be proposed, or None: applied
                inside the scan, so every candidate is an allowed item.
            share: the fraction of the rows this stage proposes, when two stages propose for one
                re-rank (composed search: image and caption stages, half each).

        Returns:
            ``(M, C)`` int64 rows, best first by the quantised score.
        """
        count = min(max(round(share * max(self.params["candidates"], CANDIDATES_PER_RESULT * k)), k), self.ntotal)
        if allowed is None:
            _, rows = self.index.search(queries, count)  # (M, C)
            return rows
        bitmap = np.packbits(allowed, bitorder="little")  # bit r = row r allowed
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n in bytes; both kept alive here
        _, rows = self.index.search(queries, count, params=faiss.SearchParametersIVF(nprobe=1, sel=selector))
        return rows
