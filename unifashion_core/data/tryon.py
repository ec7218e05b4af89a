"""Try-on and design inputs as the generator takes them: person, agnostic mask, sketch
(docs/design.md section 10).

The same conversions serve the training data (VITON-HD, MGD, the demo's drawn people: an item's
``extras``), ``unifashion generate --person --mask --sketch`` and ``bench tryon``:

- geometry: like garment images, padded to an aspect ratio of at most 1.25 and resized to a
  square of the generator's side (``images.image_to_array``); :func:`paste_result` undoes it;
- mask: white marks the region to generate; a pixel is generated where its value, resized by
  area, is at least half of white (so a grey or anti-aliased mask is thresholded);
- sketch: lines on a plain background in either polarity (the majority colour is the
  background); resized by area, a pixel is on a line where at least ``SKETCH_COVER`` of its area
  was. Without a sketch file, :func:`edges` draws one from an image (design from a sketch).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from unifashion_core.data.images import ImageError, image_to_array, open_image, pad_geometry, pad_to_aspect
from unifashion_core.data.manifest import Dataset, Item
from unifashion_core.errors import UserError

TRYON_EXTRAS = ("person", "mask")  # what makes an item a try-on example (``sketch`` is optional)
MASK_THRESHOLD = 0.5
SKETCH_COVER = 0.2
EDGE_THRESHOLD = 0.25  # Sobel magnitude (per channel, of a [0, 1] image) that counts as an edge
_SOBEL = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4


@dataclass(frozen=True)
class TryOnInputs:
    """Try-on examples as float32 arrays, batch first, at one square side S.

    Attributes:
        pixel_values: (B, 3, S, S) the person in [-1, 1] (the training target).
        mask: (B, 1, S, S) 1 where the image is generated, else 0.
        sketch: (B, 1, S, S) 1 on the sketch's lines, else 0 (all 0 without a sketch).
    """

    pixel_values: np.ndarray
    mask: np.ndarray
    sketch: np.ndarray

    @property
    def masked_pixel_values(self) -> np.ndarray:
        """(B, 3, S, S) the person with the region to generate set to 0 (mid-grey)."""
        return self.pixel_values * (1 - self.mask)


def has_tryon(item: Item) -> bool:
    """Whether an item carries a try-on example: a person image and its agnostic mask."""
    return all(key in item.extras for key in TRYON_EXTRAS)


def tryon_inputs(person: Image.Image, mask: Image.Image, sketch: Image.Image | None, size: int) -> TryOnInputs:
    """One example from its images (same size; RGB as ``open_image`` gives them) at side ``size``."""
    pixel_values = image_to_array(person, size) * 2 - 1  # (3, S, S)
    mask_array = mask_to_array(mask, size) >= MASK_THRESHOLD  # (S, S)
    sketch_array = sketch_to_array(sketch, size) if sketch is not None else np.zeros((size, size), np.float32)
    return TryOnInputs(pixel_values[None], mask_array[None, None].astype(np.float32), sketch_array[None, None])


def load_tryon(dataset: Dataset, item: Item, size: int) -> TryOnInputs:
    """The try-on example of ``item`` (its ``person``, ``mask`` and optional ``sketch`` extras).

    Raises:
        UserError: an extra that cannot be read (prepare left out those it could not read then).
    """
    def read(key: str) -> Image.Image:
        try:
            return open_image(dataset.image_path(item, key))
        except ImageError as exc:
            raise UserError(f"the {key} image of item {item.id} became unreadable during the run ({exc}).") from exc

    sketch = read("sketch") if "sketch" in item.extras else None
    return tryon_inputs(read("person"), read("mask"), sketch, size)


def stack_tryon(examples: list[TryOnInputs]) -> TryOnInputs:
    """Examples of one side concatenated along the batch."""
    return TryOnInputs(*(np.concatenate([getattr(e, name) for e in examples])
                         for name in ("pixel_values", "mask", "sketch")))


def mask_to_array(mask: Image.Image, size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: the mask's brightness, padded with 0 (keep) and area-resized."""
    square = pad_to_aspect(mask, fill=0).resize((size, size), Image.Resampling.BOX)
    return np.asarray(square.convert("L"), np.float32) / 255


def sketch_to_array(sketch: Image.Image, size: int) -> np.ndarray:
    """(S, S) float32 in {0, 1}: 1 on the sketch's lines (either polarity), padded as background."""
    grey = sketch.convert("L")
    if np.asarray(grey, np.float32).mean() > 127.5:  # dark lines on white paper
        grey = ImageOps.invert(grey)
    square = pad_to_aspect(grey.convert("RGB"), fill=0).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(square.convert("L"), np.float32) / 255 >= SKETCH_COVER).astype(np.float32)


def edges(image: np.ndarray) -> np.ndarray:
    """Edge map of an image: where the Sobel gradient of some colour channel is strong.

    Args:
        image: (3, H, W) or (H, W, 3) float in [0, 1].

    Returns:
        (H, W) float32, 1 on edges and 0 elsewhere (the sketch of an image).
    """
    array = np.asarray(image, np.float32)
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)  # (H, W, 3)
    padded = np.pad(array, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = array.shape[:2]
    gx = sum(_SOBEL[i, j] * padded[i:i + height, j:j + width] for i in range(3) for j in range(3))
    gy = sum(_SOBEL[j, i] * padded[i:i + height, j:j + width] for i in range(3) for j in range(3))
    magnitude = np.sqrt(gx**2 + gy**2).max(axis=-1)  # (H, W)
    return (magnitude >= EDGE_THRESHOLD).astype(np.float32)


def paste_result(person: Image.Image, mask: np.ndarray, generated: np.ndarray) -> Image.Image:
    """The person with the generated square put back into the masked region, at full size.

    Args:
        person: the input person image (RGB, W x H).
        mask: (H, W) bool, True where the image was generated (the thresholded input mask).
        generated: (3, S, S) float in [0, 1], the generator's output for the padded square.

    Returns:
        An RGB image of W x H whose pixels outside ``mask`` are the input's, byte for byte.
    """
    width, height = person.size
    canvas_w, canvas_h, left, top = pad_geometry(width, height)
    square = Image.fromarray((np.clip(generated, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
    result = square.resize((canvas_w, canvas_h), Image.Resampling.BICUBIC).crop((left, top, left + width, top + height))
    return Image.fromarray(np.where(mask[..., None], np.asarray(result), np.asarray(person)))


def full_mask(mask: Image.Image) -> np.ndarray:
    """(H, W) bool at the mask's own size: True where it is at least half of white."""
    return np.asarray(mask.convert("L"), np.float32) / 255 >= MASK_THRESHOLD
