"""Try-on and design: the inputs' conversions, inpainting training reaching the UNet, `generate`
with a person, mask and sketch (and every bad input), and `bench tryon` (docs/design.md section 10)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.config import load_recipe
from unifashion_core.data.manifest import load_dataset
from unifashion_core.data.tryon import edges, has_tryon, load_tryon, mask_to_array, paste_result, sketch_to_array
from unifashion_core.errors import UserError
from unifashion_core.metrics.tryon import changed_outside, edge_iou, paired_scores
from unifashion_core.progress import NullProgress

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
runner = CliRunner()


# --- conversions -----------------------------------------------------------------------------


def test_mask_is_thresholded_at_half_white_and_padded_as_kept() -> None:
    grey = np.zeros((40, 40, 3), np.uint8)
    grey[:, 20:] = 200  # light grey: generated
    grey[:, 10:20] = 100  # dark grey: kept
    mask = mask_to_array(Image.fromarray(grey), 8) >= 0.5
    assert mask[:, 4:].all() and not mask[:, :4].any()
    tall = Image.fromarray(np.full((60, 30, 3), 255, np.uint8))  # padded to 48x60: the sides are kept
    padded = mask_to_array(tall, 10) >= 0.5
    assert padded[:, 3:7].all() and not padded[:, 0].any() and not padded[:, -1].any()


def test_sketch_polarity_does_not_matter() -> None:
    lines = np.zeros((32, 32), np.uint8)
    lines[8, 4:28] = lines[4:28, 16] = 255
    white_on_black = sketch_to_array(Image.fromarray(lines).convert("RGB"), 16)
    black_on_white = sketch_to_array(Image.fromarray(255 - lines).convert("RGB"), 16)
    assert np.array_equal(white_on_black, black_on_white)
    assert white_on_black[4].sum() >= 10 and white_on_black[:, 8].sum() >= 10 and white_on_black.sum() < 60


def test_edges_mark_colour_boundaries_only() -> None:
    image = np.ones((3, 16, 16), np.float32)
    image[:, 4:12, 4:12] = np.array([0.8, 0.1, 0.2])[:, None, None]  # a red square on white
    found = edges(image)
    assert found[4:12, 3:5].all() and found[4:12, 11:13].all()  # its left and right sides
    assert not found[7:9, 7:9].any() and not found[0, 0]  # flat inside and outside


def test_paste_result_keeps_every_pixel_outside_the_mask() -> None:
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8))  # W 30, H 50: padded
    mask = np.zeros((50, 30), bool)
    mask[10:30, 5:25] = True
    result = np.asarray(paste_result(person, mask, np.zeros((3, 16, 16), np.float32)))
    assert result.shape == (50, 30, 3)
    assert np.array_equal(result[~mask], np.asarray(person)[~mask])
    assert (result[mask] == 0).all()


def test_paired_scores_and_kept_pixels() -> None:
    truth = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    exact = paired_scores(truth, truth, mask)
    assert exact["ssim"] == pytest.approx(1.0) and exact["ssim_mask"] == pytest.approx(1.0)
    assert exact["psnr_mask"] == pytest.approx(100.0) and exact["changed_outside_mask"] == 0.0
    filled = truth * (1 - mask) + 0.5 * mask
    worse = paired_scores(filled, truth, mask)
    assert worse["ssim_mask"] < 0.5 and worse["ssim"] > worse["ssim_mask"] and worse["changed_outside_mask"] == 0.0
    spoiled = filled.clone()
    spoiled[0, :, 0, 0] = 1 - truth[0, :, 0, 0]  # one kept pixel changed
    assert changed_outside(spoiled, truth, mask) == pytest.approx(1 / (2 * (256 - 64)))


def test_edge_iou_forgives_one_pixel() -> None:
    line = np.zeros((16, 16))
    line[8, 2:14] = 1
    shifted = np.roll(line, 1, axis=0)
    assert edge_iou(line, line) == 1.0 and edge_iou(line, shifted) == 1.0
    assert edge_iou(line, shifted, tolerance=0) == 0.0 and edge_iou(line, np.zeros((16, 16))) == 0.0
    half = line.copy()
    half[8, 8:] = 0  # half the line: exactly, 6 of 12 shared, union 12
    assert edge_iou(line, half, tolerance=0) == pytest.approx(0.5)


# --- training --------------------------------------------------------------------------------


def test_inpainting_batches_feed_mask_masked_person_and_sketch_to_the_unet(tiny_phase1, tmp_path, monkeypatch):
    """Trains the tiny preset a few steps on inpainting batches only; every UNet input of those
    steps must carry, channel for channel, one drawn person's masked image, mask and sketch."""
    from unifashion_core.models.generator import Generator
    from unifashion_core.train.phase1 import run_training

    seen: list[torch.Tensor] = []
    original = Generator._denoise

    def record(self, model_input, timestep, context):
        seen.append(model_input.detach().clone())
        return original(self, model_input, timestep, context)

    monkeypatch.setattr(Generator, "_denoise", record)
    recipe = load_recipe(TINY, ["train.stages=[generate]", "model.generator.tryon.fraction=1",
                                "model.generator.sketch_fraction=1", "train.generate.max_steps=3"])
    result = run_training(recipe, tiny_phase1 / "data", tmp_path / "run")
    assert np.isfinite(result.metrics["generate/q2i_tryon"])
    dataset = load_dataset(tiny_phase1 / "data")
    examples = [load_tryon(dataset, item, 32) for item in dataset.split("train") if has_tryon(item)]
    known = {(e.masked_pixel_values.tobytes(), e.mask.tobytes(), e.sketch.tobytes()) for e in examples}
    training = [batch for batch in seen if not bool((batch[:, 6] == 1).all())]  # the last pass validates
    assert len(training) == 3 and training[0].shape[1:] == (8, 32, 32)
    for row in torch.cat(training):
        channels = row.numpy()
        assert channels[7].any() and 0 < channels[6].mean() < 1
        assert (channels[3:6].tobytes(), channels[6:7].tobytes(), channels[7:8].tobytes()) in known


