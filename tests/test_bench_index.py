"""`unifashion bench index` on a tiny synthetic catalogue: builds and queries in fresh processes,
reports what the issue's table needs, and its recall is measured against the exact scores."""

import json

import numpy as np
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.evaluation.bench_index import MODES, SyntheticCatalogue, generate_vectors, make_queries

runner = CliRunner()


def test_synthetic_vectors_are_seeded_unit_and_clustered(tmp_path):
    catalogue = SyntheticCatalogue(num_items=300, num_queries=4, dim=16, seed=3)
    generate_vectors(catalogue, tmp_path / "a")
    generate_vectors(catalogue, tmp_path / "b")
    image = np.load(tmp_path / "a" / "image.npy")
    assert image.shape == (300, 4, 16) and image.dtype == np.float16
    np.testing.assert_array_equal(image, np.load(tmp_path / "b" / "image.npy"))
    np.testing.assert_allclose(np.linalg.norm(image.astype(np.float32), axis=-1), 1, atol=2e-3)
    queries = make_queries(catalogue, tmp_path / "a", sample=20)
    assert queries["t2i"].shape == (20, 16) and queries["i2t"].shape == (20, 4, 16)
    own = np.einsum("md,mqd->mq", queries["t2i"], image[queries["targets"]].astype(np.float32)).max(1)
    other = np.einsum("md,nqd->mnq", queries["t2i"], image.astype(np.float32)).max(2).mean(1)
    assert (own > other).all() and own.mean() > other.mean() + 0.3  # a noisy copy of its target's vector


def test_bench_index_reports_build_memory_latency_and_recall(tmp_path):
    result = runner.invoke(app, ["bench", "index", "--items", "2000", "--queries", "4", "--dim", "16", "--sample",
                                 "20", "--kind", "flat,pq", "--out", str(tmp_path), "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["bench"] == "index" and report["num_queries"] == 20 and len(report["manifest_sha256"]) == 64
    assert report["catalogue"]["num_items"] == 2000 and report["machine"]["load_average_before"]
    flat, pq = report["rows"]
    for row in (flat, pq):
        assert row["build_s"] > 0 and row["disk_mb"] > 0 and row["build_peak_rss_mb"] > 0
        assert row["search_peak_rss_mb"] > 0
        for mode in MODES:
            assert row[mode]["p50_ms"] > 0 and row[mode]["batched_qps"] > 0
            assert row[mode]["p95_ms"] >= row[mode]["p50_ms"]
    assert all(flat[mode]["recall@10"] == 1.0 for mode in MODES)  # flat is the exact reference
    assert all(pq[mode]["recall@10"] >= 0.9 for mode in MODES)
    assert flat["t2i"]["target@10"] >= 0.5 and 0 <= flat["i2t"]["target@10"] <= 1  # D = 16: noisy copies
    assert "image.pq" in pq["files_mb"] and "image.pq" not in flat["files_mb"]
    assert pq["ann"]["image"]["ntotal"] == 2000
    assert not (tmp_path / "work").exists()
    markdown = (tmp_path / "report.md").read_text()
    assert "| 2,000 | pq |" in markdown and "recall@10" in markdown
    bad = runner.invoke(app, ["bench", "index", "--items", "2000", "--kind", "ivfpq", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown index kind 'ivfpq'" in bad.output
