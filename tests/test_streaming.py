"""Training data that does not have to fit in memory: shards on disk, the sharded feature cache
(reuse, rebuild of a cut-short or foreign shard, a new cache for an edited manifest), query
statistics in pieces, DataLoader workers, and watching a run (curves.png, trackers)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unifashion_core.config import VisionConfig, load_recipe
from unifashion_core.data.adapters.demo import prepare_demo
from unifashion_core.data.images import open_image
from unifashion_core.data.manifest import load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_memory import repeat_dataset
from unifashion_core.features import cached_tokens, feature_cache_dir, image_tokens
from unifashion_core.models.generator import query_moments
from unifashion_core.models.vision import build_vision_encoder, preprocess
from unifashion_core.progress import CallbackProgress
from unifashion_core.shards import Rows, open_shard, write_shard
from unifashion_core.train.phase1 import run_training
from unifashion_core.train.setup import build_accelerator

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"


def test_rows_read_back_what_was_written_and_a_shard_cut_short_is_refused(tmp_path):
    arrays = [np.random.default_rng(k).standard_normal((n, 3, 4)).astype(np.float16) for k, n in enumerate((5, 7))]
    for number, array in enumerate(arrays):
        write_shard(tmp_path, f"s{number}", array, {"what": number})
    shards = [open_shard(tmp_path, f"s{number}")[0] for number in range(2)]
    rows = Rows.sequential(shards)
    whole = np.concatenate(arrays)
    assert len(rows) == 12 and rows[7].shape == (3, 4)
    for index, expected in (([3, 11, 3, 0], whole[[3, 11, 3, 0]]), (torch.tensor([6, 5]), whole[[6, 5]]),
                            (slice(2, 9), whole[2:9])):
        assert np.array_equal(rows[index].numpy(), expected)
    assert [piece.shape[0] for piece in rows.pieces()] == [5, 7]
    assert np.array_equal(rows.select([9, 1])[1:].numpy(), whole[[1]])
    path = tmp_path / "s1.npy"
    path.write_bytes(path.read_bytes()[:-10])  # a copy that stopped, a disk that lost its tail
    shard, record, problem = open_shard(tmp_path, "s1")
    assert shard is None and record["what"] == 1 and "cut short" in problem


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    prepare_demo(tmp_path / "data", num_items=80, image_size=32)
    return tmp_path / "data"


def _counting_vision() -> tuple[torch.nn.Module, list[int]]:
    torch.manual_seed(0)
    vision = build_vision_encoder(VisionConfig(name="tiny", image_size=64))
    seen: list[int] = []
    vision.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    return vision, seen


def test_feature_cache_is_reused_rebuilt_when_cut_short_or_foreign_and_renewed_with_the_manifest(demo, tmp_path):
    vision, seen = _counting_vision()
    dataset = load_dataset(demo)
    items = dataset.split("train")
    cache = feature_cache_dir(tmp_path / "cache", dataset)
    reference = image_tokens(vision, dataset, items, None)[1]  # computed in memory, batches of 32
    kept, rows, skipped = cached_tokens(vision, dataset, items, cache, batch_size=32)
    assert kept == items and not skipped.entries and torch.equal(rows.load(), reference)
    assert sum(seen) == 2 * len(items)  # once in memory, once into the cache
    seen.clear()
    assert torch.equal(cached_tokens(vision, dataset, items, cache)[1].load(), reference) and not seen
    folder = cache / next(path.name for path in cache.iterdir())
    shard = sorted(folder.glob("*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    logs: list[str] = []
    again = cached_tokens(vision, dataset, items, cache, CallbackProgress(logs.append))[1].load()
    assert torch.equal(again, reference) and 0 < sum(seen) <= 256
    assert any("cut short" in line and shard.name in line for line in logs)
    record = shard.with_suffix(".json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "vision_fingerprint": "0" * 16}))
    logs.clear()
    assert torch.equal(cached_tokens(vision, dataset, items, cache, CallbackProgress(logs.append))[1].load(),
                       reference)
    assert any("another vision model or manifest" in line for line in logs)
    edited = (demo / "manifest.jsonl").read_text().replace('"caption": "', '"caption": "new ', 1)
    (demo / "manifest.jsonl").write_text(edited)
    changed = load_dataset(demo)
    assert changed.report["manifest_sha256"] == dataset.manifest_hash != changed.manifest_hash  # from the files
    seen.clear()
    renewed = cached_tokens(vision, changed, changed.split("train"), feature_cache_dir(tmp_path / "cache", changed))
    assert sum(seen) == len(items) and torch.equal(renewed[1].load(), reference)  # a new cache, computed afresh


def test_mirrored_features_are_those_of_the_mirrored_images_and_cached_apart(demo, tmp_path):
    """``flipped=True`` (phase 1a's ``data.image_flip``): each row is the encoder's tokens of the image
    mirrored left-right, in a cache folder of its own; the plain features stay as they were."""
    vision, seen = _counting_vision()
    dataset = load_dataset(demo)
    items = dataset.split("train")[:10]
    cache = feature_cache_dir(tmp_path / "cache", dataset)
    plain = cached_tokens(vision, dataset, items, cache)[1].load()
    kept, rows, _ = cached_tokens(vision, dataset, items, cache, flipped=True)
    images = [open_image(dataset.image_path(item)).transpose(Image.Transpose.FLIP_LEFT_RIGHT) for item in kept]
    with torch.no_grad():
        expected = vision(preprocess(images, vision).contiguous(memory_format=torch.channels_last))
    assert kept == items and torch.equal(rows.load(), expected.to(torch.float16))
    assert not torch.equal(rows.load(), plain)
    assert sorted(path.name.split("-")[0:2] == ["tokens", "flip"] for path in cache.iterdir()) == [False, True]
    seen.clear()
    assert torch.equal(cached_tokens(vision, dataset, items, cache, flipped=True)[1].load(), rows.load())
    assert torch.equal(cached_tokens(vision, dataset, items, cache)[1].load(), plain) and not seen


def test_unreadable_images_are_skipped_logged_and_tried_again(demo, tmp_path):
    vision, seen = _counting_vision()
    dataset = load_dataset(demo)
    items = dataset.split("train")
    (demo / items[3].image).write_bytes(b"not a png")
    cache = feature_cache_dir(tmp_path / "cache", dataset)
    for _ in range(2):
        kept, rows, skipped = cached_tokens(vision, dataset, items, cache)
        assert len(kept) == len(rows) == len(items) - 1 and items[3] not in kept
        assert skipped.counts() == {"item:unreadable": 1}
    Image.new("RGB", (32, 32), "red").save(demo / items[3].image, format="PNG")
    assert len(cached_tokens(vision, dataset, items, cache)[0]) == len(items)


def test_query_statistics_in_pieces_equal_those_of_the_whole():
    queries = torch.randn(300, 4, 8) * 3 + 1
    whole = query_moments([queries])
    assert all(torch.equal(a, b) for a, b in zip(whole, (queries.mean(0), queries.std(0),
                                                         queries.pow(2).mean().sqrt()), strict=True))
    pieces = query_moments([queries[:64], queries[64:200], queries[200:]])
    for a, b in zip(pieces, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _trained(tiny_phase1: Path, out: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    recipe = load_recipe(TINY, ["train.stages=[retrieval,generate]", "train.retrieval.max_steps=1",
                                "train.generate.max_steps=1", *overrides])
    run_training(recipe, tiny_phase1 / "data", out, cache_dir=out.parent / "cache")
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_dataloader_workers_train_exactly_as_the_trainer_alone(tiny_phase1, tmp_path):
    alone = _trained(tiny_phase1, tmp_path / "alone", [])
    workers = _trained(tiny_phase1, tmp_path / "workers", ["train.num_workers=2"])
    assert all(torch.equal(alone[key], workers[key]) for key in alone)
    assert not (tmp_path / "workers" / ".frozen").exists()  # removed when the run ends


def test_a_run_draws_its_curves_and_writes_to_tensorboard(tiny_phase1, tmp_path):
    pytest.importorskip("tensorboard")
    recipe = load_recipe(TINY, ["train.stages=[retrieval]", "train.retrieval.max_steps=3",
                                "train.log_with=tensorboard"])
    run_training(recipe, tiny_phase1 / "data", tmp_path / "run")
    with Image.open(tmp_path / "run" / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size[0] > 500
    events = list((tmp_path / "run" / "tracking").rglob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0


def test_bf16_autocast_trains_on_a_cpu_only_where_it_has_bf16_instructions(tiny_phase1, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from unifashion_core.checkpoint import read_meta
    from unifashion_core.train import setup

    bf16 = load_recipe(TINY, ["train.mixed_precision=bf16"])
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: False)  # emulated bf16 is slower: float32
    assert build_accelerator(bf16, tmp_path).mixed_precision == "no"
    assert setup.training_precision("fp16", cuda=False) == "no"
    assert setup.training_precision("fp16", cuda=True) == "fp16"
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    recipe = load_recipe(TINY, ["train.mixed_precision=bf16", "train.stages=[retrieval]",
                                "train.retrieval.max_steps=2"])
    result = run_training(recipe, tiny_phase1 / "data", tmp_path / "run")
    assert read_meta(result.checkpoint)["mixed_precision"] == "bf16"  # the precision used, not the one asked for
    assert np.isfinite(result.metrics["retrieval/loss"])
    assert all(value.dtype == torch.float32 for value in load_file(str(result.checkpoint / "model.safetensors"))
               .values() if value.is_floating_point())  # autocast: the weights stay float32


def test_bad_training_settings_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="num_workers"):
        load_recipe(TINY, ["train.num_workers=-1"])
    with pytest.raises(UserError, match="tensorboard, wandb"):
        load_recipe(TINY, ["train.log_with=mlflow"])
    if __import__("importlib").util.find_spec("wandb") is None:
        with pytest.raises(UserError, match="pip install wandb"):
            build_accelerator(load_recipe(TINY, ["train.log_with=wandb"]), tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="2 processes on this machine but only 1 GPUs"):
        build_accelerator(load_recipe(TINY), tmp_path)


def test_the_memory_bench_repeats_the_demo_with_its_own_ids_and_image_files(demo, tmp_path):
    base = load_dataset(demo)
    count = len(base.items) + 40  # every item once, some twice
    repeated = load_dataset(repeat_dataset(demo, tmp_path / "repeated", count))
    assert len(repeated.items) == count and len({item.id for item in repeated.items}) == count
    assert len({item.image for item in repeated.items}) == count
    first, copy = base.items[0], next(item for item in repeated.items if item.id == f"{base.items[0].id}~1")
    assert (copy.caption, copy.split) == (first.caption, first.split)
    assert os.path.samefile(repeated.image_path(copy), base.image_path(first))  # a hard link, not a copy
    ids = {item.id for item in repeated.items}
    assert repeated.triplets and all({t.reference, t.target} <= ids for t in repeated.triplets)
    worn = [item for item in repeated.items if item.extras]  # try-on people, masks, sketches come along
    assert worn and all(repeated.image_path(item, key).is_file() for item in worn for key in item.extras)


def test_the_memory_bench_compares_the_largest_size_with_both_runs_of_the_smallest() -> None:
    from unifashion_core.evaluation.bench_memory import _drift, _ratios

    def row(size: int, repeat: int, phase: int, rss: float, seconds: dict[str, float]) -> dict:
        return {"num_items": size, "repeat": repeat, "phase": phase, "peak_rss_mib": rss, "seconds_per_step": seconds}

    rows = [row(100, 0, 1, 1000, {"retrieval": 1.0}), row(100, 0, 2, 800, {"phase2": 2.0}),
            row(1000, 0, 1, 1200, {"retrieval": 1.5}), row(1000, 0, 2, 800, {"phase2": 3.0}),
            row(100, 1, 1, 1000, {"retrieval": 2.0}), row(100, 1, 2, 1200, {"phase2": 4.0})]  # the machine slowed 2x
    ratios = _ratios(rows, (100, 1000))
    assert ratios == {"peak_rss/phase1": 1.2, "peak_rss/phase2": 0.8, "seconds_per_step/retrieval": 1.0,
                      "seconds_per_step/phase2": 1.0}
    assert _drift(rows, 100) == {"retrieval": 2.0, "phase2": 2.0}
