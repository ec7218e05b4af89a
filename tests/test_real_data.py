"""Long runs on real data and the demo (marked slow): the issues' "done when" figures, measured.

Run with: HF_HUB_OFFLINE=1 python -m pytest -q -m slow tests/test_real_data.py
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unifashion_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_small_preset_on_fashion_product_1k_against_same_run_baselines(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path))
    data = tmp_path / "data"
    _ok(["prepare", "fashion-product", "--root", str(shared_data / "fashion-product-1k"), "--out", str(data), "-q"])
    _ok(["train", str(ROOT / "recipes" / "fashion-product.yaml"), "--out", str(tmp_path / "run"), "-q"])
    report = json.loads(_ok(["bench", "retrieval", "--json", "-q"]))  # full and random100, test split
    assert report["num_queries"] == 200
    for result in report["protocols"].values():
        assert result["model"]["mean_R"] > result["baseline"]["mean_R"]
    captions = json.loads(_ok(["bench", "caption", "--json", "-q"]))
    assert {"CIDEr", "BLEU-4"} <= captions["model"].keys() and "CIDEr" in captions["baseline"]


@pytest.mark.slow
def test_demo_retrieval_reaches_the_issue_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path))
    _ok(["prepare", "demo", "--out", str(tmp_path / "data"), "-q"])
    _ok(
        ["train", str(ROOT / "recipes" / "demo.yaml"), "train.stages=[retrieval]", "--out", str(tmp_path / "run"), "-q"]
    )
    report = json.loads(_ok(["bench", "retrieval", "--protocol", "full", "--json", "-q"]))
    assert report["protocols"]["full"]["model"]["t2i_R@10"] >= 0.90
    assert report["protocols"]["full"]["model"]["i2t_R@10"] >= 0.90
    queries = json.loads(_ok(["bench", "queries", "--json", "-q"]))  # issue 15: short queries
    assert all(figures["P@5"] >= 0.90 for figures in queries["shapes"]["model"].values()), queries["shapes"]
