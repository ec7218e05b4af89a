"""Recall@K on hand-made score matrices: ties count against, NaN is a miss, parity with torchmetrics."""

import math

import numpy as np
import pytest
import torch

from unifashion_core.metrics import cir
from unifashion_core.metrics.retrieval import cross_modal_recalls, paired_recalls, positive_ranks, recall_at_k

NAN = math.nan


def test_ties_with_a_non_positive_count_against_the_query():
    scores = torch.tensor([[0.5, 0.5, 0.1, 0.0],   # positive 0 tied with 1: rank 1
                           [0.2, 0.9, 0.9, 0.9],   # positive 1 tied with 2 and 3: rank 2
                           [0.0, 0.0, 0.7, 0.1]])  # positive 2 alone on top: rank 0
    positives = torch.eye(3, 4, dtype=torch.bool)
    assert positive_ranks(scores, positives).tolist() == [1.0, 2.0, 0.0]
    assert recall_at_k(scores, [{0}, {1}, {2}], ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3),
                                                                   3: 1.0}


def test_nan_scores_are_misses_and_count_against():
    scores = torch.tensor([[NAN, 0.1, 0.2],    # positive NaN: a miss
                           [0.1, 0.5, NAN],    # a NaN candidate ranks above the positive
                           [0.1, 0.2, math.inf]])  # an infinite positive is not a score either
    ranks = positive_ranks(scores, torch.eye(3, dtype=torch.bool))
    assert math.isinf(ranks[0]) and ranks[1] == 1 and math.isinf(ranks[2])


def test_several_positives_rank_by_the_best_one_and_do_not_count_against_each_other():
    scores = torch.tensor([[0.9, 0.8, 0.95, 0.1, NAN]])
    positives = torch.tensor([[True, True, False, False, True]])  # a NaN positive is ignored
    assert positive_ranks(scores, positives).tolist() == [1.0]  # only the 0.95 non-positive is above
    assert recall_at_k(scores, [{0, 1, 4}], ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_degenerate_matrices_give_zero_recall():
    for value in (0.0, NAN):
        scores = torch.full((30, 30), value)
        assert set(recall_at_k(scores, [{i} for i in range(30)], ks=(1, 5, 10)).values()) == {0.0}
        assert {v for k, v in cross_modal_recalls(scores).items()} == {0.0}
        assert set(paired_recalls(scores.numpy(), [f"t{i}" for i in range(30)]).values()) == {0.0}
        ranks = cir.target_ranks(scores, torch.arange(30))
        assert cir.recalls(ranks, ks=(10, 20)) == {"R@10": 0.0, "R@20": 0.0}


def test_the_tie_aware_rank_is_exact_when_all_candidates_fit_in_k():
    """With no more than k candidates every ranking holds the positive: R@k = 1 is not inflated."""
    ranks = cir.target_ranks(torch.zeros(4, 8), torch.arange(4))
    assert ranks.tolist() == [7.0] * 4
    assert cir.recalls(ranks, ks=(5, 10)) == {"R@5": 0.0, "R@10": 1.0}


def test_an_excluded_reference_never_counts_and_an_excluded_target_is_a_miss():
    scores = torch.tensor([[0.9, 0.5, 0.4], [0.9, 0.5, 0.4]])
    allowed = torch.tensor([[False, True, True], [True, True, False]])  # row 0 drops its reference 0
    masked = scores.masked_fill(~allowed, -math.inf)
    ranks = cir.target_ranks(masked, torch.tensor([1, 2]))  # row 1's target 2 is excluded
    assert ranks[0] == 0 and math.isinf(ranks[1])


def test_paired_recalls_count_identical_texts_as_positives():
    sim = np.array([[0.1, 0.9, 0.2], [0.1, 0.9, 0.0], [0.2, 0.0, 0.2]], dtype=np.float32)  # image x text
    texts = ["red shirt", "red shirt", "blue dress"]
    result = paired_recalls(sim, texts)
    # images: 0's best text is text 1, identical to its own (hit); 1 hits; 2's own text ties with text 0
    assert result["i2t_R@1"] == pytest.approx(2 / 3)
    # texts: image 2 outscores both "red shirt" images for text 0; text 1 hits; text 2 ties image 0
    assert result["t2i_R@1"] == pytest.approx(1 / 3)
    with_lists = paired_recalls(sim, texts, [[0, 2], [1, 2], [2, 0]])
    assert with_lists["i2t_R@1"] == pytest.approx(1 / 3)  # image 0 no longer sees text 1, and text 2 beats text 0
    assert with_lists["t2i_R@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("num_positives", [1, 3])
def test_parity_with_torchmetrics_retrieval_recall(num_positives):
    """Untied scores: R@k equals torchmetrics' RetrievalRecall (one positive) and RetrievalHitRate."""
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

    generator = torch.Generator().manual_seed(num_positives)
    scores = torch.randn(40, 60, generator=generator)
    positives = torch.zeros(40, 60, dtype=torch.bool)
    for row in range(40):
        positives[row, torch.randperm(60, generator=generator)[:num_positives]] = True
    ours = recall_at_k(scores, positives, ks=(1, 5, 10))
    indexes = torch.arange(40)[:, None].expand(40, 60)
    for k in (1, 5, 10):
        metric = RetrievalHitRate(top_k=k) if num_positives > 1 else RetrievalRecall(top_k=k)
        expected = metric(scores.flatten(), positives.flatten(), indexes=indexes.flatten())
        assert ours[k] == pytest.approx(float(expected), abs=1e-6)


def test_candidate_lists_holding_everything_equal_the_full_protocol():
    generator = torch.Generator().manual_seed(0)
    sim = torch.randn(12, 12, generator=generator).numpy()
    texts = [f"text {i % 9}" for i in range(12)]  # three texts shared by two items
    everything = [[q, *(j for j in range(12) if j != q)] for q in range(12)]
    assert paired_recalls(sim, texts, everything) == pytest.approx(paired_recalls(sim, texts))
