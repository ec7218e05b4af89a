"""Drawing a demo garment with PIL, and reading its colour back from the pixels."""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from unifashion_core.data.demo.attributes import PALETTE, Attributes

BACKGROUND: tuple[int, int, int] = (255, 255, 255)

SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges
MIN_IMAGE_SIZE = 32


def nearest_colour(rgb: Sequence[float] | np.ndarray) -> str:
    """The name of the palette colour nearest (Euclidean, RGB 0-255) to ``rgb``."""
    names = list(PALETTE)
    distances = np.linalg.norm(np.array([PALETTE[n] for n in names], float) - np.asarray(rgb, float), axis=1)
    return names[int(np.argmin(distances))]


def garment_pixels(image: np.ndarray, background: Sequence[int] = BACKGROUND, tolerance: int = 40) -> np.ndarray:
    """The pixels of an (H, W, 3) image that are not background.

    Args:
        image: uint8 RGB array.
        background: the plain background colour.
        tolerance: a pixel is garment when some channel differs from the background by more.

    Returns:
        (K, 3) array of the garment pixels (K may be 0).
    """
    image = np.asarray(image)
    difference = np.abs(image.astype(np.int16) - np.asarray(background, np.int16))
    return image[difference.max(axis=-1) > tolerance].reshape(-1, 3)


Point = tuple[float, float]


@dataclass
class _Shape:
    """A garment in 0..100 canvas units: filled polygons, cut-outs, and darker details."""

    polygons: list[list[Point]] = field(default_factory=list)
    cuts: list[tuple[float, float, float, float]] = field(default_factory=list)  # ellipse boxes
    lines: list[tuple[list[Point], float]] = field(default_factory=list)  # (points, width)
    dots: list[tuple[Point, float]] = field(default_factory=list)  # (centre, radius)
    arcs: list[tuple[tuple[float, float, float, float], float]] = field(default_factory=list)


def _mirror(points: list[Point]) -> list[Point]:
    return [(100 - x, y) for x, y in points]


def _add_pair(shape: _Shape, points: list[Point]) -> None:
    shape.polygons += [points, _mirror(points)]


def _add_sleeves(shape: _Shape, sleeve: str | None, shoulder: Point, armpit_y: float, reach: float) -> None:
    """Sleeves hanging from the left shoulder point (mirrored right); ``reach`` scales them."""
    x, y = shoulder
    if sleeve == "short-sleeve":
        _add_pair(shape, [(x, y), (x - 12 * reach, y + 12), (x - 6 * reach, y + 18), (x, armpit_y - 3)])
    elif sleeve == "long-sleeve":
        _add_pair(
            shape,
            [
                (x, y),
                (x - 17 * reach, y + 42 * reach),
                (x - 10 * reach, y + 44 * reach),
                (x, armpit_y - 2),
            ],
        )
        cuff = [(x - 16.3 * reach, y + 39 * reach), (x - 9.3 * reach, y + 41 * reach)]
        shape.lines += [(cuff, 1.2), (_mirror(cuff), 1.2)]
    elif sleeve == "sleeveless":
        shape.cuts += [(x - 12, y - 3, x + 6, y + 21), (94 - x, y - 3, 112 - x, y + 21)]


def _top(sleeve: str | None, hem: float, half: float = 17, hem_half: float = 16, neck: float = 7) -> _Shape:
    """Body and sleeves of a t-shirt, shirt or coat; shoulders at y=18."""
    shape = _Shape()
    shape.polygons.append(
        [
            (50 - neck, 14),
            (50 - half, 18),
            (50 - half, 34),
            (50 - hem_half, hem),
            (50 + hem_half, hem),
            (50 + half, 34),
            (50 + half, 18),
            (50 + neck, 14),
        ]
    )
    shape.cuts.append((50 - neck, 9, 50 + neck, 19))
    _add_sleeves(shape, sleeve, (50 - half, 18), 34, reach=1.0)
    return shape


def _t_shirt(attributes: Attributes) -> _Shape:
    shape = _top(attributes["sleeve"], hem=76)
    shape.arcs.append(((42, 8, 58, 20), 1.5))
    return shape


