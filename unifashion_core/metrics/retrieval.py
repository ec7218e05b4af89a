"""Recall@K for retrieval, from a score matrix and the positives of each query.

Ranking is pessimistic, so that a degenerate model scores as one: a query's rank is the number of
non-positive candidates that score *at least as high* as its best positive (a tie counts against
the query), a candidate whose score is NaN counts against it too, and a query whose positives
have no finite score is a miss (rank ``inf``). An all-zero or all-NaN score matrix therefore gives
R@k = 0 whenever a query has at least k non-positive candidates. Excluded candidates hold
``-inf`` and never count.
"""

import math

import numpy as np
import torch

KS = (1, 5, 10)


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each query's best positive.

    Args:
        scores: ``(M, N)`` scores, higher is better; ``-inf`` marks an excluded candidate.
        positives: ``(M, N)`` bool, the candidates that count as correct for each query.

    Returns:
        ``(M,)`` float ranks: how many non-positive candidates score >= the best finite positive
        score or are NaN; ``inf`` when no positive has a finite score.
    """
    scores = scores.float()
    finite_positives = positives & torch.isfinite(scores)  # (M, N)
    best = torch.where(finite_positives, scores, -math.inf).amax(dim=1, keepdim=True)  # (M, 1)
    against = ((scores >= best) | torch.isnan(scores)) & ~positives  # (M, N)
    ranks = against.sum(dim=1).float()  # (M,)
    return torch.where(finite_positives.any(dim=1), ranks, math.inf)


def recalls_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of queries ranked below k, for each k (0.0 when there are no queries)."""
    return {k: float((ranks < k).float().mean()) if len(ranks) else 0.0 for k in ks}


def recall_at_k(
    scores: np.ndarray | torch.Tensor, positives: list[set[int]] | torch.Tensor, ks: tuple[int, ...] = KS
) -> dict[int, float]:
    """Fraction of queries with at least one positive among the top k (pessimistic ties).

    Args:
        scores: ``(num_queries, num_candidates)`` similarities, higher is better.
        positives: for each query, the candidate columns that count as correct, or an
            ``(num_queries, num_candidates)`` bool mask.
        ks: the cut-offs.
    """
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if not isinstance(positives, torch.Tensor):
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        for row, wanted in enumerate(positives):
            mask[row, list(wanted)] = True
        positives = mask
    return recalls_from_ranks(positive_ranks(scores, positives), ks)


def _both_ways(i2t: dict[int, float], t2i: dict[int, float], ks: tuple[int, ...]) -> dict[str, float]:
    result = {f"i2t_R@{k}": i2t[k] for k in ks} | {f"t2i_R@{k}": t2i[k] for k in ks}
    result["mean_R"] = float(np.mean(list(result.values())))
    return result


def cross_modal_recalls(sim_i2t: np.ndarray | torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """R@k both ways for a square image x text similarity matrix whose diagonal pairs match."""
    sim = torch.as_tensor(np.asarray(sim_i2t, dtype=np.float32))
    diagonal = torch.eye(sim.shape[0], dtype=torch.bool)
    return _both_ways(recall_at_k(sim, diagonal, ks), recall_at_k(sim.T, diagonal, ks), ks)


def paired_recalls(sim: np.ndarray, texts: list[str], candidates: list[list[int]] | None = None) -> dict[str, float]:
    """R@k both ways for N images and their N texts; identical texts count as positives.

    Args:
        sim: ``(N, N)`` image x text similarity; image i and text i are a pair.
        texts: the N texts (items sharing a text cannot be told apart, so each is a positive).
        candidates: per query, the columns it ranks, all lists of one length (``random100``);
            None ranks all N.
    """
    sim = torch.as_tensor(np.asarray(sim, dtype=np.float32))
    labels = torch.from_numpy(np.unique(np.asarray(texts, dtype=object), return_inverse=True)[1].reshape(-1))
    if candidates is None:
        positives = labels[None, :] == labels[:, None]  # (N, N)
        return _both_ways(recall_at_k(sim, positives), recall_at_k(sim.T, positives), KS)
    columns = torch.tensor(candidates, dtype=torch.long)  # (N, C)
    queries = torch.arange(len(texts))[:, None]  # (N, 1)
    positives = labels[columns] == labels[queries]  # (N, C)
    i2t = recall_at_k(sim[queries, columns], positives)  # image query vs the candidates' texts
    t2i = recall_at_k(sim.T[queries, columns], positives)  # text query vs the candidates' images
    return _both_ways(i2t, t2i, KS)
