"""Phase 1a training the vision encoder's top stages (`model.vision.trainable_blocks`): the split into a
cached trunk and a trained top, what the checkpoint stores, and loading it back."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.config import VisionConfig, load_recipe
from unifashion_core.data.adapters.demo import prepare_demo
from unifashion_core.errors import UserError
from unifashion_core.models.vision import build_vision_encoder, trainable_prefixes
from unifashion_core.train.phase1 import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
LITE0 = ["model.vision.name=efficientnet_lite0", "model.vision.image_size=64"]


@pytest.mark.parametrize("name, size", [("tiny", 32), ("efficientnet_lite0", 64)])
def test_trunk_then_top_is_the_whole_encoder(name, size):
    encoder = build_vision_encoder(VisionConfig(name=name, image_size=size))
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        whole = encoder(pixels)
        for num_top in (0, 1, 2, 3):
            torch.testing.assert_close(encoder.top(encoder.trunk(pixels, num_top), num_top), whole)
    names = {n for n, _ in encoder.named_parameters()}
    top = {n for n, p in encoder.named_parameters() if any(p is q for q in encoder.top_parameters(2))}
    assert top and top < names
    assert all(n.startswith(trainable_prefixes(VisionConfig(name=name, trainable_blocks=2))) for n in top)


def test_trainable_blocks_are_checked():
    with pytest.raises(UserError, match="18 stages"):
        build_vision_encoder(VisionConfig(name="efficientnet_lite0", trainable_blocks=19))
    with pytest.raises(UserError, match=">= 0"):
        VisionConfig(trainable_blocks=-1)
    with pytest.raises(UserError, match="cannot train its top"):
        trainable_prefixes(VisionConfig(name="blip2", trainable_blocks=1))


def test_phase1a_trains_the_top_stages_and_the_checkpoint_stores_only_them(tmp_path):
    prepare_demo(tmp_path / "data", num_items=40, image_size=64)
    recipe = load_recipe(TINY, [*LITE0, "model.vision.trainable_blocks=2", "train.stages=[retrieval]",
                                "train.retrieval.max_steps=2", "train.eval_max_items=8"])
    run_training(recipe, tmp_path / "data", tmp_path / "run", cache_dir=tmp_path / "cache")
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    stored = {k for k in weights if k.startswith("vision.")}
    assert stored and all(k.startswith(("vision._blocks.15.", "vision._conv_head.", "vision._bn1.")) for k in stored)
    assert list((tmp_path / "cache").rglob("trunk2-*/*.npy"))  # the frozen trunk is what is cached
    trained = load_checkpoint(tmp_path / "run").model.vision.state_dict()
    pretrained = build_vision_encoder(recipe.model.vision).state_dict()
    for key, value in trained.items():
        changed = not torch.equal(value, pretrained[key])
        assert changed == (f"vision.{key}" in stored and not key.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked"))), key