def _shirt(attributes: Attributes) -> _Shape:
    shape = _top(attributes["sleeve"], hem=80, neck=6)
    shape.polygons += [[(44, 14), (50, 22), (42, 21)], [(56, 14), (50, 22), (58, 21)]]
    shape.lines += [
        ([(44, 14), (50, 22), (42, 21), (44, 14)], 1),
        ([(56, 14), (50, 22), (58, 21), (56, 14)], 1),
        ([(50, 22), (50, 80)], 1),
        ([(37, 29), (44, 29), (44, 37), (37, 37)], 1),
    ]
    shape.dots += [((52, y), 1.2) for y in (30, 42, 54, 66)]
    return shape


def _coat(attributes: Attributes) -> _Shape:
    hem = 74 if attributes["length"] == "short" else 93
    shape = _top("long-sleeve", hem=hem, half=19, hem_half=21, neck=6)
    shape.polygons += [[(44, 14), (50, 36), (43, 26)], [(56, 14), (50, 36), (57, 26)]]
    shape.lines += [
        ([(44, 14), (43, 26), (50, 36)], 1.2),
        ([(56, 14), (57, 26), (50, 36)], 1.2),
        ([(50, 36), (50, hem)], 1),
        ([(34, hem - 20), (40, hem - 16)], 1.2),
        ([(66, hem - 20), (60, hem - 16)], 1.2),
    ]
    shape.dots += [((x, y), 1.3) for x in (46, 54) for y in (42, 52, 62)]
    return shape


def _bodice(shape: _Shape, sleeve: str | None) -> None:
    """The top half of a dress or jumpsuit: shoulders at x=38, waist at y=40."""
    shape.polygons.append([(44, 12), (38, 14), (38, 28), (40, 40), (60, 40), (62, 28), (62, 14), (56, 12)])
    shape.cuts.append((44, 7, 56, 17))
    if sleeve == "sleeveless":
        shape.cuts += [(30, 12, 42, 32), (58, 12, 70, 32)]
    else:
        _add_sleeves(shape, sleeve, (38, 14), 28, reach=0.8)
    shape.lines.append(([(40, 40), (60, 40)], 1.5))


def _dress(attributes: Attributes) -> _Shape:
    hem = {"mini": 62, "knee-length": 76, "maxi": 93}[attributes["length"] or "mini"]
    half = 11 + (hem - 40) * 0.3
    shape = _Shape()
    _bodice(shape, attributes["sleeve"])
    shape.polygons.append([(40, 40), (60, 40), (50 + half, hem), (50 - half, hem)])
    return shape


def _jumpsuit(attributes: Attributes) -> _Shape:
    hem = 78 if attributes["length"] == "cropped" else 93
    shape = _Shape()
    _bodice(shape, attributes["sleeve"])
    _add_pair(shape, [(39, 40), (50, 40), (50, 54), (47.5, hem), (35.5, hem)])
    return shape


def _skirt(attributes: Attributes) -> _Shape:
    hem = {"mini": 48, "knee-length": 68, "maxi": 92}[attributes["length"] or "mini"]
    half = 13 + (hem - 23) * 0.3
    shape = _Shape()
    shape.polygons += [
        [(37, 18), (63, 18), (63, 23), (37, 23)],
        [(37, 23), (63, 23), (50 + half, hem), (50 - half, hem)],
    ]
    shape.lines += [
        ([(37, 23), (63, 23)], 1.5),
        ([(44, 26), (50 - half * 0.45, hem - 2)], 0.8),
        ([(56, 26), (50 + half * 0.45, hem - 2)], 0.8),
    ]
    return shape


def _legs(hem: float, crotch: float, flare: float) -> _Shape:
    """Trousers or shorts: a waistband at y=10..15 and two legs down to ``hem``."""
    shape = _Shape()
    shape.polygons.append([(32, 10), (68, 10), (68, 15), (32, 15)])
    _add_pair(shape, [(32, 15), (50, 15), (50, crotch), (46, hem), (32 - flare, hem)])
    shape.lines += [
        ([(32, 15), (68, 15)], 1.5),
        ([(50, 15), (50, crotch - 4)], 1),
        ([(35, 16), (39, 24)], 1),
        ([(65, 16), (61, 24)], 1),
    ]
    return shape


def _trousers(attributes: Attributes) -> _Shape:
    return _legs(hem=76 if attributes["length"] == "cropped" else 93, crotch=32, flare=-1)


def _shorts(attributes: Attributes) -> _Shape:
    return _legs(hem=48, crotch=30, flare=3)


SHAPES: dict[str, Callable[[Attributes], _Shape]] = {
    "t-shirt": _t_shirt,
    "shirt": _shirt,
    "dress": _dress,
    "skirt": _skirt,
    "trousers": _trousers,
    "shorts": _shorts,
    "coat": _coat,
    "jumpsuit": _jumpsuit,
}


