"""The built-in demo dataset: procedurally drawn garments with known attributes.

Every item is one combination of garment type, colour, pattern, sleeve and length, drawn with
PIL on a plain white background, so captions, descriptions and composed-retrieval triplets are
exact by construction. Nothing is shipped: the images are generated from the seed, and two runs
with the same arguments write byte-identical datasets.
"""

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from unifashion_core.data.manifest import Item, SkipLog, Triplet, write_dataset
from unifashion_core.data.prepare import assign_splits
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Named garment colours, pairwise at least 80 apart in RGB and far from the white background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "orange": (245, 130, 30),
    "yellow": (240, 210, 40),
    "green": (40, 150, 60),
    "teal": (20, 140, 150),
    "blue": (50, 100, 220),
    "navy": (20, 40, 120),
    "purple": (120, 50, 170),
    "pink": (240, 130, 180),
    "brown": (125, 75, 35),
    "black": (30, 30, 30),
    "grey": (140, 140, 140),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "polka-dot", "checked")
SLEEVES: tuple[str, ...] = ("sleeveless", "short-sleeve", "long-sleeve")  # shortest first
ATTRIBUTES: tuple[str, ...] = ("type", "colour", "pattern", "sleeve", "length")

# Per garment type: the sleeves and lengths it comes in (empty: not applicable), shortest first.
GARMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "t-shirt": {"sleeve": SLEEVES, "length": ()},
    "shirt": {"sleeve": ("short-sleeve", "long-sleeve"), "length": ()},
    "dress": {"sleeve": SLEEVES, "length": ("mini", "knee-length", "maxi")},
    "skirt": {"sleeve": (), "length": ("mini", "knee-length", "maxi")},
    "trousers": {"sleeve": (), "length": ("cropped", "full-length")},
    "shorts": {"sleeve": (), "length": ()},
    "coat": {"sleeve": (), "length": ("short", "long")},
    "jumpsuit": {"sleeve": SLEEVES, "length": ("cropped", "full-length")},
}
# Garment types a triplet may swap between (the change reads naturally and keeps the silhouette).
TYPE_SWAPS: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in [
        ("t-shirt", "shirt"),
        ("dress", "skirt"),
        ("trousers", "shorts"),
        ("dress", "jumpsuit"),
        ("trousers", "jumpsuit"),
    ]
)
TRIPLETS_PER_REFERENCE: dict[str, int] = {"train": 1, "val": 2, "test": 2}
SPLIT_FRACTIONS: tuple[float, float] = (0.15, 0.15)  # val, test; the rest is train

SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges
MIN_IMAGE_SIZE = 32

Attributes = dict[str, str | None]


def attribute_space() -> list[Attributes]:
    """Every attribute combination of the demo data, in a fixed order."""
    space = []
    for garment, options in GARMENTS.items():
        for sleeve in options["sleeve"] or (None,):
            for length in options["length"] or (None,):
                for colour in PALETTE:
                    for pattern in PATTERNS:
                        space.append(
                            {
                                "type": garment,
                                "colour": colour,
                                "pattern": pattern,
                                "sleeve": sleeve,
                                "length": length,
                            }
                        )
    return space


def caption_for(attributes: Attributes) -> str:
    """The short caption: colour, pattern, sleeve, length, type (absent ones left out).

    Example: ``"red striped long-sleeve knee-length dress"``.
    """
    return " ".join(attributes[key] for key in ("colour", "pattern", "sleeve", "length", "type") if attributes[key])


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


# --------------------------------------------------------------------------- drawing

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


