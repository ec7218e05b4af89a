"""open_image: every way a file can fail to be an image becomes one ImageError reason."""

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unifashion_core.data.images import MAX_PIXELS, ImageError, open_image

BOMB_SIDE = 30_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 30,000 x 30,000 1-bit PNG, all black: 900 million pixels in about 110 KB."""
    row = bytes(1 + BOMB_SIDE // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = compressor.compress(row * BOMB_SIDE) + compressor.flush()
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return path


def _reason(path: Path, **kwargs: int) -> str:
    with pytest.raises(ImageError) as caught:
        open_image(path, **kwargs)
    return caught.value.reason


def _saved(path: Path, image: Image.Image, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def test_decompression_bomb_is_too_large(bomb: Path) -> None:
    assert bomb.stat().st_size < 120_000  # deflate tops out near 1000:1: ~107 KB, not "a few"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        assert _reason(bomb) == "too_large"
    assert BOMB_SIDE**2 > 2 * Image.MAX_IMAGE_PIXELS  # PIL alone would raise its own error here


def test_pixel_limit_is_one_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path / "square.png", Image.new("RGB", (20, 20), (9, 9, 9)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's global, lower than ours
    assert open_image(path, max_pixels=400).size == (20, 20)  # PIL's number does not fire first
    assert _reason(path, max_pixels=399) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == 100  # and it is left as it was
    assert MAX_PIXELS == open_image.__defaults__[0]


def test_truncated_files(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        noise.save(buffer, format=fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        assert _reason(path) == "truncated", fmt


def test_missing_empty_and_garbage(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nowhere.jpg") == "missing"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "empty"
    (tmp_path / "text.jpg").write_text("not an image")
    assert _reason(tmp_path / "text.jpg") == "unreadable"
    (tmp_path / "folder.jpg").mkdir()
    assert _reason(tmp_path / "folder.jpg") == "missing"


def test_unsupported_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path / "ok.png", Image.new("RGB", (4, 4)))

    def refuse(image: Image.Image, mode: str | None = None, *args: object, **kwargs: object) -> Image.Image:
        raise ValueError(f"conversion from {image.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    assert _reason(path) == "unsupported_mode"


def test_animated_images_give_their_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    for name in ("anim.gif", "anim.png"):
        path = _saved(tmp_path / name, frames[0], save_all=True, append_images=frames[1:], duration=50)
        assert Image.open(path).n_frames == 2
        assert open_image(path).getpixel((4, 4)) == (255, 0, 0), name


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _saved(tmp_path / "rotated.jpg", image, exif=exif)
    assert Image.open(path).size == (20, 10)
    assert open_image(path).size == (10, 20)


def test_unusual_modes_become_rgb(tmp_path: Path) -> None:
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    transparent = Image.new("LA", (4, 4), (0, 0))
    cases = {
        "16bit.png": (sixteen, (255, 255, 255)),
        "alpha.png": (transparent, (255, 255, 255)),  # fully transparent onto white
        "cmyk.jpg": (Image.new("RGB", (4, 4), (255, 0, 0)).convert("CMYK"), None),
        "bilevel.png": (Image.new("1", (4, 4), 1), (255, 255, 255)),
    }
    for name, (image, expected) in cases.items():
        opened = open_image(_saved(tmp_path / name, image))
        assert opened.mode == "RGB" and opened.size == (4, 4), name
        if expected is not None:
            assert opened.getpixel((1, 1)) == expected, name
