"""Composed image retrieval metrics (Fashion-IQ protocol, docs/design.md section 7).

Each labelled triplet is one query; its fused (reference image, modification text) embedding
ranks a gallery by the composed score ``max_q <e, z_q> [+ w <e, c>]`` (paper Table 4, "w/ cap"),
and R@K is the fraction of queries whose target is among the top K. A triplet whose reference or
target image is not in the gallery is a miss (rank ``inf``), never a dropped query.
"""

import math
from typing import Any

import numpy as np
import torch

from unifashion_core.data.manifest import Item, Triplet
from unifashion_core.losses import max_sim, pooled
from unifashion_core.metrics.retrieval import positive_ranks, recalls_from_ranks

KS = (10, 50)
TOP_LISTED = 10  # result rows kept per query for the queries.jsonl listing


def triplet_status(triplet: Triplet, rows: dict[str, int]) -> str:
    """``ok``, or why the triplet cannot be ranked: no_target, missing_reference, missing_target."""
    if not triplet.target:
        return "no_target"
    if triplet.reference not in rows:
        return "missing_reference"
    return "ok" if triplet.target in rows else "missing_target"


def composed_scores(
    fused: torch.Tensor, gallery: torch.Tensor, captions: torch.Tensor | None = None, caption_weight: float = 1.0
) -> torch.Tensor:
    """The composed score of every query against every gallery item (the exact "flat" index score).

    Args:
        fused: ``(M, D)`` fused query embeddings.
        gallery: ``(N, Q, D)`` gallery image query embeddings.
        captions: ``(N, D)`` gallery caption embeddings, or None for the image term alone.
        caption_weight: ``w`` of the caption term.

    Returns:
        ``(M, N)`` scores.
    """
    scores = max_sim(gallery, fused).T  # (M, N)
    if captions is None:
        return scores
    return scores + caption_weight * fused @ captions.T  # (M, N)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each query's target (``metrics.retrieval.positive_ranks``).

    Args:
        scores: ``(M, N)`` scores; excluded items hold ``-inf``.
        targets: ``(M,)`` target columns.

    Returns:
        ``(M,)`` float ranks: how many other gallery items score at least as high as the target
        or are NaN; ``inf`` when the target's score is not finite (e.g. the target is excluded).
    """
    positives = torch.zeros(scores.shape, dtype=torch.bool)
    positives[torch.arange(len(targets)), targets] = True
    return positive_ranks(scores, positives)


def recalls(ranks: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``R@k`` for each k: the fraction of ranks below k (a miss has rank ``inf``)."""
    return {f"R@{k}": value for k, value in recalls_from_ranks(ranks, ks).items()}


def allowed_items(triplets: list[Triplet], items: list[Item], rows: dict[str, int], exclude_reference: bool,
                  by_category: bool) -> torch.Tensor:
    """``(M, N)`` bool: which gallery items each query may retrieve."""
    allowed = torch.ones(len(triplets), len(items), dtype=torch.bool)
    if by_category:
        categories = np.array([item.category for item in items])
        for row, triplet in enumerate(triplets):
            allowed[row] = torch.from_numpy(categories == triplet.category)
    if exclude_reference:
        references = torch.tensor([rows[t.reference] for t in triplets], dtype=torch.long)
        allowed[torch.arange(len(triplets)), references] = False
    return allowed


def rank_targets(
    fused: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor,
    captions: torch.Tensor | None = None, caption_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the targets and each query's top gallery rows under the composed score.

    Args:
        fused: ``(M, D)`` fused embeddings of the answerable queries.
        gallery: ``(N, Q, D)`` gallery embeddings.
        targets: ``(M,)`` target rows.
        allowed: ``(M, N)`` which items each query may retrieve.
        captions: ``(N, D)`` gallery caption embeddings (the "w/ cap" score), or None.
        caption_weight: ``w`` of the caption term.

    Returns:
        ``(M,)`` ranks and ``(M, min(TOP_LISTED, N))`` top rows (-1 where nothing is allowed).
    """
    return rank_scored(composed_scores(fused, gallery, captions, caption_weight), targets, allowed)


def rank_scored(
    scores: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_targets` for ready ``(M, N)`` scores (e.g. :func:`zero_shot_scores`)."""
    scores = scores.masked_fill(~allowed, -math.inf)
    top_scores, top_rows = scores.topk(min(TOP_LISTED, scores.shape[1]), dim=1)  # (M, k)
    return target_ranks(scores, targets), top_rows.masked_fill(torch.isinf(top_scores), -1)


def zero_shot_scores(
    references: torch.Tensor, texts: torch.Tensor, gallery: torch.Tensor, image_weight: float
) -> torch.Tensor:
    """The zero-shot composed score: a late fusion that needs no composed training (docs/design.md section 5).

    ``image_weight * cos(pooled reference, pooled candidate) + (1 - image_weight) * max_q <z_q, t>``:
    image->image similarity of the pooled query embeddings plus text->image similarity of the
    modification text alone. ``image_weight`` 1 is image-only search, 0 text-only.

    Args:
        references: ``(M, Q, D)`` reference image embeddings.
        texts: ``(M, D)`` embeddings of the modification texts (the text mode).
        gallery: ``(N, Q, D)`` gallery image embeddings.
        image_weight: weight of the image term, in [0, 1].

    Returns:
        ``(M, N)`` scores.
    """
    image = pooled(references) @ pooled(gallery).T  # (M, N)
    text = max_sim(gallery.float(), texts.float()).T  # (M, N)
    return image_weight * image + (1.0 - image_weight) * text


def summary(triplets: list[Triplet], ranks: torch.Tensor) -> dict[str, Any]:
    """Per-category recalls and their average over categories (plus the mean of the recalls)."""
    per_category = {}
    for category in sorted({t.category for t in triplets}):
        selected = torch.tensor([t.category == category for t in triplets])
        per_category[category or "(none)"] = {**recalls(ranks[selected]), "num_queries": int(selected.sum())}
    average = {f"R@{k}": float(np.mean([c[f"R@{k}"] for c in per_category.values()])) for k in KS}
    average["mean"] = float(np.mean(list(average.values())))
    return {"per_category": per_category, "average": average}