def draw_garment(attributes: Attributes, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one garment centred on the plain background.

    Args:
        attributes: ``type``, ``colour``, ``pattern``, ``sleeve``, ``length``.
        image_size: width and height of the returned image in pixels.
        rng: varies the position by a few pixels and the stripe direction.

    Returns:
        An RGB image of ``image_size`` x ``image_size``.
    """
    size = image_size * SUPERSAMPLE
    unit = size / 100
    offset = (float(rng.uniform(-3, 3)), float(rng.uniform(-2, 2)))
    vertical = bool(rng.integers(2))
    shape = SHAPES[attributes["type"]](attributes)
    texture = _texture(attributes["colour"], attributes["pattern"], vertical, size)
    background = Image.new("RGB", (size, size), BACKGROUND)
    image = Image.composite(texture, background, _garment_mask(shape, size, unit, offset))
    shade = tuple(round(c * 0.7) for c in PALETTE[attributes["colour"]])
    _draw_details(image, shape, shade, unit, offset)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


# --------------------------------------------------------------------------- texts

_NOUN = {"trousers": "pair of trousers", "shorts": "pair of shorts"}
_PATTERN_DESCRIPTION = {
    "solid": "a clean solid finish",
    "striped": "an all-over striped pattern",
    "polka-dot": "a playful polka-dot print",
    "checked": "a classic checked pattern",
}
_SLEEVE_DESCRIPTION = {
    "sleeveless": "a sleeveless cut",
    "short-sleeve": "a short-sleeve cut",
    "long-sleeve": "a long-sleeve cut",
}
_LENGTH_DESCRIPTION = {
    "mini": "a mini length",
    "knee-length": "a knee-length hem",
    "maxi": "a flowing maxi length",
    "cropped": "a cropped leg",
    "full-length": "a full-length leg",
    "short": "a short length that sits at the hip",
    "long": "a long length that falls below the knee",
}
_OPENINGS = (
    "This {colour} {noun} comes with {pattern}.",
    "Crafted in {colour}, this {noun} features {pattern}.",
    "This {noun} in {colour} is finished with {pattern}.",
)
_DETAILS = ("It has {parts}.", "The design features {parts}.", "It is made with {parts}.")
_CLOSINGS = (
    "A versatile piece for everyday wear.",
    "Easy to style for work or the weekend.",
    "A timeless addition to any wardrobe.",
    "Pairs well with simple accessories.",
)


def describe(attributes: Attributes, rng: np.random.Generator) -> str:
    """A 2-3 sentence product description mentioning every attribute (wording seeded)."""
    garment = attributes["type"] or ""
    sentences = [
        str(rng.choice(_OPENINGS)).format(
            colour=attributes["colour"],
            noun=_NOUN.get(garment, garment),
            pattern=_PATTERN_DESCRIPTION[attributes["pattern"] or "solid"],
        )
    ]
    parts = []
    if attributes["sleeve"]:
        parts.append(_SLEEVE_DESCRIPTION[attributes["sleeve"]])
    if attributes["length"]:
        parts.append(_LENGTH_DESCRIPTION[attributes["length"]])
    if parts:
        sentences.append(str(rng.choice(_DETAILS)).format(parts=" and ".join(parts)))
    sentences.append(str(rng.choice(_CLOSINGS)))
    return " ".join(sentences)


_CLAUSE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "is {value}",
        "is {value} instead of {ref}",
        "comes in {value}",
        "is {value} rather than {ref}",
    ),
    "type": ("should be {value} instead of {ref}", "needs to be {value} rather than {ref}"),
    "length": ("is {value}", "is {value} instead of {ref}"),
    "solid": ("is plain", "has no pattern", "is plain instead of having {ref}"),
    "striped": ("is striped", "has stripes", "has stripes instead of {ref}"),
    "polka-dot": ("has polka dots", "is polka-dot", "has polka dots instead of {ref}"),
    "checked": ("is checked", "has a check pattern", "has checks instead of {ref}"),
    "sleeveless": ("is sleeveless", "has no sleeves"),
    "short-sleeve": ("has short sleeves", "has short sleeves instead of {ref}"),
    "long-sleeve": ("has long sleeves", "has long sleeves instead of {ref}"),
}
# How a value reads inside a clause, where it differs from the value itself.
_CLAUSE_WORDS: dict[tuple[str, str], str] = {
    ("type", "trousers"): "trousers",
    ("type", "shorts"): "shorts",
    ("pattern", "solid"): "a plain finish",
    ("pattern", "striped"): "stripes",
    ("pattern", "polka-dot"): "polka dots",
    ("pattern", "checked"): "checks",
    ("sleeve", "sleeveless"): "being sleeveless",
    ("sleeve", "short-sleeve"): "short ones",
    ("sleeve", "long-sleeve"): "long ones",
    ("length", "mini"): "mini length",
    ("length", "maxi"): "maxi length",
}
_RELATIVE_CLAUSES: dict[tuple[str, int], tuple[str, ...]] = {
    ("sleeve", 1): ("has longer sleeves",),
    ("sleeve", -1): ("has shorter sleeves",),
    ("length", 1): ("is longer", "is longer in length"),
    ("length", -1): ("is shorter", "is shorter in length"),
}


def _clause_words(attribute: str, value: str) -> str:
    default = f"a {value}" if attribute == "type" else value
    return _CLAUSE_WORDS.get((attribute, value), default)


def _absolute_clause(attribute: str, value: str, ref: str | None, rng: np.random.Generator) -> str:
    """One clause naming the target's ``value`` (``ref``: the reference's value, if any)."""
    templates = _CLAUSE_TEMPLATES[value if attribute in ("pattern", "sleeve") else attribute]
    if ref is None:
        templates = tuple(t for t in templates if "{ref}" not in t)
    ref_words = _clause_words(attribute, ref) if ref is not None else ""
    return str(rng.choice(templates)).format(value=_clause_words(attribute, value), ref=ref_words)


# --------------------------------------------------------------------------- triplets


def _order(garment: str, attribute: str) -> tuple[str, ...]:
    return GARMENTS[garment][attribute] if attribute in ("sleeve", "length") else ()


class _Gallery:
    """The items of one split as an integer matrix (N, 5); -1 marks a missing attribute."""

    def __init__(self, attributes: list[Attributes]) -> None:
        self.vocab = {
            "type": list(GARMENTS),
            "colour": list(PALETTE),
            "pattern": list(PATTERNS),
            "sleeve": list(SLEEVES),
            "length": sorted({v for g in GARMENTS.values() for v in g["length"]}),
        }
        self.codes = np.array(
            [[self.encode(key, a[key]) for key in ATTRIBUTES] for a in attributes], dtype=np.int64
        ).reshape(-1, len(ATTRIBUTES))
        types = self.vocab["type"]
        self.swappable = np.array([[a == b or frozenset((a, b)) in TYPE_SWAPS for b in types] for a in types])

    def encode(self, key: str, value: str | None) -> int:
        return -1 if value is None else self.vocab[key].index(value)

    def candidates(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Items whose attributes differ from item ``index`` in 1-2 described attributes.

        An attribute that disappears with a type change (a dress's sleeves when it becomes a
        skirt) needs no words; one that appears (the sleeves of a skirt that becomes a dress)
        does. Returns the candidate indices (K,) and which attributes each changes (K, 5).
        """
        reference = self.codes[index]
        described = (self.codes != reference) & (self.codes != -1)  # (N, 5)
        counts = described.sum(axis=1)
        ok = (counts >= 1) & (counts <= 2) & self.swappable[reference[0], self.codes[:, 0]]
        return np.flatnonzero(ok), described[ok]

    def matches(self, allowed: list[list[int]]) -> np.ndarray:
        """Indices of items whose every attribute code is in the allowed list for that column."""
        keep = np.ones(len(self.codes), bool)
        for column, values in enumerate(allowed):
            keep &= np.isin(self.codes[:, column], values)
        return np.flatnonzero(keep)


