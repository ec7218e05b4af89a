"""`bench cir` (Recall@10/50 per category, no dropped queries) and the Base/+LLM/+diffusion ablation."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.checkpoint import read_meta
from unifashion_core.config import load_recipe
from unifashion_core.data.manifest import load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.ablation import run_ablation
from unifashion_core.evaluation.bench_cir import bench_cir
from unifashion_core.metrics.cir import composed_scores
from unifashion_core.retrieval.index import IndexWriter

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tiny_phase1: Path) -> Path:
    """The shared tiny phase-1 run (tests/conftest.py)."""
    return tiny_phase1


@pytest.fixture(scope="module")
def report(workdir: Path) -> dict:
    return bench_cir(workdir / "phase1" / "checkpoint", workdir / "data", workdir / "bench", split="test").data


def read_queries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]


def test_recalls_per_category_average_over_categories(workdir, report):
    dataset = load_dataset(workdir / "data")
    queries = read_queries(workdir / "bench")
    assert report["num_queries"] == len(dataset.split_triplets("test")) == len(queries)
    assert report["manifest_sha256"] == dataset.manifest_hash and report["seed"] == 0
    assert report["checkpoint_fingerprint"] == read_meta(workdir / "phase1" / "checkpoint")["fingerprint"]
    assert "reference kept" in report["protocol"]
    for setting in ("without_captions", "with_captions"):
        per_category = report["settings"][setting]["per_category"]
        assert len(per_category) >= 2
        for category, values in per_category.items():
            assert 0 <= values["R@10"] <= values["R@50"] <= 1
            ranks = [q["rank"][setting] for q in queries if q["category"] == category]
            assert values["num_queries"] == len(ranks)
            assert values["R@10"] == pytest.approx(np.mean([r is not None and r < 10 for r in ranks]))
        average = report["settings"][setting]["average"]
        for k in ("R@10", "R@50"):
            assert average[k] == pytest.approx(np.mean([v[k] for v in per_category.values()]))
    assert "**average**" in (workdir / "bench" / "report.md").read_text()
    assert len((workdir / "bench" / "gallery_captions.jsonl").read_text().splitlines()) == report["num_gallery"]


def test_composed_scores_match_the_flat_index(tmp_path):
    """Parity: the bench's dense score equals RetrievalIndex.search_composed on the same vectors."""
    rng = np.random.default_rng(0)

    def unit(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape).astype(np.float32)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)

    image, text, caption = unit(40, 4, 16), unit(40, 16), unit(40, 16)
    writer = IndexWriter(tmp_path / "index", {"fingerprint": "f"})
    writer.add([f"i{n}" for n in range(40)], image, text, caption, [f"c{n}" for n in range(40)])
    index = writer.finalize("flat")
    fused = unit(3, 16)
    for captions in (None, caption):
        expected = composed_scores(torch.from_numpy(fused), torch.from_numpy(image),
                                   None if captions is None else torch.from_numpy(captions), 0.7).numpy()
        scores, rows = index.search_composed(fused, k=40, caption_weight=0.7, use_captions=captions is not None)
        np.testing.assert_allclose(scores, np.take_along_axis(expected, rows, axis=1), atol=1e-5)


def test_excluding_the_reference_never_ranks_it(workdir, report, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(workdir / "ws"))
    result = runner.invoke(app, ["bench", "cir", "--checkpoint", str(workdir / "phase1"), "--data",
                                 str(workdir / "data"), "--out", str(tmp_path), "--exclude-reference",
                                 "--no-captions", "--json", "-q"])
    assert result.exit_code == 0, result.output
    excluded = json.loads(result.stdout)
    assert excluded["protocol_options"]["exclude_reference"] and list(excluded["settings"]) == [
        "without_captions", "zero_shot", "image_only", "text_only"]
    kept = read_queries(workdir / "bench")
    for query, base in zip(read_queries(tmp_path), kept, strict=True):
        assert query["reference"] not in query["top"]["without_captions"]
        assert len(query["top"]["without_captions"]) == 10
        assert base["rank"]["without_captions"] - query["rank"]["without_captions"] in (0, 1)
    assert any(q["reference"] in q["top"]["without_captions"] for q in kept)  # it does rank when kept


def test_category_gallery_only_ranks_the_query_category(workdir, tmp_path):
    result = bench_cir(workdir / "phase1", workdir / "data", tmp_path, gallery="category", use_captions=False)
    assert result["protocol_options"]["gallery"] == "category"
    category = {item.id: item.category for item in load_dataset(workdir / "data").items}
    for query in read_queries(tmp_path):
        assert {category[i] for i in query["top"]["without_captions"]} <= {query["category"]}


