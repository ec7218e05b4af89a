"""The approximate first stage: a FAISS IVF index whose every vector is labelled with its item's row.

The image stage holds all ``N * Q`` query vectors (each labelled with its item, so a search
returns items and an item's best vector decides whether it is found); the text and caption
stages hold one vector per item. The stage only proposes candidates: the index re-ranks them
exactly from the float16 vectors. The coarse quantiser is trained on a bounded sample and the
number of lists is capped, so the build cost grows linearly with the catalogue.
"""

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from unifashion_core.batching import batch_slices

MAX_LISTS = 1024  # assigning 8M vectors to 1024 lists costs ~4 TFLOP: minutes on 2 cores
VECTORS_PER_LIST = 1000  # fewer lists for small catalogues
TRAIN_PER_LIST = 64  # k-means sample: 64 points per list (FAISS wants at least 39)
NPROBE = 16  # lists visited per query
ADD_BLOCK = 1 << 17  # vectors converted to float32 and added at a time (128 MB at D = 256)
BLAS_THRESHOLD = 20  # this FAISS build's default (128,000) keeps list assignment off BLAS
ENCODING = "SQ8"  # 8-bit scalar quantiser: D bytes per vector, trained on min/max alone

Array = np.ndarray


def lists_for(num_vectors: int) -> int:
    """The number of IVF lists for ``num_vectors`` vectors."""
    return int(max(1, min(MAX_LISTS, num_vectors // VECTORS_PER_LIST)))


def build_stage(vectors: Array, per_item: int, path: Path) -> dict[str, Any]:
    """Train and fill an IVF index over ``vectors`` and write it to ``path``.

    Args:
        vectors: ``(N * per_item, D)`` vectors (float16 memory map is fine), item-major.
        per_item: vectors per item (Q for images, 1 for texts); vector ``i`` is labelled ``i // per_item``.
        path: the FAISS file to write.

    Returns:
        the stage's parameters for ``meta.json`` (``factory``, ``nlist``, ``nprobe``, ``ntotal``).
    """
    num_vectors, dim = vectors.shape
    nlist = lists_for(num_vectors)
    factory = f"IVF{nlist},{ENCODING}"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    try:
        sample = np.unique(np.linspace(0, num_vectors - 1, min(num_vectors, TRAIN_PER_LIST * nlist)).astype(np.int64))
        index.train(np.asarray(vectors[sample], dtype=np.float32))
        for block in batch_slices(num_vectors, ADD_BLOCK):
            labels = np.arange(block.start, block.stop, dtype=np.int64) // per_item
            index.add_with_ids(np.asarray(vectors[block], dtype=np.float32), labels)
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous
    faiss.write_index(index, str(path))
    return {"factory": factory, "nlist": nlist, "nprobe": min(nlist, NPROBE), "ntotal": int(index.ntotal)}


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
        """How many vectors the stage holds."""
        return int(self.index.ntotal)

    def candidates(self, queries: Array, num: int, allowed: Array | None = None) -> Array:
        """Rows of the items with the ``num`` best vectors for each query (-1 where none).

        Args:
            queries: ``(M, D)`` float32 queries.
            num: vectors asked for per query (several may belong to one item).
            allowed: boolean ``(N,)`` mask of the rows that may be returned, or None for all.
                The lists visited grow as the allowed fraction shrinks, so a filtered query
                sees about as many allowed vectors as an unfiltered one.

        Returns:
            ``(M, num)`` int64 rows.
        """
        nprobe = self.params["nprobe"]
        if allowed is None:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        else:
            fraction = max(float(allowed.mean()), 1e-9)
            bitmap = np.packbits(allowed, bitorder="little")  # bit r = row r allowed
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n in bytes
            nprobe = min(self.params["nlist"], math.ceil(nprobe / fraction))
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        _, rows = self.index.search(queries, num, params=params)  # (M, num)
        return rows