def _accent(rgb: tuple[int, int, int], amount: float) -> np.ndarray:
    """A lighter (dark colours) or darker (light colours) version of ``rgb``.

    Dark colours get a weaker accent: their neighbours (black, navy, grey) are close, and the
    garment's mean colour must stay nearest its own name.
    """
    colour = np.asarray(rgb, float)
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    toward = np.full(3, 255.0) if luminance < 150 else np.zeros(3)
    return colour + (toward - colour) * amount * min(1.0, max(0.45, luminance / 110))


def _pattern_mask(pattern: str, vertical: bool, size: int) -> tuple[np.ndarray, float]:
    """Where the accent colour goes (a boolean (size, size) array) and how strong it is."""
    period = size / 11
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    if vertical:
        rows, cols = cols, rows
    if pattern == "striped":
        return (rows % period) < period * 0.3, 0.5
    if pattern == "polka-dot":
        shifted = cols + (rows // period % 2) * period / 2
        dy, dx = rows % period - period / 2, shifted % period - period / 2
        return dy**2 + dx**2 < (period * 0.24) ** 2, 0.6
    if pattern == "checked":
        return ((rows // period + cols // period) % 2) == 1, 0.28
    return np.zeros((size, size), bool), 0.0


@functools.lru_cache(maxsize=128)
def _texture(colour: str, pattern: str, vertical: bool, size: int) -> Image.Image:
    """The (size, size) texture of a garment: its colour with the pattern's accent (cached)."""
    mask, amount = _pattern_mask(pattern, vertical, size)
    base = np.asarray(PALETTE[colour], float)
    pixels = np.where(mask[..., None], _accent(PALETTE[colour], amount), base)
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def _scale(points: Sequence[Point], unit: float, offset: Point) -> list[Point]:
    return [((x + offset[0]) * unit, (y + offset[1]) * unit) for x, y in points]


def _box(box: tuple[float, float, float, float], unit: float, offset: Point) -> list[float]:
    (x0, y0), (x1, y1) = _scale([box[:2], box[2:]], unit, offset)
    return [x0, y0, x1, y1]


def _garment_mask(shape: _Shape, size: int, unit: float, offset: Point) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in shape.polygons:
        draw.polygon(_scale(polygon, unit, offset), fill=255)
    for box in shape.cuts:
        draw.ellipse(_box(box, unit, offset), fill=0)
    return mask


def _draw_details(image: Image.Image, shape: _Shape, shade: tuple[int, ...], unit: float, offset: Point) -> None:
    draw = ImageDraw.Draw(image)
    for points, width in shape.lines:
        draw.line(_scale(points, unit, offset), fill=shade, width=max(1, round(width * unit)))
    for (x, y), radius in shape.dots:
        draw.ellipse(_box((x - radius, y - radius, x + radius, y + radius), unit, offset), fill=shade)
    for box, width in shape.arcs:
        draw.arc(_box(box, unit, offset), 20, 160, fill=shade, width=max(1, round(width * unit)))


def draw_garment(
    attributes: Attributes, image_size: int, rng: np.random.Generator, vertical: bool | None = None
) -> Image.Image:
    """Draw one garment centred on the plain background.

    Args:
        attributes: ``type``, ``colour``, ``pattern``, ``sleeve``, ``length``.
        image_size: width and height of the returned image in pixels.
        rng: varies the position by a few pixels and (unless given) the stripe direction.
        vertical: stripes run vertically (the try-on part draws the garment as its person wears it).

    Returns:
        An RGB image of ``image_size`` x ``image_size``.
    """
    size = image_size * SUPERSAMPLE
    unit = size / 100
    offset = (float(rng.uniform(-3, 3)), float(rng.uniform(-2, 2)))
    vertical = bool(rng.integers(2)) if vertical is None else vertical
    shape = SHAPES[attributes["type"]](attributes)
    texture = _texture(attributes["colour"], attributes["pattern"], vertical, size)
    background = Image.new("RGB", (size, size), BACKGROUND)
    image = Image.composite(texture, background, _garment_mask(shape, size, unit, offset))
    shade = tuple(round(c * 0.7) for c in PALETTE[attributes["colour"]])
    _draw_details(image, shape, shade, unit, offset)
    return image.resize((image_size, image_size), Image.Resampling.BOX)
