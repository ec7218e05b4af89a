"""`bench retrieval` protocols (random100 as specified, re-runs on saved lists) and degenerate models
scoring as such in every bench."""

import json
import math
from pathlib import Path

import pytest

from unifashion_core.config import VisionConfig
from unifashion_core.data.manifest import Item
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_cir import bench_cir
from unifashion_core.evaluation.bench_retrieval import (
    bench_retrieval,
    random100_candidates,
    same_category_share,
)
from unifashion_core.evaluation.reports import BenchReport
from unifashion_core.models.unifashion import UniFashion

TINY_BASELINE = VisionConfig(name="tiny", image_size=32)  # the default (EfficientNet-Lite0, 224 px) is slower


def _items(counts: dict[str, int]) -> list[Item]:
    return [Item(f"{category}-{n}", f"{category}-{n}.png", "test", f"{category} {n}", category=category)
            for category, count in counts.items() for n in range(count)]


def test_random100_draws_from_the_query_category_and_tops_up_small_ones():
    items = _items({"dress": 150, "shirt": 40, "skirt": 10})
    lists = random100_candidates(items, seed=3)
    assert all(c[0] == row and len(c) == 100 == len(set(c)) for row, c in enumerate(lists))
    category = [item.category for item in items]
    for row, candidates in enumerate(lists):
        negatives = [category[j] for j in candidates[1:]]
        own = sum(c == category[row] for c in negatives)
        # 149 other dresses: all 99 negatives are dresses; a shirt or skirt takes every other one of its own
        assert own == {"dress": 99, "shirt": 39, "skirt": 9}[category[row]]
    expected = (150 * 99 + 40 * 39 + 10 * 9) / (200 * 99)
    assert same_category_share(items, lists) == pytest.approx(expected)
    assert random100_candidates(items, seed=3) == lists and random100_candidates(items, seed=4) != lists


@pytest.fixture(scope="module")
def both(tiny_phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchReport:
    out = tmp_path_factory.mktemp("retrieval")
    return bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", out, baseline_vision=TINY_BASELINE)


def test_both_protocols_side_by_side_with_the_baseline(both):
    assert both["protocol"] == "full + random100"
    for name in ("full", "random100"):
        result = both["protocols"][name]
        assert result["model_minus_baseline_mean_R"] == pytest.approx(
            result["model"]["mean_R"] - result["baseline"]["mean_R"])
    random100 = both["protocols"]["random100"]
    assert random100["list_size"] == both["num_queries"]  # the tiny test split holds fewer than 100 items
    assert 0 < random100["same_category_share"] < 1


def test_candidates_file_reruns_the_same_lists(tiny_phase1, both, tmp_path):
    first = tmp_path / "first"
    bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", first, protocol="random100", seed=5,
                    baseline_vision=TINY_BASELINE)
    again = bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "again", protocol="random100",
                            seed=0, candidates=first / "candidates.json", baseline_vision=TINY_BASELINE)
    saved = json.loads((first / "candidates.json").read_text())
    assert json.loads((tmp_path / "again" / "candidates.json").read_text())["ids"] == saved["ids"]
    assert saved["ids"] != json.loads((both.out / "candidates.json").read_text())["ids"]  # seed 5, not 0
    first_report = json.loads((first / "report.json").read_text())["protocols"]["random100"]
    assert again["protocols"]["random100"]["model"] == first_report["model"]
    assert again["protocols"]["random100"]["candidates_source"].startswith("read from")
    saved["ids"][0][1] = "no-such-item"
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="not usable items"):
        bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "bad", protocol="random100",
                        candidates=tmp_path / "bad.json", baseline_vision=TINY_BASELINE)
    with pytest.raises(UserError, match="--candidates gives random100"):
        bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "bad", protocol="full",
                        candidates=first / "candidates.json")


@pytest.fixture(params=[0.0, math.nan], ids=["all-zero", "all-nan"])
def degenerate(request, monkeypatch) -> float:
    """Every embedding the model returns multiplied by 0 (all scores tie) or NaN."""
    for name in ("embed_images", "embed_texts", "embed_composed"):
        original = getattr(UniFashion, name)

        def scaled(self, *args, _original=original, **kwargs):
            return _original(self, *args, **kwargs) * request.param

        monkeypatch.setattr(UniFashion, name, scaled)
    return request.param


def test_a_degenerate_model_scores_zero_in_bench_retrieval(tiny_phase1, degenerate, tmp_path):
    report = bench_retrieval(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path, baseline_vision=TINY_BASELINE)
    for name in ("full", "random100"):
        assert set(report["protocols"][name]["model"].values()) == {0.0}, name


def test_a_degenerate_model_scores_zero_in_bench_cir(tiny_phase1, degenerate, tmp_path):
    report = bench_cir(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path, split="test")
    assert report["num_answerable"] == report["num_queries"] > 0
    # all-zero: every other gallery item ties with the target. R@50 is 1 only because the tiny
    # gallery holds fewer than 50 items (any ranking puts the target in the top 50): exact, not inflated.
    r50 = 1.0 if degenerate == 0.0 and report["num_gallery"] <= 50 else 0.0
    for setting in ("without_captions", "with_captions"):
        average = report["settings"][setting]["average"]
        assert average["R@10"] == 0.0 and average["R@50"] == r50, setting
    ranks = [json.loads(line)["rank"]["without_captions"] for line in (tmp_path / "queries.jsonl").open()]
    expected = report["num_gallery"] - 1 if degenerate == 0.0 else None
    assert set(ranks) == {expected}