@dataclass(frozen=True)
class _Change:
    """One described change: the target's value, or a relative step (+1 longer, -1 shorter)."""

    attribute: str
    value: str
    step: int = 0


def _describe_changes(reference: Attributes, target: Attributes, rng: np.random.Generator) -> list[_Change]:
    """The changes the text mentions; sleeves and lengths within one type may be relative."""
    changes = []
    for key in ATTRIBUTES:
        value = target[key]
        if value is None or value == reference[key]:
            continue
        order = _order(target["type"] or "", key)
        step = 0
        if reference[key] is not None and target["type"] == reference["type"] and order:
            if rng.random() < 0.5:
                step = 1 if order.index(value) > order.index(reference[key]) else -1
        changes.append(_Change(key, value, step))
    return changes


def _allowed_values(reference: Attributes, target_type: str, changes: Sequence[_Change]) -> dict[str, set[str | None]]:
    """What an item must have to satisfy "the reference with these changes".

    Unchanged attributes keep the reference's value; attributes that do not apply to the
    (possibly new) type must be absent; a relative change allows every value beyond the
    reference's in that direction.
    """
    by_key = {c.attribute: c for c in changes}
    allowed: dict[str, set[str | None]] = {"type": {target_type}}
    for key in ATTRIBUTES[1:]:
        order = _order(target_type, key)
        change = by_key.get(key)
        if key in ("sleeve", "length") and not order:
            allowed[key] = {None}
        elif change is None:
            allowed[key] = {reference[key]}
        elif change.step == 0:
            allowed[key] = {change.value}
        else:
            position = order.index(reference[key] or "")
            allowed[key] = {v for i, v in enumerate(order) if (i - position) * change.step > 0}
    return allowed


