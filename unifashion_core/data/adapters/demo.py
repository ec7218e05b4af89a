"""``prepare demo``: generate the built-in demo dataset (see ``unifashion_core.data.demo``)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unifashion_core.data.adapters.common import assign_splits
from unifashion_core.data.demo.attributes import attribute_space, space_summary
from unifashion_core.data.demo.drawing import MIN_IMAGE_SIZE, draw_garment
from unifashion_core.data.demo.texts import caption_for, describe
from unifashion_core.data.demo.triplets import make_triplets
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

SPLIT_FRACTIONS: tuple[float, float] = (0.15, 0.15)  # val, test; the rest is train


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


def prepare_demo(
    out: str | Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    num_items: int = 1200,
    image_size: int = 128,
) -> dict[str, Any]:
    """Generate the demo dataset into ``out``.

    Args:
        out: the dataset directory (replaced as a whole when the write succeeds).
        seed: seed of everything: attributes, splits, texts, triplets and drawing.
        progress: receives ``prepare`` progress, one step per image.
        num_items: how many distinct garments to draw (at most the attribute space size).
        image_size: width and height of the square PNG images.

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
