"""The try-on part of the demo data: a drawn person wearing a demo garment, with its masks and sketch.

A simple front-facing figure (hair, face, neck, torso, arms, legs, shoes) on a light grey
background wears one demo garment, drawn with the garment's own shape and texture
(``drawing.py``) scaled onto the body: tops from the shoulders, dresses and jumpsuits from the
shoulders down, skirts, trousers and shorts from the waist. A top is worn over plain trousers and
a skirt, trousers or shorts under a plain top, in a neutral colour. Each person comes with the
files of a VITON-HD example:

- ``agnostic mask``: the body region the garment belongs to (upper body and arms, hips and legs,
  or both) joined with the garment widened by two units, white = generate. Wider than the
  garment, so that its silhouette (sleeves, length) is not given away;
- ``agnostic``: the person with that region grey;
- ``cloth mask``: the in-shop garment's own pixels;
- ``sketch``: the edges (``tryon.edges``) of the person inside the garment widened by one unit,
  dark lines on white.

Coordinates are in 0..100 canvas units like the garments'.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from unifashion_core.data.demo.attributes import PALETTE, Attributes
from unifashion_core.data.demo.drawing import (
    BACKGROUND,
    SHAPES,
    SUPERSAMPLE,
    Point,
    _draw_details,
    _garment_mask,
    _texture,
)
from unifashion_core.data.tryon import edges

PERSON_BACKGROUND: tuple[int, int, int] = (232, 232, 232)
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (246, 208, 180), (226, 176, 132), (196, 138, 96), (150, 98, 62), (104, 68, 44),
)
HAIR_COLOURS: tuple[tuple[int, int, int], ...] = ((40, 30, 25), (95, 60, 30), (200, 160, 90), (20, 20, 20))
BASE_COLOURS: tuple[tuple[int, int, int], ...] = ((70, 80, 100), (205, 195, 175), (90, 90, 90), (236, 236, 226))
SHOES = (45, 40, 40)

# Which body part each garment type dresses, and how its 0..100 garment canvas maps onto the body:
# (scale, garment anchor, body anchor): body point = body anchor + (garment point - garment anchor) * scale.
REGIONS: dict[str, str] = {
    "t-shirt": "upper", "shirt": "upper", "coat": "upper",
    "skirt": "lower", "trousers": "lower", "shorts": "lower",
    "dress": "full", "jumpsuit": "full",
}
_PLACEMENT: dict[str, tuple[float, Point, Point]] = {
    "upper": (0.66, (50, 18), (50, 21.5)),
    "full": (0.9, (50, 14), (50, 21)),
    "skirt": (0.72, (50, 18), (50, 45)),
    "legs": (0.6, (50, 10), (50, 45)),
}
# The agnostic region of each body part (boxes in body units), before the garment is joined in.
_REGION_BOXES: dict[str, tuple[float, float, float, float]] = {
    "upper": (25, 19, 75, 62),
    "lower": (33, 44, 67, 98),
    "full": (25, 19, 75, 98),
}
# A plain piece under or over the try-on garment, by the garment's body part.
_BASE_GARMENT: dict[str, Attributes] = {
    "upper": {"type": "trousers", "length": "full-length", "sleeve": None},
    "lower": {"type": "t-shirt", "length": None, "sleeve": "sleeveless"},
}

_HAIR = (43, 2.5, 57, 13)
_FACE = (44.5, 5.5, 55.5, 18)
_NECK = [(47.5, 15), (52.5, 15), (52.5, 23), (47.5, 23)]
_TORSO = [(39, 21), (61, 21), (60, 46), (61.5, 56), (38.5, 56), (40, 46)]
_ARM = [(39.5, 21.5), (36, 22), (27.8, 50), (32.2, 51.5), (40, 31)]
_HAND = (28, 49.5, 32.6, 54.5)
_LEG = [(39.5, 55), (49.5, 55), (47.5, 95), (41.5, 95)]
_SHOE = (40.5, 93.5, 48.5, 98)


@dataclass(frozen=True)
class TryOnImages:
    """The files of one try-on example, at the demo's image size."""

    person: Image.Image
    mask: Image.Image
    agnostic: Image.Image
    sketch: Image.Image


def _placement(garment: str) -> tuple[float, Point, Point]:
    if garment == "skirt":
        return _PLACEMENT["skirt"]
    if garment in ("trousers", "shorts"):
        return _PLACEMENT["legs"]
    return _PLACEMENT[REGIONS[garment]]


def _frame(garment: str, unit: float, shift: Point) -> tuple[float, Point]:
    """(unit, offset) that draw ``garment``'s shape on the body with drawing.py's helpers.

    drawing.py maps a point to ``(x + offset) * unit``; the body point ``anchor + (p - origin) *
    scale`` (then shifted) is that with ``unit * scale`` and ``offset = (anchor + shift) / scale -
    origin``.
    """
    scale, origin, anchor = _placement(garment)
    offset = tuple((anchor[k] + shift[k]) / scale - origin[k] for k in range(2))
    return unit * scale, (offset[0], offset[1])


def _points(points: list[Point], unit: float, shift: Point) -> list[Point]:
    return [((x + shift[0]) * unit, (y + shift[1]) * unit) for x, y in points]


def _mirror(points: list[Point]) -> list[Point]:
    return [(100 - x, y) for x, y in points]