def test_phase2_q2i_takes_the_same_inpainting_path_for_worn_targets(tiny_phase1, monkeypatch):
    from types import SimpleNamespace

    from unifashion_core.data.images import pixel_values
    from unifashion_core.distributed import BatchShard
    from unifashion_core.models.generator import build_generator
    from unifashion_core.train.phase2 import q2i_term

    recipe = load_recipe(TINY, ["model.generator.tryon.fraction=1"])
    head = build_generator(recipe.model.generator, 64, 4)
    calls = []
    monkeypatch.setattr(head, "loss", lambda q, pixels, **kw: calls.append((pixels, kw)) or pixels.sum())
    model = SimpleNamespace(generator=head)
    dataset = load_dataset(tiny_phase1 / "data")
    worn = [item for item in dataset.split("train") if has_tryon(item)][:3]
    plain = [item for item in dataset.split("train") if not has_tryon(item)][:3]
    queries, generator = torch.randn(3, 4, 64), torch.Generator().manual_seed(0)
    whole = BatchShard.whole(3)
    unused = torch.zeros(3, 3, 32, 32)  # a worn batch inpaints its people instead of these images
    q2i_term(model, recipe, dataset, queries, unused, worn, generator, whole)
    garments = pixel_values([dataset.image_path(item) for item in plain], 32)  # as the batch streams them
    q2i_term(model, recipe, dataset, queries, garments, plain, generator, whole)
    (person, tryon), (garment, garment_kw) = calls
    expected = [load_tryon(dataset, item, 32) for item in worn]
    assert np.array_equal(tryon["mask"].numpy(), np.concatenate([e.mask for e in expected]))
    assert np.array_equal(person.numpy(), np.concatenate([e.pixel_values for e in expected]))
    assert tryon["source"] == "multimodal" and "mask" not in garment_kw and garment.shape == (3, 3, 32, 32)


def test_tryon_settings_are_checked() -> None:
    with pytest.raises(UserError, match="inpainting"):
        load_recipe(TINY, ["model.generator.inpainting=false"])
    with pytest.raises(UserError, match="use_sketch"):
        load_recipe(TINY, ["model.generator.use_sketch=false"])
    with pytest.raises(UserError, match="fraction"):
        load_recipe(TINY, ["model.generator.tryon.fraction=1.5"])
    with pytest.raises(UserError, match="did you mean"):
        load_recipe(TINY, ["model.generator.tryon.fractoin=0.5"])


# --- generate --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tryon_files(tiny_phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test person of the demo data at 36x48 (not square), its mask and sketch, and variants."""
    dataset = load_dataset(tiny_phase1 / "data")
    item = next(item for item in dataset.split("test") if has_tryon(item))
    folder = tmp_path_factory.mktemp("tryon-files")

    def save(name: str, key: str, size: tuple[int, int], resample: int = Image.Resampling.NEAREST) -> Path:
        Image.open(dataset.image_path(item, key)).convert("RGB").resize(size, resample).save(folder / name)
        return folder / name

    files = {
        "person": save("person.png", "person", (36, 48), Image.Resampling.BICUBIC),
        "mask": save("mask.png", "mask", (36, 48)),
        "sketch": save("sketch.png", "sketch", (36, 48)),
        "mask_half": save("mask-half.png", "mask", (18, 24)),
        "mask_square": save("mask-square.png", "mask", (48, 48)),
        "sketch_half": save("sketch-half.png", "sketch", (18, 24)),
    }
    grey = np.asarray(Image.open(files["mask"])).astype(np.float32) * 0.7  # white -> 178: still generated
    Image.fromarray(grey.astype(np.uint8)).save(folder / "mask-grey.png")
    for name, value in (("mask-black.png", 0), ("mask-white.png", 255)):
        Image.new("RGB", (36, 48), (value,) * 3).save(folder / name)
    return {**files, **{p.stem.replace("-", "_"): p for p in folder.glob("mask-*.png")}}