def _clauses(reference: Attributes, changes: Sequence[_Change], rng: np.random.Generator) -> list[str]:
    clauses = []
    for change in changes:
        if change.step:
            clauses.append(str(rng.choice(_RELATIVE_CLAUSES[(change.attribute, change.step)])))
        else:
            clauses.append(_absolute_clause(change.attribute, change.value, reference[change.attribute], rng))
    return [clauses[i] for i in rng.permutation(len(clauses))]


def evaluation_text(clauses: Sequence[str]) -> str:
    """The evaluation form of the clauses: Fashion-IQ style ``"C1 and c2"`` (first capitalised)."""
    text = " and ".join(clauses)
    return text[:1].upper() + text[1:]


def _split_triplets(items: list[Item], split: str, rng: np.random.Generator, start: int) -> tuple[list[Triplet], int]:
    """Triplets of one split; returns them and how many ambiguous candidates were passed over."""
    gallery = _Gallery([item.attributes for item in items])
    triplets: list[Triplet] = []
    num_ambiguous = 0
    for index in rng.permutation(len(items)):
        chosen = 0
        for candidate in _ordered_candidates(gallery, int(index), rng):
            if chosen == TRIPLETS_PER_REFERENCE[split]:
                break
            triplet = _make_triplet(items, gallery, int(index), candidate, rng, f"demo-cir-{start + len(triplets):06d}")
            if triplet is None:
                num_ambiguous += 1
                continue
            triplets.append(triplet)
            chosen += 1
    return triplets, num_ambiguous


def _interleave(groups: list[list[int]]) -> list[int]:
    """Round-robin over the groups: the first of each, then the second of each, ..."""
    rounds = itertools.zip_longest(*groups)
    return [member for members in rounds for member in members if member is not None]


def _ordered_candidates(gallery: _Gallery, index: int, rng: np.random.Generator) -> list[int]:
    """Candidate targets in a seeded order that takes each kind of change in turn.

    One-change and two-change targets alternate, and within each, the kinds (colour, type,
    colour + pattern, ...) take turns, so that colour changes, the most numerous, do not
    crowd out the rest.
    """
    candidates, described = gallery.candidates(index)
    by_count = []
    for count in (1, 2):
        kinds = sorted({tuple(row) for row in described.tolist() if sum(row) == count})
        groups = [[int(c) for c in rng.permutation(candidates[(described == kind).all(axis=1)])] for kind in kinds]
        by_count.append(_interleave([groups[i] for i in rng.permutation(len(groups))]))
    return _interleave([by_count[i] for i in rng.permutation(2)])


def _make_triplet(
    items: list[Item],
    gallery: _Gallery,
    index: int,
    candidate: int,
    rng: np.random.Generator,
    triplet_id: str,
) -> Triplet | None:
    """The triplet reference -> candidate, or None when its text would match another item too."""
    reference, target = items[index].attributes, items[candidate].attributes
    changes = _describe_changes(reference, target, rng)
    allowed = _allowed_values(reference, target["type"], changes)
    codes = [[gallery.encode(key, v) for v in sorted(allowed[key], key=str)] for key in ATTRIBUTES]
    if gallery.matches(codes).tolist() != [candidate]:
        return None
    clauses = _clauses(reference, changes, rng)
    return Triplet(
        id=triplet_id,
        split=items[index].split,
        reference=items[index].id,
        target=items[candidate].id,
        text=evaluation_text(clauses),
        texts=tuple(clauses),
        category=target["type"] or "",
    )