def _box(box: tuple[float, float, float, float], unit: float, shift: Point) -> list[float]:
    (x0, y0), (x1, y1) = _points([box[:2], box[2:]], unit, shift)
    return [x0, y0, x1, y1]


def _draw_body(image: Image.Image, unit: float, shift: Point, skin: tuple[int, ...], hair: tuple[int, ...]) -> None:
    draw = ImageDraw.Draw(image)
    draw.ellipse(_box(_HAIR, unit, shift), fill=hair)
    for polygon in (_NECK, _TORSO, _ARM, _mirror(_ARM), _LEG, _mirror(_LEG)):
        draw.polygon(_points(polygon, unit, shift), fill=skin)
    draw.ellipse(_box(_FACE, unit, shift), fill=skin)
    for hand in (_HAND, (100 - _HAND[2], _HAND[1], 100 - _HAND[0], _HAND[3])):
        draw.ellipse(_box(hand, unit, shift), fill=skin)
    for shoe in (_SHOE, (100 - _SHOE[2], _SHOE[1], 100 - _SHOE[0], _SHOE[3])):
        draw.ellipse(_box(shoe, unit, shift), fill=SHOES)


def _dress(image: Image.Image, attributes: Attributes, colour: str | tuple[int, ...], unit: float,
           shift: Point, vertical: bool) -> Image.Image:
    """Draw ``attributes``' garment on the body (a palette colour name, or a plain RGB base
    colour); returns its mask on the canvas."""
    shape = SHAPES[attributes["type"]](attributes)
    frame_unit, offset = _frame(attributes["type"], unit, shift)
    mask = _garment_mask(shape, image.size[0], frame_unit, offset)
    if isinstance(colour, str):
        texture = _texture(colour, attributes["pattern"], vertical, image.size[0])
        shade = tuple(round(c * 0.7) for c in PALETTE[colour])
    else:
        texture, shade = Image.new("RGB", image.size, colour), tuple(round(c * 0.8) for c in colour)
    image.paste(texture, (0, 0), mask)
    _draw_details(image, shape, shade, frame_unit, offset)
    return mask


def _grow(mask: Image.Image, pixels: int) -> Image.Image:
    """``mask`` widened by ``pixels`` in every direction (a square maximum filter, separable)."""
    array = np.asarray(mask)
    for axis in (0, 1):
        padded = np.pad(array, [(pixels, pixels) if a == axis else (0, 0) for a in (0, 1)])
        length = array.shape[axis]
        array = np.max([np.take(padded, range(k, k + length), axis=axis) for k in range(2 * pixels + 1)], axis=0)
    return Image.fromarray(array)


def draw_person(attributes: Attributes, image_size: int, rng: np.random.Generator, vertical: bool) -> TryOnImages:
    """A person wearing the garment ``attributes`` describes, with the example's masks and sketch.

    Args:
        attributes: the garment's ``type``, ``colour``, ``pattern``, ``sleeve``, ``length``.
        image_size: side of the square images in pixels.
        rng: varies skin, hair, the base garment's colour and the position.
        vertical: stripes run vertically (as in the garment's in-shop image).
    """
    size = image_size * SUPERSAMPLE
    unit = size / 100
    shift = (float(rng.uniform(-3, 3)), float(rng.uniform(-1.5, 1.5)))
    skin, hair, base = (rng.choice(len(options)) for options in (SKIN_TONES, HAIR_COLOURS, BASE_COLOURS))
    region = REGIONS[attributes["type"]]
    image = Image.new("RGB", (size, size), PERSON_BACKGROUND)
    _draw_body(image, unit, shift, SKIN_TONES[skin], HAIR_COLOURS[hair])
    if region in _BASE_GARMENT:  # worn under a top, or over by trousers and skirts
        _dress(image, _BASE_GARMENT[region], BASE_COLOURS[base], unit, shift, vertical)
    garment = _dress(image, attributes, attributes["colour"], unit, shift, vertical)
    region_mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(region_mask).rectangle(_box(_REGION_BOXES[region], unit, shift), fill=255)
    mask = Image.fromarray(np.maximum(np.asarray(region_mask), np.asarray(_grow(garment, round(2 * unit)))))
    return _finish(image, mask, _grow(garment, round(unit)), image_size)


def _finish(image: Image.Image, mask: Image.Image, sketch_region: Image.Image, image_size: int) -> TryOnImages:
    """Downsample to ``image_size``; the agnostic image, the sketch and a binary mask."""
    person = image.resize((image_size, image_size), Image.Resampling.BOX)
    mask = mask.resize((image_size, image_size), Image.Resampling.BOX).point(lambda v: 255 if v >= 128 else 0)
    agnostic = Image.composite(Image.new("RGB", person.size, (128, 128, 128)), person, mask)
    region = np.asarray(sketch_region.resize((image_size, image_size), Image.Resampling.BOX)) >= 128
    lines = edges(np.asarray(person, np.float32) / 255) * region
    sketch = ImageOps.invert(Image.fromarray((lines * 255).astype(np.uint8)))
    return TryOnImages(person, mask, agnostic, sketch)


def cloth_mask(garment_image: Image.Image) -> Image.Image:
    """The in-shop garment's own pixels (white) on black: VITON-HD's ``cloth-mask``."""
    array = np.asarray(garment_image)
    difference = np.abs(array.astype(np.int16) - np.asarray(BACKGROUND, np.int16)).max(axis=-1)
    return Image.fromarray(np.where(difference > 40, 255, 0).astype(np.uint8))

