"""What the dataset adapters share: path containment, image checks, copying, splits, texts.

Nothing is dropped without a reason: ``source_image`` records every unusable image (outside
the root, missing, unreadable...) in the adapter's ``SkipLog``. Names read from dataset files
(pairs files, label files, CSV ids, HDF5 product ids) never reach the file system unchecked:
``resolve_inside`` refuses any that would read outside ``--root``, ``relative_name`` any that
would write outside ``--out``.
"""

import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from unifashion_core.data.images import MAX_PIXELS, ImageError, open_image
from unifashion_core.data.manifest import SkipLog
from unifashion_core.errors import UserError
from unifashion_core.progress import Progress

IMAGE_DIR = "images"  # images are copied to <out>/images/... ; manifest paths start with it
OUTSIDE_ROOT = "outside_root"  # the skip reason of a name that escapes --root or --out


def report_info(name: str, root: Path, seed: int, **fields: Any) -> dict[str, Any]:
    """The dataset-specific part of a report: what was read, with which seed, plus ``fields``."""
    return {"dataset": name, "source": str(root), "seed": seed, **fields}


def relative_name(name: str | PurePath) -> PurePosixPath | None:
    """``name`` as a relative path that stays below the directory it is joined to, or None.

    Refused: an empty or absolute name, a ``..`` component and a NUL character.
    """
    text = str(name)
    relative = PurePosixPath(text)
    if not text.strip() or "\0" in text or relative.is_absolute() or ".." in relative.parts:
        return None
    return relative


def resolve_inside(root: Path, name: str | PurePath, folder: str = "") -> Path | None:
    """The real path of ``root / folder / name``, or None when it lies outside the real ``root``.

    This is the one containment check of the adapters: ``name`` (as read from a dataset file,
    relative to ``folder``) must pass ``relative_name``, and the path with every symlink followed
    must still be below ``root`` with its symlinks followed.
    """
    relative = relative_name(name)
    if relative is None:
        return None
    base = root.resolve()
    try:
        real = (base / folder / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop leads nowhere, in particular not inside
        return None
    return real if real.is_relative_to(base) else None


def check_image(
    path: Path, id: str, skipped: SkipLog, kind: str = "item", max_pixels: int = MAX_PIXELS
) -> bool:
    """Decode ``path``; on failure record ``id`` in ``skipped`` with the reason and return False."""
    try:
        open_image(path, max_pixels)
    except ImageError as exc:
        skipped.add(id, exc.reason, path, kind)
        return False
    return True


def source_image(
    root: Path,
    name: str | PurePath,
    id: str,
    skipped: SkipLog,
    kind: str = "item",
    max_pixels: int = MAX_PIXELS,
) -> Path | None:
    """The real path of the image ``root / name`` when it is inside ``root`` and decodes.

    Otherwise the reason (``outside_root`` or one of ``open_image``'s) is recorded for ``id`` in
    ``skipped`` and None returned.
    """
    path = resolve_inside(root, name)
    if path is None:
        skipped.add(id, OUTSIDE_ROOT, root / str(name), kind)
        return None
    return path if check_image(path, id, skipped, kind, max_pixels) else None


def destination(out: Path, dest: str) -> Path:
    """The file ``out / dest`` to write, its folder created.

    Raises:
        ValueError: ``dest`` escapes ``out`` (a bug: adapters refuse such names earlier).
    """
    target = resolve_inside(out, dest)
    if target is None:
        raise ValueError(f"{dest!r} would be written outside {out}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def copy_files(files: dict[str, Path], progress: Progress) -> Callable[[Path], None]:
    """A ``write_files`` callback for ``write_dataset`` copying ``{relative dest: source}``.

    The sources are real paths (``source_image``); a source replaced by a symlink since it was
    checked is not followed.
    """

    def write(tmp: Path) -> None:
        progress.start("copy images", len(files))
        for dest, source in files.items():
            _copy_no_follow(source, destination(tmp, dest))
            progress.advance("copy images")

    return write


def _copy_no_follow(source: Path, target: Path) -> None:
    descriptor = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)


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
