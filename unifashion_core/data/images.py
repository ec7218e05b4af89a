"""Safe image loading: every mode becomes RGB, huge or broken files are refused with a reason."""

import contextlib
import io
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unifashion_core.errors import UserError

if TYPE_CHECKING:
    import torch

# The one pixel limit: ``open_image`` refuses larger images, and PIL's own decompression-bomb
# check is set to the same number while it runs (so PIL never refuses first with another one).
MAX_PIXELS = 64_000_000
# What PIL raises on a corrupt file, besides its own exceptions; a decoder knows no better.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError)
_PIL_LIMIT_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is global: one open_image at a time


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short machine-friendly tag.

    Reasons: ``missing``, ``empty``, ``too_large``, ``truncated``, ``unsupported_mode``,
    ``unreadable``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's decompression-bomb check set to ``max_pixels`` and turned into an error."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _decode(source: Path | BinaryIO, max_pixels: int) -> Image.Image:
    """The first frame of ``source``, EXIF orientation applied, pixels loaded (PIL errors pass).

    ``Image.open`` reads only the header and refuses an image over ``max_pixels`` before any
    pixel is decoded.
    """
    with _pil_pixel_limit(max_pixels), Image.open(source) as image:
        image.seek(0)  # animated images: the first frame
        image.load()
        return ImageOps.exif_transpose(image)


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB (CMYK, 16-bit, palette and alpha are converted; alpha onto white).

    The EXIF orientation is applied and an animated image gives its first frame.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (``MAX_PIXELS`` by default).

    Raises:
        ImageError: with reason ``missing``, ``empty``, ``too_large``, ``truncated``,
            ``unsupported_mode`` or ``unreadable``.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("missing", f"{path} is not a file" if path.exists() else f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ImageError("empty", f"{path} is a 0-byte file")
    return _open_rgb(path, str(path), max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "the image") -> Image.Image:
    """Decode image bytes (an upload) as RGB, exactly as :func:`open_image` opens a file.

    Args:
        data: the encoded image (PNG, JPEG, WebP...).
        max_pixels: refuse images with more pixels than this.
        name: how messages name the image.

    Raises:
        ImageError: with reason ``empty``, ``too_large``, ``truncated``, ``unsupported_mode``
            or ``unreadable``.
    """
    if not data:
        raise ImageError("empty", f"{name} is empty (0 bytes)")
    return _open_rgb(io.BytesIO(data), name, max_pixels)


def _open_rgb(source: Path | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """Decode ``source`` and convert it to RGB; failures become an ImageError naming ``name``."""
    try:
        image = _decode(source, max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", f"{name} has more than the {max_pixels:,}-pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("unreadable", f"{name} could not be decoded (not in an image format this reads)") from exc
    except _DECODE_ERRORS as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise ImageError(reason, f"{name} could not be decoded ({exc})") from exc
    try:
        return _to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise ImageError("unsupported_mode", f"{name} has the unsupported mode {image.mode} ({exc})") from exc


def load_user_image(path: str | Path) -> Image.Image:
    """Open an image the user named on the command line; problems become a UserError."""
    try:
        return open_image(path)
    except ImageError as exc:
        raise UserError(f"cannot use image: {exc}.") from exc


def as_image(source: str | Path | Image.Image) -> Image.Image:
    """An image given as a path (opened with :func:`load_user_image`) or already decoded (as RGB)."""
    return source.convert("RGB") if isinstance(source, Image.Image) else load_user_image(source)


def pad_geometry(width: int, height: int, max_aspect: float = 1.25) -> tuple[int, int, int, int]:
    """Where :func:`pad_to_aspect` puts a ``width`` x ``height`` image: (canvas width, canvas
    height, left, top)."""
    if max(width, height) / min(width, height) <= max_aspect:
        return width, height, 0, 0
    if width > height:
        canvas = (width, int(round(width / max_aspect)))
    else:
        canvas = (int(round(height / max_aspect)), height)
    return canvas[0], canvas[1], (canvas[0] - width) // 2, (canvas[1] - height) // 2


def pad_to_aspect(image: Image.Image, max_aspect: float = 1.25, fill: int = 255) -> Image.Image:
    """Pad the short side so that long/short <= max_aspect (the paper pads before resizing)."""
    canvas_width, canvas_height, left, top = pad_geometry(*image.size, max_aspect)
    if (canvas_width, canvas_height) == image.size:
        return image
    canvas = Image.new("RGB", (canvas_width, canvas_height), (fill, fill, fill))
    canvas.paste(image, (left, top))
    return canvas


def resized_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Pad to aspect <= 1.25 and resize bicubic to (size, size): (size, size, 3) uint8."""
    return np.asarray(pad_to_aspect(image).resize((size, size), Image.Resampling.BICUBIC))


def unit_array(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 (3, H, W) in [0, 1]."""
    return rgb.astype(np.float32).transpose(2, 0, 1) / 255.0


def image_to_array(image: Image.Image, size: int) -> np.ndarray:
    """Pad to aspect <= 1.25, resize bicubic to (size, size), return float32 (3, H, W) in [0, 1]."""
    return unit_array(resized_rgb(image, size))


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


def rgb_images(paths: list[Path], size: int) -> np.ndarray:
    """Images at ``paths`` padded and resized to ``size``, as stored: (N, size, size, 3) uint8.

    ``pixel_values_of`` turns one into exactly what :func:`pixel_values` gives for it.

    Raises:
        UserError: an image that cannot be read (as :func:`pixel_values`).
    """
    rows = []
    for path in paths:
        try:
            rows.append(resized_rgb(open_image(path), size))
        except ImageError as exc:
            raise UserError(f"image {path} became unreadable during the run ({exc}).") from exc
    return np.stack(rows) if rows else np.empty((0, size, size, 3), dtype=np.uint8)


def pixel_values_of(rgb: np.ndarray) -> "torch.Tensor":
    """One stored (H, W, 3) uint8 image (:func:`rgb_images`) in [-1, 1]: (3, H, W)."""
    import torch

    return torch.from_numpy(unit_array(rgb)) * 2 - 1
