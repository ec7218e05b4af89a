"""The demo attribute space: garment types, colours, patterns, sleeves and lengths."""

from typing import Any

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
