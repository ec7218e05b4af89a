"""End to end on the tiny recipe: prepare -> train (all phase-1 stages) -> index -> search ->
caption -> generate -> bench, through the CLI; plus exact resume and refusal of a foreign index."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.config import load_recipe
from unifashion_core.data.adapters.demo import prepare_demo
from unifashion_core.models.qformer import QFormer
from unifashion_core.progress import NullProgress
from unifashion_core.train.phase1 import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A demo dataset (with one corrupt image) and a tiny model trained through all stages."""
    home = tmp_path_factory.mktemp("ws")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNIFASHION_HOME", str(home))
    data = home / "data"
    prepare_demo(data, num_items=120, seed=0, image_size=64)
    corrupt = next(
        r for r in map(json.loads, (data / "manifest.jsonl").read_text().splitlines()) if r["split"] == "train"
    )
    (data / corrupt["image"]).write_bytes(b"not a png")
    result = runner.invoke(app, ["train", str(TINY), "--data", str(data), "--out", str(home / "run"), "-q"])
    assert result.exit_code == 0, result.output
    yield home
    mp.undo()


def test_training_writes_a_complete_checkpoint_and_counts_the_bad_image(workspace):
    checkpoint = workspace / "run" / "checkpoint"
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert meta["stages_done"] == ["retrieval", "caption", "generate"]
    assert set(meta["heads"]) == {"caption", "generate"}
    assert meta["skipped_images"] == {"item:unreadable": 1}
    assert len(meta["fingerprint"]) == 16 and meta["manifest_sha256"]
    for name in ("config.yaml", "model.safetensors", "tokenizer", "training_state.pt"):
        assert (checkpoint / name).exists()
    records = [json.loads(line) for line in (workspace / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"retrieval", "caption", "generate"}
    assert load_recipe(workspace / "run" / "config.yaml").name == "tiny"
    # the tiny recipe standardises the generator's queries and keeps an EMA of the generate stage
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert not torch.equal(weights["generator.query_std"], torch.ones_like(weights["generator.query_std"]))
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)
    model = load_checkpoint(workspace / "run", heads=("generate",)).model  # a run directory is accepted too
    trained = [p for p in model.generator.parameters() if p.requires_grad]
    assert len(trained) == len(state["ema"]["shadow_params"]) == len(state["ema_raw_params"])
    assert all(torch.equal(p, s) for p, s in zip(trained, state["ema"]["shadow_params"], strict=True))
    assert not all(torch.equal(p, r) for p, r in zip(trained, state["ema_raw_params"], strict=True))


