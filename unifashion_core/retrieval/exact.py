"""Exact late-interaction scoring over float16 vectors, block by block (the reference and the re-rank).

Each block of items is converted to float32 once and scored for a block of queries with one
BLAS matrix product, so memory stays bounded (about ``BLOCK_FLOATS`` floats per block) whatever
the catalogue size, and a running top-k is kept across blocks.
"""

from collections.abc import Callable

import numpy as np

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError

BLOCK_FLOATS = 1 << 23  # about 32 MB of float32 per converted block or score block
QUERY_BLOCK = 256

Array = np.ndarray
SearchResult = tuple[np.ndarray, np.ndarray]
Rows = slice | np.ndarray  # item rows of one block: a slice (all items) or sorted row numbers
Scorer = Callable[[slice, Rows], Array]  # (query rows, item rows) -> (m, n) scores


def max_sim(queries: Array, vectors: Array) -> Array:
    """``(M, D)`` queries against ``(n, Q, D)`` item vectors: ``(M, n)`` best over the Q vectors."""
    num_items, num_queries, dim = vectors.shape
    flat = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)  # (n * Q, D)
    return (queries @ flat.T).reshape(len(queries), num_items, num_queries).max(axis=2)


def max_over_queries(image_queries: Array, texts: Array) -> Array:
    """``(M, Q, D)`` image queries against ``(n, D)`` texts: ``(M, n)`` best over the Q queries."""
    num_rows, num_queries, dim = image_queries.shape
    scores = image_queries.reshape(-1, dim) @ np.asarray(texts, dtype=np.float32).T  # (M * Q, n)
    return scores.reshape(num_rows, num_queries, -1).max(axis=1)


def top_k(scores: Array, k: int) -> SearchResult:
    """Row-wise top ``k`` of ``(M, n)`` scores, best first: scores and columns ``(M, k)``."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (M, k) unordered
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(score: Scorer, num_queries: int, rows: Array | None, num_items: int, k: int,
                 floats_per_item: int) -> SearchResult:
    """Top ``k`` items by a dense score, over ``rows`` (all ``num_items`` when None).

    Args:
        score: ``score(query_rows, item_rows) -> (m, n)``.
        num_queries: M.
        rows: sorted allowed item rows, or None for every item.
        num_items: N.
        k: results per query (at most the number of rows scored).
        floats_per_item: floats converted per item (``Q * D`` or ``D``), to size the blocks.

    Returns:
        scores ``(M, k)`` float32 and item rows ``(M, k)`` int64, best first.
    """
    total = num_items if rows is None else len(rows)
    per_block = max(k, BLOCK_FLOATS // max(floats_per_item, QUERY_BLOCK))
    results = []
    for queries in batch_slices(num_queries, QUERY_BLOCK):
        num_rows = queries.stop - queries.start
        best = (np.empty((num_rows, 0), np.float32), np.empty((num_rows, 0), np.int64))
        for block in batch_slices(total, per_block):
            items = block if rows is None else rows[block]
            block_scores, columns = top_k(score(queries, items), min(k, block.stop - block.start))  # (m, <=k)
            block_rows = (columns + block.start) if rows is None else items[columns]
            best = _merge(best, (block_scores, block_rows), k)
        results.append(best)
    return (np.concatenate([s for s, _ in results]).astype(np.float32),
            np.concatenate([r for _, r in results]).astype(np.int64))


def _merge(first: SearchResult, second: SearchResult, k: int) -> SearchResult:
    """The top ``k`` of two best-first (scores, rows) pairs of the same queries."""
    scores, rows = np.concatenate([first[0], second[0]], axis=1), np.concatenate([first[1], second[1]], axis=1)
    best, columns = top_k(scores, min(k, scores.shape[1]))
    return best, np.take_along_axis(rows, columns, axis=1)


def rerank(score: Callable[[int, Array], Array], candidates: Array, k: int) -> SearchResult:
    """Exact top ``k`` of each query's candidate rows; rows with fewer are padded with -1 / -inf.

    Args:
        score: ``score(query, rows) -> (n,)``: the exact scores of query ``query``'s rows.
        candidates: ``(M, C)`` candidate rows per query, -1 for none (duplicates allowed).
        k: results per query.

    Returns:
        scores ``(M, k)`` float32 and rows ``(M, k)`` int64, best first.
    """
    out_scores = np.full((len(candidates), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(candidates), k), -1, dtype=np.int64)
    for query, found in enumerate(candidates):
        rows = np.unique(found[found >= 0])  # (c,) sorted: sequential reads of the memory map
        if len(rows):
            best, columns = top_k(score(query, rows)[None], min(k, len(rows)))
            out_scores[query, : columns.shape[1]] = best[0]
            out_rows[query, : columns.shape[1]] = rows[columns[0]]
    return out_scores, out_rows


def zero_shot_scorer(references: Array, texts: Array, image_weight: float) -> Callable[[slice, Array], Array]:
    """A scorer for :func:`exact_search`: the zero-shot composed score (``metrics.cir.zero_shot_scores``)
    of query rows ``rows`` (references ``(M, Q, D)``, modification texts ``(M, D)``) against
    items ``(n, Q, D)``, as ``(m, n)``."""
    import torch  # only composed searches that use it pay for torch here

    from unifashion_core.metrics.cir import zero_shot_scores

    def score(rows: slice, items: Array) -> Array:
        gallery = torch.from_numpy(np.asarray(items, dtype=np.float32))  # (n, Q, D)
        return zero_shot_scores(torch.from_numpy(references[rows]), torch.from_numpy(texts[rows]), gallery,
                                image_weight).numpy()

    return score


def check_queries(queries: Array, ndim: int, dim: int, holder: str = "index") -> Array:
    """Query vectors as contiguous float32, refused unless ``(M, D)`` (``ndim`` 2) or ``(M, Q, D)``
    (``ndim`` 3) with the ``holder``'s width ``dim`` and all finite."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != ndim or queries.shape[-1] != dim:
        wanted = "(M, D)" if ndim == 2 else "(M, Q, D)"
        raise UserError(f"query vectors must be {wanted} with D={dim} (the {holder}'s width), got shape "
                        f"{queries.shape}; was the {holder} built by another model?")
    if not np.isfinite(queries).all():
        raise UserError("query vectors contain NaN or infinite values.")
    return queries
