"""What the dataset adapters share: image checks, copying, seeded splits, text cleaning, reports.

Nothing is dropped without a reason: ``check_image`` records every unusable image in the
adapter's ``SkipLog``.
"""

import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from unifashion_core.data.images import ImageError, open_image
from unifashion_core.data.manifest import SkipLog
from unifashion_core.errors import UserError
from unifashion_core.progress import Progress

IMAGE_DIR = "images"  # images are copied to <out>/images/... ; manifest paths start with it


def report_info(name: str, root: Path, seed: int, **fields: Any) -> dict[str, Any]:
    """The dataset-specific part of a report: what was read, with which seed, plus ``fields``."""
    return {"dataset": name, "source": str(root), "seed": seed, **fields}


def check_image(path: Path, id: str, skipped: SkipLog, kind: str = "item") -> bool:
    """Decode ``path``; on failure record ``id`` in ``skipped`` with the reason and return False."""
    try:
        open_image(path)
    except ImageError as exc:
        skipped.add(id, exc.reason, path, kind)
        return False
    return True


def copy_files(files: dict[str, Path], progress: Progress) -> Callable[[Path], None]:
    """A ``write_files`` callback for ``write_dataset`` copying ``{relative dest: source}``."""

    def write(tmp: Path) -> None:
        progress.start("copy images", len(files))
        for dest, source in files.items():
            target = tmp / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            progress.advance("copy images")

    return write


def assign_splits(
    keys: Iterable[str], seed: int, val_fraction: float = 0.0, test_fraction: float = 0.0
) -> dict[str, str]:
    """Seeded split of ``keys``: ``round(n * test_fraction)`` test, then val, the rest train.

    The result depends only on the set of keys and the seed (keys are sorted before shuffling).

    Raises:
        UserError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
            "and sum to less than 1."
        )
    ordered = sorted(set(keys))
    random.Random(seed).shuffle(ordered)
    num_test = round(len(ordered) * test_fraction)
    num_val = round(len(ordered) * val_fraction)
    return {
        key: "test" if i < num_test else "val" if i < num_test + num_val else "train"
        for i, key in enumerate(ordered)
    }


def clean_text(text: str) -> str:
    """Collapse runs of whitespace and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()
