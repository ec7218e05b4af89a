"""Composed-retrieval triplets of the demo data: 1-2 described changes, never ambiguous."""

import itertools
from collections.abc import Sequence

import numpy as np

from unifashion_core.data.demo.attributes import (
    ATTRIBUTES,
    GARMENTS,
    PALETTE,
    PATTERNS,
    SLEEVES,
    TYPE_SWAPS,
    Attributes,
)
from unifashion_core.data.demo.texts import Change, evaluation_text, modification_clauses
from unifashion_core.data.manifest import Item, Triplet

TRIPLETS_PER_REFERENCE: dict[str, int] = {"train": 1, "val": 2, "test": 2}
Allowed = dict[str, set[str | None]]  # per attribute, the values a triplet's text allows


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


def _describe_changes(reference: Attributes, target: Attributes, rng: np.random.Generator) -> list[Change]:
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
        changes.append(Change(key, value, step))
    return changes


def _allowed_values(reference: Attributes, target_type: str, changes: Sequence[Change]) -> dict[str, set[str | None]]:
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


def _split_triplets(
    items: list[Item], split: str, rng: np.random.Generator, start: int
) -> tuple[list[tuple[Triplet, Allowed]], int]:
    """Triplets of one split (with what their texts allow); and how many ambiguous candidates
    were passed over."""
    gallery = _Gallery([item.attributes for item in items])
    triplets: list[tuple[Triplet, Allowed]] = []
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
) -> tuple[Triplet, Allowed] | None:
    """The triplet reference -> candidate and what its text allows, or None when the text would
    match another item too."""
    reference, target = items[index].attributes, items[candidate].attributes
    changes = _describe_changes(reference, target, rng)
    allowed = _allowed_values(reference, target["type"], changes)
    codes = [[gallery.encode(key, v) for v in sorted(allowed[key], key=str)] for key in ATTRIBUTES]
    if gallery.matches(codes).tolist() != [candidate]:
        return None
    clauses = modification_clauses(reference, changes, rng)
    triplet = Triplet(
        id=triplet_id,
        split=items[index].split,
        reference=items[index].id,
        target=items[candidate].id,
        text=evaluation_text(clauses),
        texts=tuple(clauses),
        category=target["type"] or "",
    )
    return triplet, allowed


def make_triplets(items: list[Item], seed: int) -> tuple[list[Triplet], int]:
    """Composed-retrieval triplets within each split (never across splits).

    Returns:
        The triplets and the number of candidates passed over because their text was ambiguous.
    """
    triplets, num_ambiguous, _ = triplets_and_texts(items, seed)
    return triplets, num_ambiguous


def triplets_and_texts(items: list[Item], seed: int) -> tuple[list[Triplet], int, list[Allowed]]:
    """:func:`make_triplets`, and per triplet the attribute values its text allows (an item added
    to its split later must not have all of them, or the triplet's target stops being unique)."""
    rng = np.random.default_rng([seed, 3])
    made: list[tuple[Triplet, Allowed]] = []
    num_ambiguous = 0
    for split in ("train", "val", "test"):
        split_items = [item for item in items if item.split == split]
        new, ambiguous = _split_triplets(split_items, split, rng, start=len(made))
        made += new
        num_ambiguous += ambiguous
    return [triplet for triplet, _ in made], num_ambiguous, [allowed for _, allowed in made]


def satisfies(attributes: Attributes, allowed: Allowed) -> bool:
    """Whether a garment with ``attributes`` fits a triplet text that allows ``allowed``."""
    return all(attributes[key] in allowed[key] for key in ATTRIBUTES)
