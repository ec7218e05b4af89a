"""Fashion200K: ``labels/{category}_{split}_detect_all.txt`` + images under ``women/...``.

Each label line is ``path<TAB>detection score<TAB>description``, the path relative to the root.
caption = the description, category = the label file's category, id = the image file name
without extension (e.g. ``51727804_0``: product id and view). A line without three fields or with
a non-numeric score is skipped with reason ``malformed_line``; an image listed twice (in any label
file) is kept once and the repeat skipped with reason ``duplicate_id``; a path that is absolute,
has a ``..`` or resolves (through a symlink) outside the root is skipped with reason
``outside_root``.
"""

from pathlib import Path, PurePosixPath
from typing import Any

from unifashion_core.data.adapters.common import IMAGE_DIR, clean_text, copy_files, report_info, source_image
from unifashion_core.data.images import MAX_PIXELS
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import open_text
from unifashion_core.progress import NullProgress, Progress

CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")
F200K_SPLITS = ("train", "test")


def prepare_fashion200k(
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Prepare Fashion200K with its official train/test label files.

    Args:
        root: directory holding ``labels/`` and the image tree (``women/...``).
        out: the prepared dataset directory.
        seed: recorded in the report (the official split is used).
        progress: receives progress events.
        max_pixels: images with more pixels are skipped (reason ``too_large``).

    Returns:
        The report of ``write_dataset``.
    """
    label_files = {
        (category, split): root / "labels" / f"{category}_{split}_detect_all.txt"
        for category in CATEGORIES
        for split in F200K_SPLITS
    }
    present = {key: path for key, path in label_files.items() if path.is_file()}
    if not present:
        raise UserError(f"{root}/labels has no *_detect_all.txt files; is it Fashion200K?")
    skipped = SkipLog()
    entries = [e for (c, s), path in present.items() for e in _read_labels(path, c, s, skipped)]
    items, files = _usable_items(root, entries, skipped, progress, max_pixels)
    info = report_info(
        "fashion200k", root, seed, label_files=sorted(p.name for p in present.values()),
        num_label_lines=len(entries),
    )  # fmt: skip
    return write_dataset(out, items, [], skipped, info, copy_files(files, progress))


def _usable_items(
    root: Path, entries: list[dict[str, Any]], skipped: SkipLog, progress: Progress, max_pixels: int
) -> tuple[list[Item], dict[str, Path]]:
    """The label entries whose image is inside the root and decodes (each image once)."""
    progress.start("check images", len(entries))
    items, files, seen = [], {}, set()
    for entry in entries:
        progress.advance("check images")
        item_id = PurePosixPath(entry["path"]).stem
        if item_id in seen:
            skipped.add(item_id, "duplicate_id", root / entry["path"])
        elif (image := source_image(root, entry["path"], item_id, skipped, max_pixels=max_pixels)) is not None:
            seen.add(item_id)
            dest = f"{IMAGE_DIR}/{entry['path']}"
            files[dest] = image
            items.append(_item(item_id, dest, entry))
    return items, files


def _read_labels(path: Path, category: str, split: str, skipped: SkipLog) -> list[dict[str, Any]]:
    entries = []
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # a blank line is not a record
            entry = _parse_line(line)
            if entry is None:
                skipped.add(f"{path.name}:{line_number}", "malformed_line", path, "line")
            elif not entry["description"]:
                skipped.add(PurePosixPath(entry["path"]).stem, "empty_caption", entry["path"])
            else:
                entries.append({**entry, "category": category, "split": split})
    return entries


def _parse_line(line: str) -> dict[str, Any] | None:
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) < 3 or not fields[0].strip():
        return None
    try:
        score = float(fields[1])
    except ValueError:
        return None
    path = fields[0].strip().replace("\\", "/")
    return {"path": path, "score": score, "description": clean_text(" ".join(fields[2:]))}


def _item(item_id: str, image: str, entry: dict[str, Any]) -> Item:
    return Item(
        id=item_id,
        image=image,
        split=entry["split"],
        caption=entry["description"],
        category=entry["category"],
        attributes={
            "detection_score": entry["score"],
            "product_id": PurePosixPath(entry["path"]).parent.name,
            "source_path": entry["path"],
        },
    )
