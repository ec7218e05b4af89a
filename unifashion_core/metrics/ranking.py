"""Precision@k and nDCG@k for queries with many relevant items, expected over ties.

Items with equal scores are ranked in a random order, and the metrics are their expectation over
that order (not whatever order a sort happens to leave), so a model that gives every item the
same score scores exactly as a random ranking would.
"""

import numpy as np


def _tied_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the items of one query by score, best first: group of each item and group sizes."""
    unique, group = np.unique(-scores, return_inverse=True)  # group 0 holds the highest score
    return group, np.bincount(group, minlength=len(unique))


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Expected fraction of the top ``k`` that is relevant, out of ``min(k, relevant items)``.

    The denominator is capped so that a query with fewer than ``k`` relevant items can still
    reach 1.

    Args:
        scores: ``(M, N)`` query x item scores, higher is better.
        relevant: ``(M, N)`` bool; every query needs at least one relevant item.
        k: the cut-off.

    Returns:
        ``(M,)`` precisions in [0, 1].
    """
    result = np.empty(len(scores))
    for row, (row_scores, row_relevant) in enumerate(zip(scores, relevant, strict=True)):
        group, sizes = _tied_groups(row_scores)
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # first position of each group
        taken = np.clip(k - start, 0, sizes) / sizes  # share of each group inside the top k
        hits = np.bincount(group, weights=row_relevant.astype(float), minlength=len(sizes))
        result[row] = (hits * taken).sum() / min(k, int(row_relevant.sum()))
    return result


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Expected normalised discounted cumulative gain at ``k`` with binary relevance.

    A group of tied items spread over positions ``[a, b)`` gives each of its relevant items the
    mean discount ``1 / log2(position + 2)`` over those positions (0 beyond ``k``).

    Args:
        scores: ``(M, N)`` query x item scores, higher is better.
        relevant: ``(M, N)`` bool; every query needs at least one relevant item.
        k: the cut-off.

    Returns:
        ``(M,)`` nDCG values in [0, 1].
    """
    num_items = scores.shape[1]
    discount = np.where(np.arange(num_items) < k, 1.0 / np.log2(np.arange(num_items) + 2.0), 0.0)  # (N,)
    cumulative = np.concatenate([[0.0], np.cumsum(discount)])  # (N + 1,)
    result = np.empty(len(scores))
    for row, (row_scores, row_relevant) in enumerate(zip(scores, relevant, strict=True)):
        group, sizes = _tied_groups(row_scores)
        end = np.cumsum(sizes)
        mean_discount = (cumulative[end] - cumulative[end - sizes]) / sizes  # per group
        hits = np.bincount(group, weights=row_relevant.astype(float), minlength=len(sizes))
        ideal = cumulative[min(k, int(row_relevant.sum()), num_items)]
        result[row] = (hits * mean_discount).sum() / ideal
    return result
