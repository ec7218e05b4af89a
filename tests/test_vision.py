"""Vision encoders: shapes, normalisation, EfficientNet-Lite0 weights (strict, pinned digest)."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from unifashion_core.config import VisionConfig
from unifashion_core.errors import UserError
from unifashion_core.models import weights
from unifashion_core.models.vision import (
    CLIP_MEAN,
    CLIP_STD,
    EfficientNetLite0,
    build_vision_encoder,
    preprocess,
)

LITE0_FILE = "efficientnet-lite0-57934424.pth"


def _pattern_image(seed: int, size: tuple[int, int] = (60, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = (rng.random((size[1] // 10, size[0] // 10, 3)) * 255).astype(np.uint8)
    return Image.fromarray(array).resize(size, Image.Resampling.NEAREST)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return build_vision_encoder(VisionConfig(name="efficientnet_lite0", image_size=224))


def test_tiny_encoder_shape_and_seeded_init() -> None:
    torch.manual_seed(3)
    first = build_vision_encoder(VisionConfig(name="tiny", image_size=64))
    torch.manual_seed(3)
    second = build_vision_encoder(VisionConfig(name="tiny", image_size=64))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = first(pixels)
        assert torch.equal(tokens, second(pixels))
    assert tokens.shape == (2, 16, 64)
    assert first.num_channels == 64
    assert not first.training and not any(p.requires_grad for p in first.parameters())


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(UserError, match="tiny, efficientnet_lite0, blip2"):
        VisionConfig(name="resnet50")


def test_preprocess_pads_resizes_and_normalises() -> None:
    encoder = build_vision_encoder(VisionConfig(name="tiny", image_size=32))
    encoder.mean, encoder.std = CLIP_MEAN, CLIP_STD
    white = Image.new("RGB", (40, 100), (255, 255, 255))  # aspect 2.5: padded with white
    grey = Image.new("L", (50, 50), 0)  # greyscale is converted to RGB
    pixels = preprocess([white, grey], encoder)
    assert pixels.shape == (2, 3, 32, 32)
    expected_white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    expected_black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0, :, 16, 16], expected_white)
    torch.testing.assert_close(pixels[1, :, 16, 16], expected_black)


def test_efficientnet_loads_packaged_weights_strictly(lite0: EfficientNetLite0) -> None:
    path = weights.resolve_local_file(weights.EFFICIENTNET_LITE0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(lite0.state_dict()) == set(state) - {"_fc.weight", "_fc.bias"}
    torch.testing.assert_close(
        lite0._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"]
    )
    assert (lite0.num_channels, lite0.mean, lite0.std) == (1280, (0.5,) * 3, (0.5,) * 3)


def test_efficientnet_tokens_are_deterministic_and_image_dependent(
    lite0: EfficientNetLite0,
) -> None:
    pixels = preprocess([_pattern_image(0), _pattern_image(1)], lite0)
    with torch.no_grad():
        tokens = lite0(pixels)
        again = lite0(pixels[:1])
    assert tokens.shape == (2, 49, 1280)  # (224 / 32)^2 tokens
    torch.testing.assert_close(again[0], tokens[0], atol=1e-5, rtol=1e-5)
    assert (tokens[0] - tokens[1]).abs().max() > 0.1
    assert tokens.min() >= 0 and tokens.max() <= 6  # ReLU6 after the head


def test_efficientnet_handles_odd_sizes(lite0: EfficientNetLite0) -> None:
    with torch.no_grad():
        tokens = lite0(torch.zeros(1, 3, 100, 100))  # TF "SAME" padding: ceil(100 / 32) = 4
    assert tokens.shape == (1, 16, 1280)


def test_efficientnet_refuses_a_file_with_the_wrong_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.PINNED_SHA256, LITE0_FILE, "0" * 64)
    with pytest.raises(UserError, match="pinned SHA-256"):
        build_vision_encoder(VisionConfig(name="efficientnet_lite0"))


def test_efficientnet_refuses_a_file_that_is_not_its_state_dict(tmp_path) -> None:
    bogus = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    with pytest.raises(UserError, match="not an EfficientNet-Lite0 state dict"):
        build_vision_encoder(VisionConfig(name="efficientnet_lite0", weights=str(bogus)))


def test_efficientnet_recognises_real_garments(lite0: EfficientNetLite0, shared_data) -> None:
    """Pooled tokens + the file's ImageNet head name real T-shirts and jeans (checks the net)."""
    root = shared_data / "fashion-product-1k"
    path = weights.resolve_local_file(weights.EFFICIENTNET_LITE0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {"10469": 610, "2265": 610, "7069": 610, "11304": 608}  # jersey/T-shirt, jean
    with open(root / "sample_styles.csv", encoding="utf-8") as handle:
        known = {row["id"] for row in csv.DictReader(handle)}
    assert set(expected) <= known
    images = [Image.open(root / "images" / f"{item}.jpg") for item in expected]
    with torch.no_grad():
        features = lite0(preprocess(images, lite0)).mean(dim=1)  # (B, 1280)
    logits = features @ state["_fc.weight"].T + state["_fc.bias"]  # (B, 1000)
    top2 = logits.topk(2, dim=-1).indices.tolist()
    assert all(label in top for label, top in zip(expected.values(), top2, strict=True))


def test_blip2_encoder_needs_weights() -> None:
    with pytest.raises(UserError, match="needs weights"):
        build_vision_encoder(VisionConfig(name="blip2"))


def test_blip2_encoder_offline_hub_id_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="could not load weights"):
        build_vision_encoder(VisionConfig(name="blip2", weights="nobody-here/not-a-model"))
