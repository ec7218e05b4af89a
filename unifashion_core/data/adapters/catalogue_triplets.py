"""Composed-retrieval triplets a product catalogue implies, from its attributes alone.

Two kinds, always within one split and one gender:

- ``colour``: the same article type in another colour ("same but in red");
- ``type``: the same colour as another article type of the same master category ("the same
  colour, but as a skirt").

A text must name exactly one item: a target is only chosen when it is the one item of its split
with its (gender, article type, colour); references whose candidates are all ambiguous are
counted in the report. Each reference gets at most ``TRIPLETS_PER_KIND`` triplets of each kind,
so a big catalogue does not explode, and every choice (targets, wording) is seeded.
"""

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from unifashion_core.data.manifest import SPLITS, Item, Triplet

KINDS = ("colour", "type")
TRIPLETS_PER_KIND = 1  # per reference and kind: at most len(KINDS) triplets per reference
# Nouns that stay plural ("a pair of jeans" reads as "jeans"); the others lose their final s.
PLURAL_ONLY = {
    "jeans", "shorts", "pants", "trousers", "leggings", "tights", "briefs", "boxers", "capris",
    "sunglasses", "glasses", "jeggings", "trunks", "innerwear",
}  # fmt: skip
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "same but in {colour}",
        "the same {noun} in {colour}",
        "is {colour} instead of {ref_colour}",
        "in {colour} rather than {ref_colour}",
    ),
    "type": (
        "the same colour, but as {a_noun}",
        "{a_noun} in the same colour",
        "is {a_noun} instead of {a_ref_noun}, same colour",
        "keep the {ref_colour} colour but make it {a_noun}",
    ),
}
_COLOUR_WORDS = {"multi": "multiple colours"}

Key = tuple[str, ...]


def singular_noun(noun: str) -> str:
    """An article type as a singular lower-case noun: "Tshirts" -> "tshirt", "Jeans" -> "jeans"."""
    words = noun.lower().split()
    if not words:
        return ""
    last = words[-1]
    if last not in PLURAL_ONLY and last.endswith("s") and not last.endswith("ss"):
        last = last[:-2] if last.endswith(("sses", "ches", "shes", "xes")) else last[:-1]
    return " ".join([*words[:-1], last])


def _with_article(noun: str) -> str:
    if not noun or noun.split()[-1] in PLURAL_ONLY:
        return noun
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _words(item: Item) -> dict[str, str]:
    colour = item.attributes["baseColour"].lower()
    noun = singular_noun(item.attributes["articleType"])
    return {"colour": _COLOUR_WORDS.get(colour, colour), "noun": noun, "a_noun": _with_article(noun)}


def _modification_text(kind: str, reference: Item, target: Item, rng: np.random.Generator) -> str:
    ref, new = _words(reference), _words(target)
    fields = {**new, "ref_colour": ref["colour"], "a_ref_noun": ref["a_noun"]}
    return str(rng.choice(TEMPLATES[kind])).format(**fields)


def _eligible(item: Item) -> bool:
    return all(item.attributes.get(key) for key in ("gender", "masterCategory", "articleType", "baseColour"))


def _identity(item: Item) -> Key:
    """What a modification text pins down: gender, article type and colour."""
    return tuple(item.attributes[key] for key in ("gender", "articleType", "baseColour"))


# Per kind: the group a reference looks for targets in, and the attribute the target changes.
_GROUPS: dict[str, tuple[Callable[[Item], Key], str]] = {
    "colour": (lambda item: (item.attributes["gender"], item.attributes["articleType"]), "baseColour"),
    "type": (
        lambda item: tuple(item.attributes[k] for k in ("gender", "masterCategory", "baseColour")),
        "articleType",
    ),
}


def catalogue_triplets(items: list[Item], seed: int) -> tuple[list[Triplet], dict[str, Any]]:
    """The ``colour`` and ``type`` triplets of each split (reference and target in one split).

    Items without a gender, master category, article type or colour take no part.

    Args:
        items: the prepared catalogue items (``attributes`` as the fashion-product adapter
            writes them).
        seed: seed of the target and wording choices.

    Returns:
        The triplets, and their report: counts per kind and split, and per kind the number of
        (reference, kind) pairs passed over because every candidate target was ambiguous.
    """
    rng = np.random.default_rng([seed, 4])
    triplets: list[Triplet] = []
    ambiguous: Counter[str] = Counter()
    for split in SPLITS:
        members = sorted((i for i in items if i.split == split and _eligible(i)), key=lambda i: i.id)
        new, passed_over = _split_triplets(members, rng, start=len(triplets))
        triplets += new
        ambiguous += passed_over
    num_triplets = {kind: dict.fromkeys(SPLITS, 0) for kind in KINDS}
    for triplet, kind in triplets:
        num_triplets[kind][triplet.split] += 1
    report = {
        "triplets_per_reference_and_kind": TRIPLETS_PER_KIND,
        "num_triplets": num_triplets,
        "num_ambiguous_references": {kind: ambiguous[kind] for kind in KINDS},
    }
    return [triplet for triplet, _ in triplets], report


def _split_triplets(
    members: list[Item], rng: np.random.Generator, start: int
) -> tuple[list[tuple[Triplet, str]], Counter[str]]:
    """(triplet, kind) pairs among the items of one split, and the ambiguous references per kind."""
    num_with_identity = Counter(_identity(item) for item in members)
    groups = {kind: defaultdict(list) for kind in KINDS}
    for item in members:
        for kind, (group, _) in _GROUPS.items():
            groups[kind][group(item)].append(item)
    triplets: list[tuple[Triplet, str]] = []
    ambiguous: Counter[str] = Counter()
    for reference in members:
        for kind, (group, changed) in _GROUPS.items():
            value = reference.attributes[changed]
            others = [t for t in groups[kind][group(reference)] if t.attributes[changed] != value]
            candidates = [t for t in others if num_with_identity[_identity(t)] == 1]
            ambiguous[kind] += bool(others) and not candidates
            for index in rng.permutation(len(candidates))[:TRIPLETS_PER_KIND]:
                triplet = _triplet(f"fp-cir-{start + len(triplets):06d}", kind, reference, candidates[index], rng)
                triplets.append((triplet, kind))
    return triplets, ambiguous


def _triplet(triplet_id: str, kind: str, reference: Item, target: Item, rng: np.random.Generator) -> Triplet:
    clause = _modification_text(kind, reference, target, rng)
    return Triplet(
        id=triplet_id,
        split=reference.split,
        reference=reference.id,
        target=target.id,
        text=clause[:1].upper() + clause[1:],
        texts=(clause,),
        category=target.category,
    )
