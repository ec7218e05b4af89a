"""Recall@K for cross-modal retrieval, from a similarity matrix and the positives of each query."""

import numpy as np
import torch

KS = (1, 5, 10)


def recall_at_k(
    scores: np.ndarray | torch.Tensor, positives: list[set[int]], ks: tuple[int, ...] = KS
) -> dict[int, float]:
    """Fraction of queries with at least one positive among the top k.

    Args:
        scores: (num_queries, num_candidates) similarities, higher is better.
        positives: for each query, the candidate columns that count as correct.
    """
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    hits = {k: 0 for k in ks}
    for row, wanted in enumerate(positives):
        # rank of the best positive = number of candidates scoring strictly higher
        best = max(scores[row, list(wanted)].tolist())
        rank = int((scores[row] > best).sum())
        for k in ks:
            hits[k] += rank < k
    return {k: hits[k] / max(len(positives), 1) for k in ks}


def cross_modal_recalls(sim_i2t: np.ndarray | torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """R@k both ways for a square image x text similarity matrix whose diagonal pairs match."""
    sim = torch.as_tensor(np.asarray(sim_i2t, dtype=np.float32))
    diagonal = [{i} for i in range(sim.shape[0])]
    i2t = recall_at_k(sim, diagonal, ks)
    t2i = recall_at_k(sim.T, diagonal, ks)
    result = {f"i2t_R@{k}": i2t[k] for k in ks} | {f"t2i_R@{k}": t2i[k] for k in ks}
    result["mean_R"] = float(np.mean(list(result.values())))
    return result


def paired_recalls(sim: np.ndarray, texts: list[str], candidates: list[list[int]] | None = None) -> dict[str, float]:
    """R@k both ways for N images and their N texts; identical texts count as positives.

    Args:
        sim: ``(N, N)`` image x text similarity; image i and text i are a pair.
        texts: the N texts (items sharing a text cannot be told apart, so each is a positive).
        candidates: per query, the columns it ranks (``random100``); None ranks all N.
    """
    n = len(texts)
    rows_i2t, rows_t2i, positives = [], [], []
    for query in range(n):
        columns = candidates[query] if candidates is not None else list(range(n))
        positives.append({c for c, j in enumerate(columns) if texts[j] == texts[query]})
        rows_i2t.append(sim[query, columns])
        rows_t2i.append(sim[columns, query])
    i2t = recall_at_k(np.stack(rows_i2t), positives)
    t2i = recall_at_k(np.stack(rows_t2i), positives)
    result = {f"i2t_R@{k}": i2t[k] for k in KS} | {f"t2i_R@{k}": t2i[k] for k in KS}
    result["mean_R"] = float(np.mean(list(result.values())))
    return result
