"""What a shopper types into `unifashion search`: composed search before phase 2 (the zero-shot late
fusion), queries with nothing to search for, scripts the tokenizer cannot read, and the contact sheet."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.images import open_image
from unifashion_core.data.manifest import load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_cir import bench_cir
from unifashion_core.losses import max_sim, pooled
from unifashion_core.metrics.cir import zero_shot_scores
from unifashion_core.models.vision import preprocess
from unifashion_core.retrieval.build import build_index
from unifashion_core.retrieval.query_text import check_query_words, tokenizer_warnings
from unifashion_core.retrieval.search import SearchResult, composed_score, contact_sheet, load_searcher, search

runner = CliRunner()


@pytest.fixture(scope="module")
def indexed(tiny_phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny phase-1 run with an index of its test split."""
    index = tmp_path_factory.mktemp("zero-shot") / "index"
    build_index(tiny_phase1 / "phase1" / "checkpoint", tiny_phase1 / "data", index)
    return index


def test_zero_shot_score_is_the_weighted_sum_of_its_halves():
    gallery = torch.nn.functional.normalize(torch.randn(7, 3, 16), dim=-1)
    references, texts = gallery[[2, 5]], torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    image = pooled(references) @ pooled(gallery).T
    text = max_sim(gallery, texts).T
    assert torch.allclose(zero_shot_scores(references, texts, gallery, 1.0), image)
    assert torch.allclose(zero_shot_scores(references, texts, gallery, 0.0), text)
    assert torch.allclose(zero_shot_scores(references, texts, gallery, 0.3), 0.3 * image + 0.7 * text)
    assert zero_shot_scores(references, texts, gallery, 1.0)[0].argmax() == 2  # the reference itself


def test_a_phase1_index_answers_composed_queries_zero_shot(tiny_phase1, indexed):
    checkpoint = tiny_phase1 / "phase1" / "checkpoint"
    assert composed_score("auto", indexed, None) == "zero-shot"
    assert composed_score("fused", indexed, None) == "fused"
    with pytest.raises(UserError, match="unknown composed score"):
        composed_score("late", indexed, None)
    model, index = load_searcher(indexed, None)
    base = index.base  # the live catalogue of a fresh index: its rows are the base index's
    reference = base.ids[3]
    dataset = load_dataset(tiny_phase1 / "data")
    image_path = dataset.image_path(dataset.by_id()[reference])
    results = search(model, index, text="is red", image=image_path, k=5, composed="zero-shot", image_weight=0.4)
    # parity: the same score computed densely from the index's stored vectors
    loaded = load_checkpoint(checkpoint)
    gallery = torch.from_numpy(np.asarray(base.image_vectors, dtype=np.float32))
    tokens = loaded.model.image_tokens(preprocess([open_image(image_path)], loaded.model.vision))
    expected = zero_shot_scores(loaded.model.embed_images(tokens), loaded.model.embed_texts(["is red"]), gallery, 0.4)
    top = expected[0].topk(5)
    assert [r.id for r in results] == [base.ids[j] for j in top.indices.tolist()]
    assert [r.score for r in results] == pytest.approx(top.values.tolist(), abs=1e-5)
    image_only = search(model, index, text="is red", image=image_path, k=1, composed="zero-shot", image_weight=1.0)
    assert image_only[0].id == reference  # an indexed image is its own nearest neighbour