def make_triplets(items: list[Item], seed: int) -> tuple[list[Triplet], int]:
    """Composed-retrieval triplets within each split (never across splits).

    Returns:
        The triplets and the number of candidates passed over because their text was ambiguous.
    """
    rng = np.random.default_rng([seed, 3])
    triplets: list[Triplet] = []
    num_ambiguous = 0
    for split in ("train", "val", "test"):
        split_items = [item for item in items if item.split == split]
        new, ambiguous = _split_triplets(split_items, split, rng, start=len(triplets))
        triplets += new
        num_ambiguous += ambiguous
    return triplets, num_ambiguous


# --------------------------------------------------------------------------- dataset


def _check_arguments(num_items: int, seed: int, image_size: int, space_size: int) -> None:
    if num_items < 1 or num_items > space_size:
        raise UserError(
            f"num_items must be between 1 and {space_size} (the number of distinct demo garments); got {num_items}."
        )
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed}.")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels; got {image_size}.")


def make_items(num_items: int, seed: int) -> list[Item]:
    """Sample ``num_items`` distinct attribute combinations and make their manifest items."""
    space = attribute_space()
    rng = np.random.default_rng([seed, 0])
    chosen = rng.choice(len(space), size=num_items, replace=False)
    ids = [f"demo-{i:06d}" for i in range(num_items)]
    splits = assign_splits(ids, seed, *SPLIT_FRACTIONS)
    items = []
    for number, (item_id, index) in enumerate(zip(ids, chosen, strict=True)):
        attributes = space[int(index)]
        description_rng = np.random.default_rng([seed, 2, number])
        items.append(
            Item(
                id=item_id,
                image=f"images/{item_id}.png",
                split=splits[item_id],
                caption=caption_for(attributes),
                description=describe(attributes, description_rng),
                category=attributes["type"] or "",
                attributes=attributes,
            )
        )
    return items


def _image_writer(items: list[Item], seed: int, image_size: int, progress: Progress) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        progress.start("prepare", len(items))
        for number, item in enumerate(items):
            rng = np.random.default_rng([seed, 1, number])
            draw_garment(item.attributes, image_size, rng).save(tmp / item.image, format="PNG")
            progress.advance("prepare")

    return write


def space_summary() -> dict[str, Any]:
    """The attribute space as recorded in the report."""
    return {
        "type": list(GARMENTS),
        "colour": list(PALETTE),
        "pattern": list(PATTERNS),
        "sleeve": list(SLEEVES),
        "length": {g: list(o["length"]) for g, o in GARMENTS.items() if o["length"]},
        "sleeve_by_type": {g: list(o["sleeve"]) for g, o in GARMENTS.items() if o["sleeve"]},
        "type_swaps": sorted(sorted(pair) for pair in TYPE_SWAPS),
        "size": len(attribute_space()),
    }


def prepare_demo(
    out: str | Path,
    num_items: int = 1200,
    seed: int = 0,
    image_size: int = 128,
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Generate the demo dataset into ``out``.

    Args:
        out: the dataset directory (replaced as a whole when the write succeeds).
        num_items: how many distinct garments to draw (at most the attribute space size).
        seed: seed of everything: attributes, splits, texts, triplets and drawing.
        image_size: width and height of the square PNG images.
        progress: receives ``prepare`` progress, one step per image.

    Returns:
        The report written to ``out/report.json``.

    Raises:
        UserError: ``num_items`` larger than the attribute space (or < 1), a negative seed, or
            an image size under 32 pixels.
    """
    _check_arguments(num_items, seed, image_size, len(attribute_space()))
    items = make_items(num_items, seed)
    triplets, num_ambiguous = make_triplets(items, seed)
    info = {
        "dataset": "demo",
        "seed": seed,
        "image_size": image_size,
        "num_items_requested": num_items,
        "attribute_space": space_summary(),
        "num_ambiguous_candidates": num_ambiguous,
    }
    writer = _image_writer(items, seed, image_size, progress)
    return write_dataset(out, items, triplets, SkipLog(), info, write_files=writer)