def test_missing_images_are_misses_not_dropped_queries(workdir, report, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(workdir / "ws"))
    data = tmp_path / "data"
    shutil.copytree(workdir / "data", data)
    records = [json.loads(line) for line in (data / "triplets.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test"]
    test[0]["target"], test[1]["reference"] = "demo-gone", "demo-gone-too"
    (data / "triplets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    damaged = bench_cir(workdir / "phase1", data, tmp_path / "bench", split="test", use_captions=False)
    assert damaged["unanswerable"] == {"missing_reference": 1, "missing_target": 1}
    assert damaged["num_queries"] == report["num_queries"] and damaged["num_answerable"] == report["num_queries"] - 2
    by_id = {q["id"]: q for q in read_queries(tmp_path / "bench")}
    assert by_id[test[0]["id"]]["rank"]["without_captions"] is None
    assert by_id[test[1]["id"]]["status"] == "missing_reference"
    per_category = damaged["settings"]["without_captions"]["per_category"].values()
    hits_at_50 = sum(round(c["R@50"] * c["num_queries"]) for c in per_category)
    assert hits_at_50 == damaged["num_queries"] - 2  # the gallery has < 50 items: every other query hits
    for record in records:
        record["target"] = ""
    (data / "triplets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match="--split val"):
        bench_cir(workdir / "phase1", data, tmp_path / "none", use_captions=False)


def test_gallery_captions_need_a_caption_head(workdir, tmp_path):
    headless = tmp_path / "headless"
    shutil.copytree(workdir / "phase1" / "checkpoint", headless)
    meta = json.loads((headless / "meta.json").read_text())
    (headless / "meta.json").write_text(json.dumps({**meta, "heads": ["generate"]}))
    with pytest.raises(UserError, match="--no-captions"):
        bench_cir(headless, workdir / "data", tmp_path / "bench")
    with pytest.raises(UserError, match="caption and generate heads"):
        run_ablation(load_recipe(TINY), headless, workdir / "data", tmp_path / "ablation")


def test_ablation_three_variants_with_and_without_captions(workdir, tmp_path):
    recipe = load_recipe(TINY, ["train.phase2.max_steps=1", "train.phase2.batch_size=8"])
    result = run_ablation(recipe, workdir / "phase1", workdir / "data", tmp_path)
    variants = result["variants"]
    assert list(variants) == ["Base", "+LLM", "+LLM+diffusion"]
    assert [v["terms"] for v in variants.values()] == [["cir"], ["cir", "itg"], ["cir", "itg", "q2i"]]
    assert all(set(v["settings"]) == {"without_captions", "with_captions"} for v in variants.values())
    assert len({v["checkpoint_fingerprint"] for v in variants.values()}) == 3
    assert result["checkpoint_fingerprint"] == read_meta(workdir / "phase1" / "checkpoint")["fingerprint"]
    table = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| +") or
             line.startswith("| Base")]
    assert len(table) == 6
    assert json.loads((tmp_path / "report.json").read_text())["variants"].keys() == variants.keys()


def test_fashioniq_caption_files_every_triplet_asked_and_accounted_for(shared_data, workdir, tmp_path):
    """The real Fashion-IQ caption files without images: all 30,134 triplets kept; val all misses."""
    from unifashion_core.data.prepare import prepare

    root = shared_data / "fashion-iq-text"
    if not root.is_dir():
        pytest.skip("fashion-iq-text is not present")
    prepare("fashioniq", tmp_path / "fiq", root=root)
    report = bench_cir(workdir / "phase1", tmp_path / "fiq", tmp_path / "bench", split="val")
    assert report["num_queries"] == 6016 and report["num_answerable"] == 0 and report["num_gallery"] == 0
    assert report["unanswerable"] == {"missing_reference": 6016, "missing_target": 0}
    for summary in report["settings"].values():
        assert summary["average"]["R@10"] == summary["average"]["R@50"] == 0.0
        assert sum(c["num_queries"] for c in summary["per_category"].values()) == 6016
    assert len(read_queries(tmp_path / "bench")) == 6016
    accounted = report["dataset_triplets"]
    assert {split: counts["num_read"] for split, counts in accounted.items()} == \
        {"train": 18000, "val": 6016, "test": 6118}
    assert sum(counts["num_triplets"] for counts in accounted.values()) == 30134
    with pytest.raises(UserError, match="--split val"):  # the official test split has no targets
        bench_cir(workdir / "phase1", tmp_path / "fiq", tmp_path / "test", split="test")
