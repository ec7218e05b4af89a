"""The approximate first stage: a FAISS HNSW graph over one vector per item.

The image stage holds each item's pooled query vector (the normalised mean of its Q vectors),
the text and caption stages the item's text and caption vectors; graph node ``r`` is row ``r``.
A stage only proposes candidate rows (the ``ef`` best by the graph, with 8-bit scalar-quantised
distances); the index re-ranks them exactly from the float16 vectors, so scores are exact and only
the candidate set is approximate.

Why this design (measured with ``unifashion bench index``, README "Scaling"): the max-sim top-10
is almost always inside the top 100-200 items by pooled vector (N vectors instead of N * Q), and
a graph finds those neighbours however many clusters the catalogue has, whereas IVF over all
N * Q vectors, or over pooled vectors, with a build-affordable 1,024 lists lost most of its recall
at 1M items when the catalogue held 10,000 tight clusters (lists coarser than clusters).
"""

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from unifashion_core.batching import batch_slices

HNSW_M = 32  # graph neighbours per node (64 on the bottom layer)
EF_CONSTRUCTION = 40
EF_SEARCH = 256  # candidates per query for k = 10
CANDIDATES_PER_RESULT = 8  # larger k: ef grows to 8 * k
MAX_EF = 4096  # a filtered search widens ef by 1 / allowed fraction, up to this
ADD_BLOCK = 1 << 16  # vectors converted to float32 and added at a time
TRAIN_SAMPLE = 1 << 16  # vectors the scalar quantiser's ranges are fitted on

Array = np.ndarray
Vectors = Callable[[slice | Array], Array]  # rows -> (n, D) float32 vectors of those items


def pooled(image_vectors: Array) -> Array:
    """``(n, Q, D)`` query vectors -> ``(n, D)`` normalised means: one vector per item."""
    mean = np.asarray(image_vectors, dtype=np.float32).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def build_stage(vectors: Vectors, num_items: int, dim: int, path: Path) -> dict[str, Any]:
    """Build an HNSW graph over one vector per item and write it to ``path``.

    Args:
        vectors: ``vectors(rows) -> (n, D)`` float32 vectors of the given rows.
        num_items: N.
        dim: D.
        path: the FAISS file to write.

    Returns:
        the stage's parameters for ``meta.json``.
    """
    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    sample = np.unique(np.linspace(0, num_items - 1, min(num_items, TRAIN_SAMPLE)).astype(np.int64))
    index.train(vectors(sample))
    for rows in batch_slices(num_items, ADD_BLOCK):
        index.add(vectors(rows))
    faiss.write_index(index, str(path))
    return {"factory": f"HNSW{HNSW_M},SQ8", "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH,
            "ntotal": int(index.ntotal)}


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

    def candidates(self, queries: Array, k: int, allowed: Array | None = None) -> Array:
        """Candidate rows for the top ``k`` of each query (-1 where the graph found fewer).

        Args:
            queries: ``(M, D)`` float32 queries.
            k: results the caller will keep; ``max(ef_search, 8 k)`` candidates are proposed.
            allowed: boolean ``(N,)`` mask of the rows that may be returned, or None. The graph
                is walked through every node but returns only allowed ones, with ``ef`` widened
                by 1 / allowed fraction so a filtered query sees as many allowed candidates.

        Returns:
            ``(M, ef)`` int64 rows.
        """
        ef = max(self.params["ef_search"], CANDIDATES_PER_RESULT * k)
        if allowed is None:
            ef = min(ef, self.ntotal)
            _, rows = self.index.search(queries, ef, params=faiss.SearchParametersHNSW(efSearch=ef))  # (M, ef)
            return rows
        ef = min(max(ef, min(MAX_EF, math.ceil(ef / max(float(allowed.mean()), 1e-9)))), self.ntotal)
        bitmap = np.packbits(allowed, bitorder="little")  # bit r = row r allowed
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n in bytes; both kept alive here
        _, rows = self.index.search(queries, ef, params=faiss.SearchParametersHNSW(efSearch=ef, sel=selector))
        return rows
