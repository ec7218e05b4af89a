"""The demo texts: short captions, product descriptions and modification texts (wording seeded)."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unifashion_core.data.demo.attributes import Attributes


def caption_for(attributes: Attributes) -> str:
    """The short caption: colour, pattern, sleeve, length, type (absent ones left out).

    Example: ``"red striped long-sleeve knee-length dress"``.
    """
    return " ".join(attributes[key] for key in ("colour", "pattern", "sleeve", "length", "type") if attributes[key])


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


@dataclass(frozen=True)
class Change:
    """One described change: the target's value, or a relative step (+1 longer, -1 shorter)."""

    attribute: str
    value: str
    step: int = 0


def modification_clauses(reference: Attributes, changes: Sequence[Change], rng: np.random.Generator) -> list[str]:
    """One clause per change (absolute or relative wording chosen with ``rng``), in a seeded order."""
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