def _generate(home: Path, *args: str) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIFASHION_HOME", str(home / "ws"))
        return runner.invoke(app, ["generate", "--checkpoint", str(home / "phase1"), "--steps", "2", "-q", *args])


def test_tryon_keeps_the_person_outside_the_mask(tiny_phase1, tryon_files, tmp_path):
    out = tmp_path / "tryon.png"
    result = _generate(tiny_phase1, "--person", str(tryon_files["person"]), "--mask", str(tryon_files["mask"]),
                       "--sketch", str(tryon_files["sketch"]), "--text", "red striped t-shirt", "--out", str(out))
    assert result.exit_code == 0, result.output
    person, made = np.asarray(Image.open(tryon_files["person"])), np.asarray(Image.open(out).convert("RGB"))
    kept = np.asarray(Image.open(tryon_files["mask"]).convert("L")) < 128
    assert made.shape == person.shape == (48, 36, 3)
    assert np.array_equal(made[kept], person[kept])
    assert not np.array_equal(made[~kept], person[~kept])
    assert Image.open(out).text["unifashion:mask"] == str(tryon_files["mask"])


@pytest.mark.parametrize("mask, sketch, note", [
    ("mask_half", None, "--mask resized from 18x24"),
    ("mask_grey", None, "50 % white"),
    ("mask", "sketch_half", "--sketch resized from 18x24"),
])
def test_tryon_conversions_are_made_and_said(tiny_phase1, tryon_files, tmp_path, mask, sketch, note):
    out = tmp_path / "tryon.png"
    extra = ["--sketch", str(tryon_files[sketch])] if sketch else []
    result = _generate(tiny_phase1, "--person", str(tryon_files["person"]), "--mask", str(tryon_files[mask]),
                       *extra, "--image", str(tryon_files["person"]), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert note in result.output
    person, made = np.asarray(Image.open(tryon_files["person"])), np.asarray(Image.open(out).convert("RGB"))
    used = Image.open(tryon_files[mask]).convert("L").resize((36, 48), Image.Resampling.BOX)  # as resized
    kept = np.asarray(used) < 128
    assert np.array_equal(made[kept], person[kept])


@pytest.mark.parametrize("args, message", [
    (["--mask", "mask_square"], "another shape"),
    (["--mask", "mask_black"], "empty"),
    (["--mask", "mask_white"], "whole image"),
    (["--mask", "mask", "--sketch", "mask_square"], "another shape"),
])
def test_tryon_bad_inputs_exit_2_with_one_line(tiny_phase1, tryon_files, tmp_path, args, message):
    resolved = [str(tryon_files[a]) if a in tryon_files else a for a in args]
    result = _generate(tiny_phase1, "--person", str(tryon_files["person"]), *resolved, "--text", "red t-shirt",
                       "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.png").exists()


def test_person_without_mask_and_mask_without_person_are_refused(tiny_phase1, tryon_files, tmp_path):
    for args in (["--person", str(tryon_files["person"])], ["--mask", str(tryon_files["mask"])]):
        result = _generate(tiny_phase1, *args, "--text", "red t-shirt", "--out", str(tmp_path / "x.png"))
        assert result.exit_code == 2 and "go together" in result.output


def test_design_from_a_sketch_without_a_person(tiny_phase1, tryon_files, tmp_path):
    out = tmp_path / "design.png"
    result = _generate(tiny_phase1, "--sketch", str(tryon_files["sketch"]), "--text", "blue dress", "--out", str(out))
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.png"
    _generate(tiny_phase1, "--text", "blue dress", "--out", str(plain))
    assert Image.open(out).size == (32, 32)
    assert list(Image.open(out).getdata()) != list(Image.open(plain).getdata())  # the sketch is used


def test_tryon_refused_by_a_generator_without_inpainting(tmp_path):
    from unifashion_core.data.adapters.demo import prepare_demo
    from unifashion_core.inference import GenerationRequest, generate_images
    from unifashion_core.train.phase1 import run_training

    prepare_demo(tmp_path / "data", num_items=40, image_size=32, num_tryon=0)
    recipe = load_recipe(TINY, ["model.generator.inpainting=false", "model.generator.use_sketch=false",
                                "model.generator.sketch_fraction=0", "model.generator.tryon.fraction=0",
                                "train.stages=[generate]", "train.generate.max_steps=1"])
    run_training(recipe, tmp_path / "data", tmp_path / "run")
    person = tmp_path / "p.png"
    Image.new("RGB", (32, 32), "white").save(person)
    for request, message in ((GenerationRequest(text="red", person=person, mask=person), "inpainting"),
                             (GenerationRequest(text="red", sketch=person), "use_sketch")):
        with pytest.raises(UserError, match=message):
            generate_images(tmp_path / "run", request)


# --- bench -----------------------------------------------------------------------------------


def test_bench_tryon_reports_model_and_both_baselines(tiny_phase1, tmp_path):
    from unifashion_core.evaluation.bench_tryon import bench_tryon

    report = bench_tryon(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "bench", max_items=4, steps=2)
    paired = report["paired"]
    assert paired["num_pairs"] == 4
    for method in ("model", "mean_colour", "untrained"):
        assert {"ssim", "ssim_mask", "psnr", "psnr_mask", "fid", "kid_mean"} <= paired[method].keys()
        assert paired[method]["changed_outside_mask"] == 0.0
        assert paired[method]["ssim_mask"] < paired[method]["ssim"] <= 1.0
    assert report["unpaired"]["num_pairs"] == 4 and report["unpaired"]["changed_outside_mask"] == 0.0
    assert {"edge_iou", "fid"} <= report["design"]["with_sketch"].keys()
    # 4 people: FID/KID would be noise (bench fid refuses fewer than 50), so they are not computed
    assert paired["model"]["fid"] is None and "not computed from 4 images" in paired["model"]["fid_note"]
    assert "offline" in report["lpips"]
    saved = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert saved["checkpoint_fingerprint"] and saved["manifest_sha256"] and saved["resolution"] == 32
    assert (tmp_path / "bench" / "tryon.png").is_file() and (tmp_path / "bench" / "design.png").is_file()
    assert "| mean_colour |" in report.markdown and "| untrained |" in report.markdown


def test_bench_tryon_refuses_data_without_tryon_items(tiny_phase1, tmp_path):
    from unifashion_core.data.adapters.demo import prepare_demo
    from unifashion_core.evaluation.bench_tryon import bench_tryon

    prepare_demo(tmp_path / "data", num_items=40, image_size=32, num_tryon=0)
    with pytest.raises(UserError, match="no try-on items"):
        bench_tryon(tiny_phase1 / "phase1", tmp_path / "data", tmp_path / "bench")
    with pytest.raises(UserError, match="--queries"):
        bench_tryon(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "bench", queries="sketch")


def test_demo_walkthrough_shows_a_tryon_row(tiny_phase1, tmp_path):
    from unifashion_core.walkthrough import TRYON_EXAMPLES, _render_tryon, _tryon

    paths = {"data": tiny_phase1 / "data", "run": tiny_phase1 / "phase1", "demo": tmp_path / "demo",
             "bench": tmp_path / "bench", "cache": tmp_path / "cache"}
    stage = _tryon(paths, quick=True, progress=NullProgress())
    assert len(stage["examples"]) == TRYON_EXAMPLES
    for row in stage["examples"]:
        person = np.asarray(Image.open(paths["demo"] / row["person"]).convert("RGB"))
        result = np.asarray(Image.open(paths["demo"] / row["result"]).convert("RGB"))
        kept = np.asarray(Image.open(paths["demo"] / row["mask"]).convert("L")) < 128
        assert result.shape == person.shape and np.array_equal(result[kept], person[kept])
    lines = "\n".join(_render_tryon(stage))
    assert "| person | garment | mask | result |" in lines and stage["examples"][0]["result"] in lines


@pytest.mark.slow
def test_bench_tryon_on_the_vitonhd_examples(shared_data, tiny_phase1, tmp_path):
    """Seven real people with derived masks, dressed from their own garment's MGD caption."""
    from unifashion_core.data.prepare import prepare
    from unifashion_core.evaluation.bench_tryon import bench_tryon

    prepare("vitonhd", tmp_path / "viton", shared_data / "vitonhd-examples")
    with pytest.raises(UserError, match="--queries text"):
        bench_tryon(tiny_phase1 / "phase1", tmp_path / "viton", tmp_path / "bench")
    report = bench_tryon(tiny_phase1 / "phase1", tmp_path / "viton", tmp_path / "bench", queries="text", steps=2)
    assert report["paired"]["num_pairs"] == 7 and report["unpaired"]["num_pairs"] == 14
    assert report["paired"]["model"]["changed_outside_mask"] == 0.0
    assert report["design"]["num_items"] == 14
