"""Safe image loading: every mode becomes RGB, huge or broken files are refused with a reason."""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unifashion_core.errors import UserError

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 64_000_000  # refuse anything larger instead of exhausting memory


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB (CMYK, 16-bit, palette and alpha are converted; alpha onto white).

    Raises:
        ImageError: with reason ``missing``, ``empty``, ``too_large`` or ``unreadable``.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ImageError("empty", f"{path} is a 0-byte file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    "too_large", f"{path} is {width}x{height}, over the {max_pixels:,}-pixel limit"
                )
            image = ImageOps.exif_transpose(image)
            image.load()
            return _to_rgb(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("unreadable", f"{path} could not be decoded ({exc})") from exc


def load_user_image(path: str | Path) -> Image.Image:
    """Open an image the user named on the command line; problems become a UserError."""
    try:
        return open_image(path)
    except ImageError as exc:
        raise UserError(f"cannot use image: {exc}.") from exc


def pad_to_aspect(image: Image.Image, max_aspect: float = 1.25, fill: int = 255) -> Image.Image:
    """Pad the short side so that long/short <= max_aspect (the paper pads before resizing)."""
    width, height = image.size
    if max(width, height) / min(width, height) <= max_aspect:
        return image
    if width > height:
        new_size = (width, int(round(width / max_aspect)))
    else:
        new_size = (int(round(height / max_aspect)), height)
    canvas = Image.new("RGB", new_size, (fill, fill, fill))
    canvas.paste(image, ((new_size[0] - width) // 2, (new_size[1] - height) // 2))
    return canvas


def image_to_array(image: Image.Image, size: int) -> np.ndarray:
    """Pad to aspect <= 1.25, resize bicubic to (size, size), return float32 (3, H, W) in [0, 1]."""
    image = pad_to_aspect(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def pixel_values(paths: list[Path], size: int) -> "torch.Tensor":
    """Images at ``paths`` padded and resized to ``size``, in [-1, 1]: (N, 3, size, size).

    Raises:
        UserError: an image that cannot be read (callers pass images already known to be readable,
            e.g. those kept by the feature pass).
    """
    import torch  # the adapters use this module too, and they need no torch

    arrays = []
    for path in paths:
        try:
            arrays.append(torch.from_numpy(image_to_array(open_image(path), size)))
        except ImageError as exc:
            raise UserError(f"image {path} became unreadable during the run ({exc}).") from exc
    return torch.stack(arrays) * 2 - 1 if arrays else torch.empty(0, 3, size, size)