def test_search_cli_says_which_composed_score_it_used(tiny_phase1, indexed, monkeypatch, tmp_path):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    image = next(iter((tiny_phase1 / "data" / "images").iterdir()))
    args = ["search", "--index", str(indexed), "--image", str(image), "--text", "is red", "-k", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "composed score: zero-shot late fusion, 0.4 x image->image + 0.6 x text->image" in result.output
    forced = runner.invoke(app, [*args, "--composed", "fused", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["composed_score"] == "fused"


def test_the_recipe_chooses_the_zero_shot_image_weight(tiny_phase1, indexed, monkeypatch, tmp_path):
    """A checkpoint whose recipe sets ``model.zero_shot_image_weight`` is searched and benched with it."""
    checkpoint = tmp_path / "weighted"
    shutil.copytree(tiny_phase1 / "phase1" / "checkpoint", checkpoint)
    config = checkpoint / "config.yaml"
    text = config.read_text()
    assert "\n  zero_shot_image_weight: 0.4\n" in text  # the default, written with the rest of the recipe
    config.write_text(text.replace("\n  zero_shot_image_weight: 0.4\n", "\n  zero_shot_image_weight: 0.7\n"))
    assert load_checkpoint(checkpoint).model.config.zero_shot_image_weight == 0.7
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    image = next(iter((tiny_phase1 / "data" / "images").iterdir()))
    args = ["search", "--index", str(indexed), "--checkpoint", str(checkpoint), "--image", str(image),
            "--text", "is red", "-k", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0.7 x image->image + 0.3 x text->image" in result.output
    told = runner.invoke(app, [*args, "--image-weight", "0.2"])
    assert "0.2 x image->image + 0.8 x text->image" in told.output
    report = bench_cir(checkpoint, tiny_phase1 / "data", tmp_path / "bench", use_captions=False).data
    assert report["protocol_options"]["zero_shot_image_weight"] == 0.7
    assert report["protocol_options"]["zero_shot_image_weight_from"] == "the checkpoint's model.zero_shot_image_weight"
    model, index = load_searcher(indexed, checkpoint)
    ours = search(model, index, text="is red", image=image, k=5, composed="zero-shot")
    explicit = search(model, index, text="is red", image=image, k=5, composed="zero-shot", image_weight=0.7)
    assert [r.id for r in ours] == [r.id for r in explicit]
    # the scores, not only the order, are those of 0.7 (a top 5 may hold its order at another weight)
    assert [r.score for r in ours] == pytest.approx([r.score for r in explicit], abs=1e-6)
    default = search(model, index, text="is red", image=image, k=5, composed="zero-shot", image_weight=0.4)
    assert [r.score for r in ours] != pytest.approx([r.score for r in default], abs=1e-6)


def test_bench_cir_reports_zero_shot_next_to_its_halves_and_chance(tiny_phase1, tmp_path):
    report = bench_cir(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path, use_captions=False,
                       image_weight=0.7).data
    assert list(report["settings"]) == ["without_captions", "zero_shot", "image_only", "text_only"]
    assert report["protocol_options"]["zero_shot_image_weight"] == 0.7
    assert report["protocol_options"]["zero_shot_image_weight_from"] == "--image-weight"
    assert report["chance"]["R@10"] == pytest.approx(min(1.0, 10 / report["num_gallery"]))
    queries = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    # image-only ranks the reference (cosine 1 with itself) first, or level with a near-duplicate
    assert all(q["reference"] in q["top"]["image_only"][:3] for q in queries)
    assert "zero_shot = 0.7 x image->image + 0.3 x text->image" in (tmp_path / "report.md").read_text()
    with pytest.raises(UserError, match="--image-weight"):
        bench_cir(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path, use_captions=False, image_weight=1.5)


# --- query texts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["the and of", "please show me something", "Looking for... any?"])
def test_a_query_of_only_stop_words_is_refused(text):
    with pytest.raises(UserError, match="only stop words"):
        check_query_words(text)


def test_content_words_pass_the_stop_word_check():
    for text in ("blue dress", "a top please", "long-sleeve shirt for men"):
        check_query_words(text)


@pytest.fixture(scope="module")
def tokenizer(tiny_phase1):
    return load_checkpoint(tiny_phase1 / "phase1").model.tokenizer


def test_unreadable_scripts_are_refused_and_partly_readable_queries_warned(tokenizer):
    for text in ("红色连衣裙", "ชุดสีแดง", "🔥👗"):
        with pytest.raises(UserError, match="tokenizer cannot read"):
            tokenizer_warnings(tokenizer, text)
    assert tokenizer_warnings(tokenizer, "red dress") == []
    (partly,) = tokenizer_warnings(tokenizer, "red 连衣裙")
    assert "连衣裙" in partly
    (cyrillic,) = tokenizer_warnings(tokenizer, "красное платье")
    assert "Latin script" in cyrillic


def test_search_cli_refuses_an_unreadable_query_with_exit_2(indexed, monkeypatch, tmp_path):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    result = runner.invoke(app, ["search", "--index", str(indexed), "--text", "红色连衣裙"])
    assert result.exit_code == 2 and "tokenizer cannot read" in result.output
    warned = runner.invoke(app, ["search", "--index", str(indexed), "--text", "red 连衣裙", "-k", "2"])
    assert warned.exit_code == 0 and "warning: the tokenizer cannot read 连衣裙" in warned.output


# --- contact sheet -----------------------------------------------------------------------------------


def _tile(sheet: Path, thumb: int = 64) -> np.ndarray:
    return np.asarray(Image.open(sheet).convert("L"))[8:8 + thumb, 8:8 + thumb]


def test_the_query_tile_shows_the_reference_image_or_the_query_text(tiny_phase1, tmp_path):
    image = next(iter((tiny_phase1 / "data" / "images").iterdir()))
    results = [SearchResult(1, "x", 0.5, "a caption", str(image))]
    composed = contact_sheet(results, tmp_path / "composed.png", image, "is red", thumb=64)
    reference = np.asarray(Image.open(image).convert("L").resize((64, 64), Image.Resampling.BICUBIC))
    assert np.abs(_tile(composed).astype(float) - reference).mean() < 20  # the reference, not a blank tile
    text_only = contact_sheet(results, tmp_path / "text.png", None, "blue dress", thumb=64)
    assert (_tile(text_only) < 128).sum() > 20  # the query's words are drawn in the tile
