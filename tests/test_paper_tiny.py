"""The `paper` preset end to end at toy width: BLIP-2 vision + Q-Former, a Llama LM with LoRA and an
SD inpainting UNet + VAE, all from `save_pretrained` directories (tests/paper_tiny.py), through
prepare -> train --phase 1 (every stage) -> train --phase 2 -> index -> search -> caption ->
generate on the CLI, each command reloading what the one before saved. The recipe turns on
gradient checkpointing and bf16 (autocast on a GPU, ignored on a CPU), so the GPU-scale options
run here too; their gradients are checked against plain training below."""

import json
from pathlib import Path

import pytest
import torch
from paper_tiny import save_paper_tiny
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.checkpoint import load_checkpoint, read_meta
from unifashion_core.config import Recipe, load_recipe
from unifashion_core.data.manifest import Item
from unifashion_core.models.unifashion import build_model
from unifashion_core.train import stages as stage_lib
from unifashion_core.train.data import Batch

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("paper-tiny")
    return root, save_paper_tiny(root / "weights")


def _invoke(*args: str) -> str:
    result = runner.invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_paper_layout_runs_every_command_end_to_end_with_save_and_reload(paper, monkeypatch):
    root, recipe = paper
    monkeypatch.setenv("UNIFASHION_HOME", str(root / "ws"))
    data, phase1, phase2 = root / "data", root / "phase1", root / "phase2"
    _invoke("prepare", "demo", "--out", str(data), "--num-items", "60", "--image-size", "32", "-q")
    _invoke("train", str(recipe), "--phase", "1", "--data", str(data), "--out", str(phase1), "-q")
    meta = read_meta(phase1)
    assert meta["stages_done"] == ["retrieval", "caption", "generate"] and meta["heads"] == ["caption", "generate"]
    stored = load_file(str(phase1 / "checkpoint" / "model.safetensors"))
    assert any("lora_" in key for key in stored) and not any(
        key.startswith(("vision.", "generator.vae.")) or (key.startswith("captioner.llm.") and "lora_" not in key)
        for key in stored)  # the frozen pretrained parts are referenced, not copied
    reloaded = load_checkpoint(phase1, heads=("caption", "generate"))
    assert reloaded.model.fingerprint() == meta["fingerprint"]
    assert all(torch.equal(reloaded.model.state_dict()[key], value) for key, value in stored.items())
    assert (phase1 / "curves.png").is_file()

    _invoke("train", str(recipe), "--phase", "2", "--data", str(data), "--checkpoint", str(phase1),
            "--out", str(phase2), "-q")
    assert read_meta(phase2)["terms"] == ["cir", "itg", "q2i"]
    _invoke("index", "--checkpoint", str(phase2), "--data", str(data), "--out", str(root / "index"), "-q")
    results = json.loads(_invoke("search", "--text", "red dress", "--index", str(root / "index"), "-k", "3",
                                 "--json"))["results"]
    assert len(results) == 3
    person = data / results[0]["image"] if not Path(results[0]["image"]).is_absolute() else Path(results[0]["image"])
    assert _invoke("caption", "--image", str(person), "--checkpoint", str(phase2), "--max-new-tokens", "4").strip()
    mask = root / "mask.png"
    with Image.open(person) as image:
        canvas = Image.new("L", image.size, 0)
    canvas.paste(255, (8, 8, 24, 24))
    canvas.save(mask)
    _invoke("generate", "--text", "a red dress", "--person", str(person), "--mask", str(mask), "--steps", "2",
            "--checkpoint", str(phase2), "--out", str(root / "design.png"))
    with Image.open(root / "design.png") as design, Image.open(person) as worn:
        assert design.size == worn.size  # try-on puts the result back into the person at full size


def _gradients(recipe: Recipe, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of one batch of each phase-1 stage, in training's order (each stage freezes what
    the one before trained)."""
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.data.max_text_length, ("caption", "generate"))
    if checkpointing:
        model.enable_gradient_checkpointing()
        assert model.qformer.qformer.is_gradient_checkpointing and model.generator.unet.is_gradient_checkpointing
        assert model.captioner.llm.get_base_model().model.gradient_checkpointing
    tokens = torch.randn(4, 10, 32)  # (B, T, C) of the tiny BLIP-2 vision tower
    queries = model.source_queries("image", tokens, ["a red dress"] * 4).detach()
    pixels = torch.rand(4, 3, 16, 16) * 2 - 1
    texts = ["a red dress", "jeans", "a coat", "a hat"]
    items = [Item(str(i), f"{i}.png", "train", text) for i, text in enumerate(texts)]
    builders = (
        lambda: stage_lib.retrieval_stage(model, recipe, tokens, items, tokens, []),
        lambda: stage_lib.caption_stage(model, recipe, queries, ["a red dress"] * 4, queries, []),
        lambda: stage_lib.generate_stage(model, recipe, dict.fromkeys(("text", "image", "multimodal"), queries),
                                         pixels.__getitem__, 4, None),
    )
    model.train()
    for build in builders:
        stage = build()
        loss, _ = stage.loss_fn(Batch.read(stage.data, torch.arange(4)), torch.Generator().manual_seed(0), 0)
        loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_gradients_of_plain_training(paper):
    recipe = load_recipe(paper[1], ["model.qformer.dropout=0", "model.captioner.lora_dropout=0"])
    plain, checkpointed = _gradients(recipe, False), _gradients(recipe, True)
    assert plain.keys() == checkpointed.keys() and any(".lora_" in name for name in plain)
    assert any(name.startswith("generator.unet.") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow  # the UNet at the paper's 512x384 on a CPU: minutes
def test_paper_speed_times_each_stage_with_the_gpu_scale_options(paper, tmp_path):
    from unifashion_core.evaluation.paper_speed import bench_paper_speed

    report = bench_paper_speed(paper[1], ["train.gradient_checkpointing=true"], out=tmp_path,
                               only=("retrieval", "caption", "generate"), batch_size=2, weights="recipe")
    assert report["gradient_checkpointing"] is True and report["mixed_precision"] == "no"  # bf16: GPU only
    for stage in ("retrieval", "caption", "generate"):
        assert "error" not in report[stage], report[stage]
        assert report[stage]["seconds_per_step"] > 0 and report[stage]["trainable_parameters"] > 0
    assert "gradient checkpointing: True" in (tmp_path / "report.md").read_text()
