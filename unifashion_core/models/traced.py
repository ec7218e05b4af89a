"""The query encoders as TorchScript graphs for the server, so that embedding does not wait for the GIL.

An eager forward pass is hundreds of small ops, and the model thread takes the GIL back between
them. Under load the HTTP threads hold it, and each hand-back can wait the interpreter's switch
interval (5 ms): a one-text pass that takes 9 ms alone took 1.5 s next to one busy Python thread
(measured on the demo's checkpoint; 30 ms traced). A traced graph runs its ops in C++ with the GIL
released. Each graph is checked against the eager model on a second input shape before it is used;
an encoder that cannot be traced, or whose graph disagrees, stays eager (``fallbacks`` says why).
"""

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from unifashion_core.models.unifashion import UniFashion

TOLERANCE = 1e-4  # max |traced - eager| over the check batch's unit-norm embeddings
EXAMPLE_TEXTS = ("a red striped long-sleeve shirt with a round collar", "blue dress")
CHECK_TEXTS = ("black trousers", "looking for a green polka-dot midi skirt in cotton please", "shirt")


class _Text(nn.Module):
    def __init__(self, model: UniFashion) -> None:
        super().__init__()
        self.qformer = model.qformer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.qformer.encode_text(input_ids, attention_mask).embeds  # (B, D)


class _Image(nn.Module):
    def __init__(self, model: UniFashion) -> None:
        super().__init__()
        self.vision, self.qformer = model.vision, model.qformer

    def forward(self, pixels: Tensor) -> Tensor:
        return self.qformer.encode_image(self.vision(pixels).float()).embeds  # (B, Q, D)


class _Composed(nn.Module):
    def __init__(self, model: UniFashion) -> None:
        super().__init__()
        self.vision, self.qformer = model.vision, model.qformer

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.qformer.encode_multimodal(self.vision(pixels).float(), input_ids, attention_mask).embeds  # (B, D)


class QueryEncoders:
    """Text, image and composed query embeddings of one (eval-mode) model, traced where possible.

    Args:
        model: the query model; its weights are shared with the graphs, not copied.
    """

    def __init__(self, model: UniFashion) -> None:
        from unifashion_core.models.vision import preprocess

        self.model = model
        self._preprocess = preprocess
        self.fallbacks: dict[str, str] = {}
        side = model.vision.image_size
        example = [Image.new("RGB", (side, side), (200, 40, 40)),
                   Image.new("RGB", (side, side * 5 // 4), (20, 30, 160))]
        check = example + [Image.new("RGB", (side, side), (240, 240, 240))]
        self._text = self._trace("text", _Text(model), self._text_inputs(list(EXAMPLE_TEXTS)),
                                 self._text_inputs(list(CHECK_TEXTS)))
        self._image = self._trace("image", _Image(model), (self._pixels(example),), (self._pixels(check),))
        self._composed = self._trace(
            "composed", _Composed(model), (self._pixels(example), *self._text_inputs(list(EXAMPLE_TEXTS))),
            (self._pixels(check), *self._text_inputs(list(CHECK_TEXTS))))

    def texts(self, texts: list[str]) -> np.ndarray:
        """``(B, D)`` text embeddings."""
        return self._run(self._text, self._text_inputs(texts))

    def images(self, images: list[Image.Image]) -> np.ndarray:
        """``(B, Q, D)`` image query embeddings."""
        return self._run(self._image, (self._pixels(images),))

    def composed(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """``(B, D)`` fused embeddings of reference images and modification texts."""
        return self._run(self._composed, (self._pixels(images), *self._text_inputs(texts)))

    def _text_inputs(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.model.tokenize(texts)

    def _pixels(self, images: list[Image.Image]) -> Tensor:
        return self._preprocess(images, self.model.vision).to(self.model.device)

    @staticmethod
    def _run(encoder: Callable[..., Tensor], inputs: tuple[Tensor, ...]) -> np.ndarray:
        with torch.inference_mode():
            return encoder(*inputs).float().cpu().numpy()

    def _trace(self, name: str, module: nn.Module, example: tuple[Tensor, ...],
               check: tuple[Tensor, ...]) -> Callable[..., Tensor]:
        """``module`` traced on ``example`` if its graph gives the eager output on ``check``, else ``module``."""
        module.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python values baked into the graph
                traced: Any = torch.jit.trace(module, example, check_trace=False)
                difference = (traced(*check) - module(*check)).abs().max().item()
        except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the eager module in place
            self.fallbacks[name] = f"tracing failed ({type(exc).__name__}: {exc})"
            return module
        if not difference <= TOLERANCE:
            self.fallbacks[name] = f"the traced graph differs from the model by {difference:.2g} on another shape"
            return module
        return traced