def test_index_and_search_with_no_paths_after_training(workspace, tmp_path):
    result = runner.invoke(app, ["index", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", "--text", "red striped shirt", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert len(results) == 10 and results[0]["rank"] == 1
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    image = results[0]["image"]
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(app, ["search", "--image", image, "-k", "3", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[0] > 3 * 64
    everything = str(json.loads((workspace / "index" / "meta.json").read_text())["num_items"])
    similar = json.loads(runner.invoke(app, ["search", "--image", image, "--mode", "i2i", "-k", everything,
                                             "--json"]).output)
    # an indexed image finds itself with the top score (this tiny model's scores are near-ties)
    own = next(r for r in similar["results"] if r["image"] == image)
    assert own["score"] == pytest.approx(1.0, abs=2e-3)  # max over query pairs of unit vectors (fp16 store)
    assert own["score"] >= similar["results"][0]["score"] - 2e-3


def test_pq_index_and_filtered_search(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))  # keep the shared workspace's latest index
    index = tmp_path / "pq"
    result = runner.invoke(app, ["index", "--kind", "pq", "--checkpoint", str(workspace / "run" / "checkpoint"),
                                 "--data", str(workspace / "data"), "--out", str(index), "-q"])
    assert result.exit_code == 0, result.output
    query = ["search", "--text", "red striped shirt", "--index", str(index), "--json"]
    unfiltered = json.loads(runner.invoke(app, query).stdout)["results"]
    assert {"category", "split"} <= unfiltered[0]["fields"].keys()
    wanted = unfiltered[-1]["fields"]["category"]
    result = runner.invoke(app, [*query, "-k", "3", "--filter", f"category={wanted}", "--filter", "split=test"])
    assert result.exit_code == 0, result.output
    filtered = json.loads(result.stdout)
    assert filtered["query"]["filter"] == {"category": wanted, "split": "test"}
    assert len(filtered["results"]) == 3 and all(r["fields"]["category"] == wanted for r in filtered["results"])
    for flag, message in (("brand=acme", "cannot filter on 'brand'"), ("category", "is not FIELD=VALUE")):
        result = runner.invoke(app, [*query, "--filter", flag])
        assert result.exit_code == 2 and message in result.output
    result = runner.invoke(app, [*query, "-k", "1000"])
    assert result.exit_code == 2 and "-k must be between 1 and the number of indexed items" in result.output


def test_search_refuses_an_index_built_by_another_model(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "other-ws"))  # keep the shared workspace's latest
    other = tmp_path / "other-run"
    result = runner.invoke(
        app, ["train", str(TINY), "seed=1", "train.stages=[retrieval]", "--data", str(workspace / "data"),
              "--out", str(other), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["search", "--text", "red", "--index", str(workspace / "index"), "--checkpoint", str(other / "checkpoint")]
    )
    assert result.exit_code == 2
    assert "different model" in result.output


def test_caption_one_image_a_folder_and_skips_unreadable(workspace, tmp_path):
    records = map(json.loads, (workspace / "data" / "manifest.jsonl").read_text().splitlines())
    images = [workspace / "data" / r["image"] for r in records if r["split"] == "test"][:3]
    result = runner.invoke(app, ["caption", "--image", str(images[1]), "--style", "short", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert result.output.strip()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"")
    out = tmp_path / "captions.jsonl"
    result = runner.invoke(app, ["caption", "--image", str(folder), "--out", str(out), "--max-new-tokens", "8", "-q"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3
    assert "skipped 1" in result.output
    bad = runner.invoke(app, ["caption", "--image", str(images[1]), "--style", "poetic"])
    assert bad.exit_code == 2 and "short" in bad.output


def test_generate_writes_pngs_with_their_settings(workspace, tmp_path):
    out = tmp_path / "gen.png"
    result = runner.invoke(
        app,
        [
            "generate",
            "--text",
            "blue polka-dot dress",
            "--out",
            str(out),
            "--steps",
            "3",
            "--seed",
            "7",
            "--num-images",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    first = Image.open(tmp_path / "gen-0.png")
    assert first.size == (32, 32)
    assert first.text["unifashion:seed"] == "7" and first.text["unifashion:sampler"] == "dpm++"
    assert (tmp_path / "gen-1.png").exists()
    again = tmp_path / "again.png"
    runner.invoke(
        app, ["generate", "--text", "blue polka-dot dress", "--out", str(again), "--steps", "3", "--seed", "7",
              "--num-images", "2"]
    )
    assert list(Image.open(tmp_path / "again-0.png").getdata()) == list(first.getdata())  # same seed, same image


def test_bench_retrieval_report_records_its_provenance(workspace):
    """Both protocols by default, each with the ridge baseline on 224 px EfficientNet-Lite0 features."""
    result = runner.invoke(app, ["bench", "retrieval", "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("protocol", "seed", "manifest_sha256", "checkpoint_fingerprint", "protocols", "baseline"):
        assert key in report
    assert report["protocol"] == "full + random100" and report["split"] == "test"
    assert report["baseline"]["vision"] == "efficientnet_lite0 at 224 px (frozen)"
    for name in ("full", "random100"):
        assert 0.0 <= report["protocols"][name]["model"]["mean_R"] <= 1.0
        assert 0.0 <= report["protocols"][name]["baseline"]["mean_R"] <= 1.0
    bench_dir = workspace / "bench" / "retrieval"
    assert (bench_dir / "report.md").read_text().startswith("# Cross-modal retrieval")
    candidates = json.loads((bench_dir / "candidates.json").read_text())["ids"]
    assert all(len(c) == len(set(c)) for c in candidates)
    rerun = runner.invoke(app, ["bench", "retrieval", "--protocol", "random100", "--split", "val", "--json", "-q"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["split"] == "val"


class _InterruptAt(NullProgress):
    """Raises KeyboardInterrupt when training reaches a given step (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None:
        if task.startswith("train"):
            self.seen += n
            if self.seen >= self.step:
                raise KeyboardInterrupt


TEXT_AUGMENT = ["data.augment.other_field=0.3", "data.augment.attribute_captions=0.5",
                "data.augment.word_dropout=0.2", "data.augment.paraphrase=0.3", "loss.swap_negatives=0.5",
                "loss.sibling_batches=0.5"]


@pytest.mark.parametrize(("overrides", "interrupt_at", "stopped_at"), [
    ([], 7, ("caption", 2)),  # caption step 3
    (["train.caption.ema_decay=0.9"], 7, ("caption", 2)),
    (TEXT_AUGMENT, 3, ("retrieval", 2)),  # retrieval step 3: the augmented texts continue exactly
    (["model.vision.trainable_blocks=2"], 3, ("retrieval", 2)),  # the vision encoder's top trains too
], ids=["raw", "ema", "text-augment", "vision-top"])
def test_resumed_training_equals_uninterrupted_training(workspace, tmp_path, monkeypatch, overrides, interrupt_at,
                                                        stopped_at):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    recipe = load_recipe(
        TINY,
        [
            "train.stages=[retrieval,caption]",
            "train.save_every=2",
            "train.retrieval.max_steps=4",
            "train.caption.max_steps=4",
            *overrides,
        ],
    )
    data = workspace / "data"
    run_training(recipe, data=data, out=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_training(recipe, data=data, out=tmp_path / "resumed", progress=_InterruptAt(interrupt_at))
    meta = json.loads((tmp_path / "resumed" / "checkpoint" / "meta.json").read_text())
    assert (meta["stage"], meta["step"]) == stopped_at
    run_training(recipe, data=data, out=tmp_path / "resumed", resume=True)
    straight = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_refuses_a_changed_recipe(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    recipe = load_recipe(TINY, ["train.stages=[retrieval]"])
    run_training(recipe, data=workspace / "data", out=tmp_path / "run")
    result = runner.invoke(
        app,
        [
            "train",
            str(TINY),
            "train.stages=[retrieval]",
            "seed=3",
            "--resume",
            "--data",
            str(workspace / "data"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2 and "recipe differs" in result.output


def test_swapped_negatives_on_fields_no_item_has_are_refused(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    result = runner.invoke(app, ["train", str(TINY), "train.stages=[retrieval]", "loss.swap_negatives=0.5",
                                 "loss.swap_fields=[size]", "--data", str(workspace / "data"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "loss.swap_fields (size)" in result.output and "colour" in result.output
    result = runner.invoke(app, ["train", str(TINY), "train.stages=[retrieval]", "loss.attribute_weight=0.5",
                                 "loss.attribute_fields=[size]", "--data", str(workspace / "data"),
                                 "--out", str(tmp_path / "run-attributes")])
    assert result.exit_code == 2
    assert "loss.attribute_weight needs a field of loss.attribute_fields (size)" in result.output
    result = runner.invoke(app, ["train", str(TINY), "loss.attribute_weight=-1", "--data", str(workspace / "data"),
                                 "--out", str(tmp_path / "run-weight")])
    assert result.exit_code == 2 and "loss.attribute_weight is a loss weight" in result.output


def _two_retrieval_steps(workspace: Path, out: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """The weights after two retrieval steps of the tiny recipe with ``overrides`` (no ITM, and no
    dropout, else an extra text pass alone would move the RNG)."""
    recipe = load_recipe(TINY, ["train.stages=[retrieval]", "train.retrieval.max_steps=2", "loss.itm_weight=0",
                                "model.qformer.dropout=0", *overrides])
    run_training(recipe, data=workspace / "data", out=out)
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_swapped_negatives_reach_the_contrastive_loss(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    weights = {probability: _two_retrieval_steps(workspace, tmp_path / f"swap{probability}",
                                                 f"loss.swap_negatives={probability}") for probability in (0, 1)}
    changed = [key for key in weights[0] if not torch.equal(weights[0][key], weights[1][key])]
    assert any(key.startswith("qformer.") for key in changed)


def test_attribute_classes_reach_the_retrieval_stage(workspace, tmp_path, monkeypatch):
    """``loss.attribute_weight``: the stage logs the term and trains other weights than without it."""
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    weights = {weight: _two_retrieval_steps(workspace, tmp_path / f"attr{weight}", f"loss.attribute_weight={weight}")
               for weight in (0, 1)}
    logged = [json.loads(line) for line in (tmp_path / "attr1" / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("attribute", 0) > 0 for line in logged)
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0] if key.startswith("qformer."))


def test_mirrored_images_reach_the_retrieval_stage(workspace, tmp_path, monkeypatch):
    """``data.image_flip``: at 1 every image the retrieval stage trains on is a mirrored one, read
    from the mirrored features' own cache; at 0 none is computed."""
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    seen: list[torch.Tensor] = []
    encode_image = QFormer.encode_image

    def recording(self, image_tokens):
        if self.training:
            seen.append(image_tokens.detach().clone())
        return encode_image(self, image_tokens)

    monkeypatch.setattr(QFormer, "encode_image", recording)
    rows = {}
    for flip in (0, 1):
        recipe = load_recipe(TINY, ["train.stages=[retrieval]", "train.retrieval.max_steps=2",
                                    "loss.itm_weight=0", f"data.image_flip={flip}"])
        run_training(recipe, data=workspace / "data", out=tmp_path / f"flip{flip}", cache_dir=tmp_path / "cache")
        for folder in (tmp_path / "cache").glob("*/tokens*"):
            rows[folder.name.startswith("tokens-flip")] = torch.cat(
                [torch.from_numpy(np.load(path)).float() for path in sorted(folder.glob("*.npy"))])
        if flip == 0:
            assert set(rows) == {False} and len(seen) == 2
            plain_batches, seen[:] = list(seen), []
    mirrored, plain = rows[True], rows[False]
    assert len(seen) == 2 and len(mirrored) < len(plain)  # the training images only, not val
    for batch in seen:
        for row in batch:
            assert (mirrored == row).flatten(1).all(1).any() and not (plain == row).flatten(1).all(1).any()
    assert all((plain == row).flatten(1).all(1).any() for batch in plain_batches for row in batch)


def test_sibling_batches_on_fields_no_item_has_are_refused(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    result = runner.invoke(app, ["train", str(TINY), "train.stages=[retrieval]", "loss.sibling_batches=0.5",
                                 "loss.swap_fields=[size]", "--data", str(workspace / "data"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "loss.sibling_batches needs a field of loss.swap_fields (size)" in result.output
    result = runner.invoke(app, ["train", str(TINY), "loss.sibling_batches=0.75", "--data", str(workspace / "data"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "loss.sibling_batches is a share of the batch in [0, 0.5]" in result.output


def test_sibling_batches_reach_the_retrieval_stage(workspace, tmp_path, monkeypatch):
    """The partners change which items a step trains on, so the weights differ from plain batches."""
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    weights = {share: _two_retrieval_steps(workspace, tmp_path / f"sib{share}", f"loss.sibling_batches={share}")
               for share in (0, 0.5)}
    assert any(not torch.equal(weights[0][key], weights[0.5][key]) for key in weights[0] if key.startswith("qformer."))
