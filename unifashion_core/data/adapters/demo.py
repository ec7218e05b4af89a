"""``prepare demo``: generate the built-in demo dataset (see ``unifashion_core.data.demo``).

Two parts: the catalogue (``num_items`` garments, ``demo-NNNNNN``, and the composed-retrieval
triplets among them) and the try-on part (``num_tryon`` more garments, ``demo-tryon-NNNNNN``,
each worn by a drawn person: VITON-HD's files as the item's ``extras``). The try-on garments are
attribute combinations that the catalogue did not draw and that no triplet text describes, so
every item stays a distinct combination and every triplet target the only match in its split;
they are drawn from their own random streams, so the catalogue part is the same with or without
them, byte for byte.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unifashion_core.data.adapters.common import assign_splits
from unifashion_core.data.demo.attributes import attribute_space, space_summary
from unifashion_core.data.demo.drawing import MIN_IMAGE_SIZE, draw_garment
from unifashion_core.data.demo.people import REGIONS, cloth_mask, draw_person
from unifashion_core.data.demo.texts import caption_for, describe
from unifashion_core.data.demo.triplets import Allowed, satisfies, triplets_and_texts
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

SPLIT_FRACTIONS: tuple[float, float] = (0.15, 0.15)  # val, test; the rest is train
DEFAULT_NUM_TRYON = 144
# VITON-HD's folders for the try-on extras (the item's own image is the in-shop garment).
TRYON_FOLDERS: dict[str, str] = {
    "person": "tryon/image",
    "agnostic": "tryon/agnostic",
    "mask": "tryon/agnostic-mask",
    "cloth_mask": "tryon/cloth-mask",
    "sketch": "tryon/sketch",
}


def _check_arguments(num_items: int, seed: int, image_size: int, space_size: int) -> None:
    if num_items < 1 or num_items > space_size:
        raise UserError(
            f"num_items must be between 1 and {space_size} (the number of distinct demo garments); got {num_items}."
        )
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed}.")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels; got {image_size}.")


def _catalogue_choice(num_items: int, seed: int) -> np.ndarray:
    """Indices into ``attribute_space()`` of the catalogue's garments, in item order."""
    return np.random.default_rng([seed, 0]).choice(len(attribute_space()), size=num_items, replace=False)


def _items(prefix: str, chosen: list[int], seed: int, stream: int) -> list[Item]:
    """Items ``{prefix}-NNNNNN`` of the combinations ``chosen``; descriptions from ``stream``."""
    space = attribute_space()
    ids = [f"{prefix}-{i:06d}" for i in range(len(chosen))]
    splits = assign_splits(ids, seed, *SPLIT_FRACTIONS)
    items = []
    for number, (item_id, index) in enumerate(zip(ids, chosen, strict=True)):
        attributes = space[int(index)]
        description_rng = np.random.default_rng([seed, stream, number])
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


def make_items(num_items: int, seed: int) -> list[Item]:
    """Sample ``num_items`` distinct attribute combinations and make their manifest items."""
    return _items("demo", _catalogue_choice(num_items, seed).tolist(), seed, 2)


def tryon_choices(num_items: int, seed: int, texts: list[Allowed]) -> list[int]:
    """The combinations the try-on part may use: those the catalogue did not draw and that no
    triplet text describes (``texts``: what each allows), so that every item stays a distinct
    combination and every triplet's target the only match in its split."""
    used = set(_catalogue_choice(num_items, seed).tolist())
    space = attribute_space()
    return [index for index in range(len(space))
            if index not in used and not any(satisfies(space[index], allowed) for allowed in texts)]


def make_tryon_items(choices: list[int], num_tryon: int, seed: int) -> list[Item]:
    """The try-on part: ``num_tryon`` garments drawn from ``choices`` (:func:`tryon_choices`),
    each with its person's files as ``extras`` and, when its split has another person of the same
    body region (else any other), that person as ``attributes["unpaired_person"]``."""
    picked = np.random.default_rng([seed, 6]).choice(len(choices), size=num_tryon, replace=False)
    items = _items("demo-tryon", [choices[int(k)] for k in picked], seed, 5)
    extras = {item.id: {key: f"images/{folder}/{item.id}.png" for key, folder in TRYON_FOLDERS.items()}
              for item in items}
    partners = _unpaired_partners(items)
    return [
        dataclasses.replace(item, extras=extras[item.id],
                            attributes={**item.attributes, **({"unpaired_person": partners[item.id]}
                                                              if item.id in partners else {})})
        for item in items
    ]


