"""Phase 2 (composed retrieval training), the caption-assisted index and composed search."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from unifashion_cli import workspace
from unifashion_cli.main import app
from unifashion_core.checkpoint import read_meta
from unifashion_core.config import load_recipe
from unifashion_core.data.images import load_user_image, pixel_values
from unifashion_core.data.manifest import Triplet, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.models.vision import preprocess
from unifashion_core.retrieval.build import build_index
from unifashion_core.retrieval.index import RetrievalIndex
from unifashion_core.retrieval.search import load_searcher, search
from unifashion_core.train import phase2
from unifashion_core.train.data import Batch
from unifashion_core.train.phase2 import run_phase2
from unifashion_core.train.setup import TrainResult

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
PHASE2 = ["train.phase2.max_steps=2", "train.phase2.batch_size=8", "train.phase2.lr=1e-3"]
runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tiny_phase1: Path) -> Path:
    """The shared tiny phase-1 run (tests/conftest.py)."""
    return tiny_phase1


@pytest.fixture(scope="module")
def phase2_run(workdir: Path) -> TrainResult:
    recipe = load_recipe(TINY, [*PHASE2, "train.eval_every=1"])
    return run_phase2(recipe, workdir / "phase1", workdir / "data", workdir / "phase2")


def setup(workdir: Path, overrides: list[str]) -> phase2.Phase2Setup:
    """The phase-2 model and stage from the phase-1 checkpoint, in eval mode (no dropout)."""
    init, meta = phase2.check_init_checkpoint(workdir / "phase1")
    result = phase2.setup_phase2(load_recipe(TINY, overrides), tuple(meta["heads"]), init,
                                 load_dataset(workdir / "data"))
    result.model.qformer.eval()
    return result


def test_phase2_without_a_phase1_checkpoint_names_the_options(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "empty-ws"))
    recipe = load_recipe(TINY, PHASE2)
    with pytest.raises(UserError, match="does not exist"):
        run_phase2(recipe, tmp_path / "nowhere", workdir / "data", tmp_path / "b")
    result = runner.invoke(app, ["train", str(TINY), "--phase", "2", "--data", str(workdir / "data"),
                                 "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--checkpoint" in result.output and "init_checkpoint" in result.output
    assert not (tmp_path / "a").exists()


def test_phase2_starts_from_the_recipe_or_the_workspace_phase1_run(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    phase1 = (workdir / "phase1" / "checkpoint").absolute()
    workspace.remember("phase1", phase1)  # what `unifashion train --phase 1` leaves behind
    args = ["train", "tiny", "--phase", "2", *PHASE2, "--data", str(workdir / "data"), "-q"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "from-workspace")])
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "from-workspace")["init_checkpoint"] == str(phase1)
    assert workspace.latest("checkpoint") == tmp_path / "from-workspace" / "checkpoint"
    assert workspace.latest("phase1") == phase1  # a phase-2 run is not a starting point for phase 2
    result = runner.invoke(app, [*args, f"train.init_checkpoint={workdir / 'phase1'}",
                                 "--out", str(tmp_path / "from-recipe")])
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "from-recipe")["init_checkpoint"] == str(phase1)


def test_training_texts_vary_fashioniq_paraphrases_and_keep_other_texts_whole():
    fiq = Triplet("t", "train", "r", "g", "Is red and has long sleeves", ("is red.", "has long sleeves"), "dress")
    assert phase2.training_texts(fiq, paraphrases=True) == [
        "Is red and has long sleeves", "Has long sleeves and is red", "Is red", "Has long sleeves"]
    demo = Triplet("t", "train", "r", "g", "Is red and has long sleeves", ("is red", "has long sleeves"), "dress")
    assert phase2.training_texts(demo, paraphrases=False) == ["Is red and has long sleeves"]


def test_loss_is_the_weighted_sum_of_hand_computed_terms(workdir):
    weights = {"cir": 0.5, "itg": 0.25, "q2i": 2.0}
    run = setup(workdir, [f"loss.{k}_weight={v}" for k, v in weights.items()] + ["loss.itm_weight=0"])
    model, train, batch = run.model, run.train, torch.arange(6)
    loss, logs = run.stage.loss_fn(Batch.read(run.stage.data, batch), torch.Generator().manual_seed(0), 0)
    assert run.terms == ("cir", "itg", "q2i")
    assert loss.item() == pytest.approx(sum(w * logs[k] for k, w in weights.items()), rel=1e-5)
    with torch.no_grad():
        qformer, labels = model.qformer, torch.arange(6)
        ids, mask = model.tokenize([train.texts[i][0] for i in batch.tolist()])  # demo: the text as it is
        fused = qformer.encode_multimodal(train.tokens[train.references[batch]].float(), ids, mask)
        z_target = qformer.encode_image(train.tokens[train.targets[batch]].float()).embeds  # (B, Q, D)
        z_caption = qformer.encode_text(*model.tokenize(train.captions[:6])).embeds  # (B, D)
        temperature = qformer.temperature()

        def two_way(sim: torch.Tensor) -> torch.Tensor:
            return (F.cross_entropy(sim / temperature, labels) + F.cross_entropy(sim.T / temperature, labels)) / 2

        cir = two_way((z_target @ fused.embeds.T).amax(dim=1)) + two_way(z_caption @ fused.embeds.T)
        itg = model.captioner.loss(fused.query_output, train.captions[:6], "short")
        dataset = load_dataset(workdir / "data")
        pixels = pixel_values([dataset.image_path(train.items[r]) for r in train.targets[batch].tolist()], 32)
        same_draws = torch.Generator().manual_seed(0)  # the loss drew only q2I's noise from its generator
        q2i = model.generator.loss(fused.query_output, pixels, drop_prob=0.1, generator=same_draws,
                                   source="multimodal")
    assert logs["cir"] == pytest.approx(cir.item(), rel=1e-4)
    assert logs["itg"] == pytest.approx(itg.item(), rel=1e-4)
    assert logs["q2i"] == pytest.approx(q2i.item(), rel=1e-4)


def _with_gradients(result: phase2.Phase2Setup) -> set[str]:
    """The top-level parts (``qformer``, ``captioner.adapter``, ``generator.unet``...) that got gradients."""
    named = {"qformer": result.model.qformer, "vision": result.model.vision}
    for head in ("captioner", "generator"):
        for name, child in getattr(result.model, head).named_children():
            named[f"{head}.{name}"] = child
    return {name for name, module in named.items()
            if any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())}


def test_zero_weights_switch_terms_off(workdir):
    full = setup(workdir, [])
    cir_only = setup(workdir, ["loss.itg_weight=0", "loss.q2i_weight=0"])
    batch = torch.arange(8)
    loss_full, logs_full = full.stage.loss_fn(Batch.read(full.stage.data, batch), torch.Generator().manual_seed(1), 0)
    loss_cir, logs_cir = cir_only.stage.loss_fn(Batch.read(cir_only.stage.data, batch),
                                                torch.Generator().manual_seed(1), 0)
    assert cir_only.terms == ("cir",) and set(logs_cir) == {"cir"}
    assert loss_cir.item() == pytest.approx(logs_cir["cir"])
    assert logs_cir["cir"] == pytest.approx(logs_full["cir"], rel=1e-5)  # same batch, same ITM negatives
    assert loss_full.item() == pytest.approx(logs_full["cir"] + logs_full["itg"] + logs_full["q2i"], rel=1e-5)
    with pytest.raises(UserError, match="nothing to train"):
        setup(workdir, ["loss.cir_weight=0", "loss.itg_weight=0", "loss.q2i_weight=0"])


@pytest.mark.parametrize(("trainable", "trained"), [
    # the default, as the paper and docs/design.md say: the Q-Former and both adapters
    (None, {"qformer", "captioner.adapter", "generator.adapter"}),
    ("[qformer]", {"qformer"}),
    ("[qformer,unet]", {"qformer", "generator.unet"}),
])
def test_phase2_trains_the_modules_train_phase2_trainable_lists(workdir, trainable, trained):
    """Vision, LLM (and its LoRA) never train; the UNet only when listed."""
    result = setup(workdir, [f"train.phase2.trainable={trainable}"] if trainable else [])
    loss, _ = result.stage.loss_fn(Batch.read(result.stage.data, torch.arange(8)), torch.Generator().manual_seed(1), 0)
    loss.backward()
    assert _with_gradients(result) == trained
    assert {id(p) for p in result.stage.params} == {id(p) for p in result.model.parameters() if p.requires_grad}
    assert all(p.requires_grad is False for p in result.model.vision.parameters())


def test_recipes_say_what_phase2_trains():
    assert load_recipe(TINY).train.phase2.trainable == ("qformer", "text_adapter", "image_adapter")
    assert load_recipe("fashioniq").train.phase2.trainable == ("qformer", "text_adapter", "image_adapter")
    assert load_recipe("demo").train.phase2.trainable == ("qformer",)  # as its figures were measured


def test_phase2_trains_its_modules_and_records_its_origin(workdir, phase2_run, tmp_path):
    checkpoint, init = phase2_run.checkpoint, workdir / "phase1" / "checkpoint"
    meta, init_meta = read_meta(checkpoint), read_meta(init)
    assert meta["phase"] == 2 and meta["stages_done"] == ["phase2"]
    assert meta["heads"] == init_meta["heads"] == ["caption", "generate"]
    assert meta["init_checkpoint_fingerprint"] == init_meta["fingerprint"] != meta["fingerprint"]
    before, after = load_file(init / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    statistics = ("generator.query_mean", "generator.query_std")
    trained = ("qformer.", "captioner.adapter.", "generator.adapter.")
    assert meta["trained_modules"] == ["qformer", "text_adapter", "image_adapter"]
    frozen = [k for k in before if not k.startswith(trained) and k not in statistics]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    for prefix in trained:
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    for key in statistics:  # text and image statistics retaken from the trained Q-Former, multimodal kept
        assert not torch.equal(before[key][:2], after[key][:2]) and torch.equal(before[key][2], after[key][2])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("qformer."))
    records = [json.loads(line) for line in (workdir / "phase2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(0 <= r["val_cir_R@10"] <= r["val_cir_R@50"] <= 1 for r in records if "val_cir_R@10" in r)
    recipe = load_recipe(TINY, [*PHASE2, "train.eval_every=1"])
    resumed = run_phase2(recipe, workdir / "phase1", workdir / "data", workdir / "phase2", resume=True)
    assert resumed.metrics == phase2_run.metrics  # finished: nothing retrained
    with pytest.raises(UserError, match="phase-1"):
        run_phase2(recipe, checkpoint, workdir / "data", tmp_path / "x")


def test_captioned_index_and_composed_search(workdir, phase2_run, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(workdir / "ws"))
    result = runner.invoke(app, ["index", "--checkpoint", str(phase2_run.checkpoint), "--data", str(workdir / "data"),
                                 "--captions", "--out", str(tmp_path / "index"), "-q"])
    assert result.exit_code == 0, result.output
    index = RetrievalIndex.load(tmp_path / "index")
    dataset = load_dataset(workdir / "data")
    assert index.meta["has_captions"] and index.num_items == len(dataset.split("test")) == len(index.captions)
    assert all(isinstance(c, str) for c in index.captions) and index.caption_vectors.shape == (index.num_items, 32)
    triplet = dataset.split_triplets("test")[0]
    image = dataset.image_path(dataset.by_id()[triplet.reference])
    model, view = load_searcher(tmp_path / "index", None)
    with_captions = search(model, view, triplet.text, image, k=index.num_items, caption_weight=0.5)
    without = {r.id: r.score for r in search(model, view, triplet.text, image, k=index.num_items, use_captions=False)}
    tokens = model.image_tokens(preprocess([load_user_image(image)], model.vision))
    fused = model.embed_composed(tokens, [triplet.text])[0].numpy()  # (D,)
    rows = {item_id: row for row, item_id in enumerate(index.ids)}
    for r in with_captions:  # score = image term + w <e, c>, exactly the index's caption vectors
        caption_term = 0.5 * float(index.caption_vectors[rows[r.id]].astype("float32") @ fused)
        assert r.score == pytest.approx(without[r.id] + caption_term, abs=1e-3)
    cli = [runner.invoke(app, ["search", "--image", str(image), "--text", triplet.text, "--json", *extra])
           for extra in ([], ["--no-captions"])]  # the workspace's latest index: no other flags
    assert all(c.exit_code == 0 for c in cli), cli[0].output
    default, no_captions = (json.loads(c.stdout)["results"] for c in cli)
    assert [r["score"] for r in default] != [r["score"] for r in no_captions]


def test_captions_need_a_caption_head(workdir, phase2_run, tmp_path):
    headless = tmp_path / "headless"
    shutil.copytree(phase2_run.checkpoint, headless)
    meta = json.loads((headless / "meta.json").read_text())
    (headless / "meta.json").write_text(json.dumps({**meta, "heads": []}))
    with pytest.raises(UserError, match="caption head"):
        build_index(headless, workdir / "data", tmp_path / "index", captions=True)