def _unpaired_partners(items: list[Item]) -> dict[str, str]:
    """Per item, the next item of its split in the same body region (cyclically; any region when
    it is alone there): whose person wears the item's garment in the unpaired setting."""
    partners = {}
    for split in {item.split for item in items}:
        members = [item for item in items if item.split == split]
        for item in members:
            same = [m for m in members if REGIONS[m.attributes["type"]] == REGIONS[item.attributes["type"]]]
            group = same if len(same) > 1 else members
            if len(group) > 1:
                partners[item.id] = group[(group.index(item) + 1) % len(group)].id
    return partners


def _image_writer(
    items: list[Item], tryon: list[Item], seed: int, image_size: int, progress: Progress
) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        progress.start("prepare", len(items) + len(tryon))
        for number, item in enumerate(items):
            rng = np.random.default_rng([seed, 1, number])
            draw_garment(item.attributes, image_size, rng).save(tmp / item.image, format="PNG")
            progress.advance("prepare")
        for folder in TRYON_FOLDERS.values() if tryon else ():
            (tmp / "images" / folder).mkdir(parents=True)
        for number, item in enumerate(tryon):
            _write_tryon(tmp, item, image_size, np.random.default_rng([seed, 4, number]))
            progress.advance("prepare")

    return write


def _write_tryon(tmp: Path, item: Item, image_size: int, rng: np.random.Generator) -> None:
    """The in-shop garment and its person's files, stripes running the same way in both."""
    vertical = bool(rng.integers(2))
    garment = draw_garment(item.attributes, image_size, rng, vertical)
    person = draw_person(item.attributes, image_size, rng, vertical)
    files = {"image": garment, "person": person.person, "agnostic": person.agnostic, "mask": person.mask,
             "cloth_mask": cloth_mask(garment), "sketch": person.sketch}
    for key, image in files.items():
        image.save(tmp / (item.image if key == "image" else item.extras[key]), format="PNG")


def prepare_demo(
    out: str | Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    num_items: int = 1200,
    image_size: int = 128,
    num_tryon: int | None = None,
) -> dict[str, Any]:
    """Generate the demo dataset into ``out``.

    Args:
        out: the dataset directory (replaced as a whole when the write succeeds).
        seed: seed of everything: attributes, splits, texts, triplets and drawing.
        progress: receives ``prepare`` progress, one step per garment.
        num_items: how many distinct catalogue garments to draw (at most the attribute space size).
        image_size: width and height of the square PNG images.
        num_tryon: how many try-on garments (each worn by a drawn person) to add; None: up to
            ``DEFAULT_NUM_TRYON``, as many as :func:`tryon_choices` allows; 0: none.

    Returns:
        The report written to ``out/report.json``.

    Raises:
        UserError: ``num_items`` larger than the attribute space (or < 1), a negative seed, an
            image size under 32 pixels, or more try-on garments than combinations left over.
    """
    _check_arguments(num_items, seed, image_size, len(attribute_space()))
    items = make_items(num_items, seed)
    triplets, num_ambiguous, texts = triplets_and_texts(items, seed)
    choices = tryon_choices(num_items, seed, texts)
    num_tryon = min(DEFAULT_NUM_TRYON, len(choices)) if num_tryon is None else num_tryon
    if not 0 <= num_tryon <= len(choices):
        raise UserError(f"num_tryon must be between 0 and {len(choices)} (the demo garments that {num_items} "
                        f"catalogue items and their triplets leave over); got {num_tryon}.")
    tryon = make_tryon_items(choices, num_tryon, seed)
    info = {
        "dataset": "demo",
        "seed": seed,
        "image_size": image_size,
        "num_items_requested": num_items,
        "num_tryon": num_tryon,
        "attribute_space": space_summary(),
        "num_ambiguous_candidates": num_ambiguous,
    }
    writer = _image_writer(items, tryon, seed, image_size, progress)
    return write_dataset(out, items + tryon, triplets, SkipLog(), info, write_files=writer)
