"""Fashion-IQ: composed image retrieval triplets over dress, shirt and top/tee images.

Official layout::

    captions/cap.{dress,shirt,toptee}.{train,val,test}.json   [{candidate, target, captions}]
    image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   [asin, ...]
    images/{asin}.png (or .jpg)

Choices made here:

- The official split names are kept. The official test captions have no target, so those
  triplets have ``target == ""``; results are reported on ``val`` (as in the paper).
- An item is one (category, image) pair with id ``"{category}-{asin}"``: about 3,300 images are
  listed under both ``shirt`` and ``toptee`` (some in different splits), and each category has its
  own gallery. The image file is shared.
- Fashion-IQ has no per-image captions: items carry ``caption == ""`` and are *not* skipped for
  it; gallery captions come from the model's captioner at index time.
- Query text (evaluation form): ``"{C1} and {c2}"``, each sentence stripped of ``.?, `` and the
  first capitalised (``str.capitalize``, as the reference evaluation code does); ``texts`` keeps
  the two raw sentences for the random choices used in training.
- Many images are dead links. A triplet whose reference or target is not a prepared item is
  skipped with reason ``missing_reference`` or ``missing_target``; the report counts them.
"""

import json
from pathlib import Path
from typing import Any

from unifashion_core.data.adapters.common import IMAGE_DIR, check_image, copy_files, report_info
from unifashion_core.data.manifest import Item, SkipLog, Triplet, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_STRIP = ".?, "


def prepare_fashioniq(
    root: Path, out: Path, *, seed: int = 0, progress: Progress = NullProgress()
) -> dict[str, Any]:
    """Prepare Fashion-IQ items (images in the official splits) and triplets.

    Args:
        root: directory holding ``captions/``, ``image_splits/`` and ``images/``.
        out: the prepared dataset directory.
        seed: recorded in the report (the official splits are used as they are).
        progress: receives progress events.

    Returns:
        The report of ``write_dataset``, with ``num_triplets_lost`` and ``triplets_lost`` (per
        reason) added.
    """
    if not (root / "captions").is_dir() and not (root / "image_splits").is_dir():
        raise UserError(f"{root} has neither captions/ nor image_splits/; is it Fashion-IQ?")
    skipped = SkipLog()
    absent: list[str] = []
    items, files = _read_items(root, skipped, absent, progress)
    triplets, num_entries = _read_triplets(root, {i.id for i in items}, skipped, absent, progress)
    lost = {
        reason: sum(e.kind == "triplet" and e.reason == reason for e in skipped.entries)
        for reason in ("missing_reference", "missing_target", "empty_caption", "malformed_entry")
    }
    info = report_info(
        "fashioniq", root, seed, num_caption_entries=num_entries, absent_files=absent
    )
    info.update(num_triplets_lost=sum(lost.values()), triplets_lost=lost)
    progress.log(f"Fashion-IQ: {sum(lost.values())} of {num_entries} triplets lost")
    return write_dataset(out, items, triplets, skipped, info, copy_files(files, progress))


def query_text(captions: list[str]) -> str:
    """The evaluation query ``"{C1} and {c2}"`` (stripped of ``.?, ``; "" when both are empty)."""
    parts = [c.strip(_STRIP) for c in captions if c.strip(_STRIP)]
    if not parts:
        return ""
    return " and ".join([parts[0].capitalize(), *parts[1:]])


def _read_json_list(path: Path, absent: list[str]) -> list[Any]:
    if not path.is_file():
        absent.append(f"{path.parent.name}/{path.name}")
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}.") from exc
    if not isinstance(data, list):
        raise UserError(f"{path} should hold a JSON list.")
    return data


def _find_image(folder: Path, names: set[str], asin: str) -> Path | None:
    found = (f"{asin}{ext}" for ext in IMAGE_EXTENSIONS if f"{asin}{ext}" in names)
    return folder / name if (name := next(found, None)) else None


def _read_items(
    root: Path, skipped: SkipLog, absent: list[str], progress: Progress
) -> tuple[list[Item], dict[str, Path]]:
    listed = [
        (category, split, str(asin))
        for category in CATEGORIES
        for split in FIQ_SPLITS
        for asin in _read_json_list(root / f"image_splits/split.{category}.{split}.json", absent)
    ]
    folder = root / "images"
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()  # one listing
    progress.start("check images", len(listed))
    items, files = [], {}
    for category, split, asin in listed:
        progress.advance("check images")
        image, item_id = _find_image(folder, names, asin), f"{category}-{asin}"
        if image is None:  # most Fashion-IQ images are dead links: not worth a stat each
            skipped.add(item_id, "missing", f"{folder}/{asin}.png")
        elif check_image(image, item_id, skipped):
            dest = f"{IMAGE_DIR}/{image.name}"
            files[dest] = image
            attributes = {"asin": asin}
            items.append(Item(item_id, dest, split, "", category=category, attributes=attributes))
    return items, files


def _read_triplets(
    root: Path, item_ids: set[str], skipped: SkipLog, absent: list[str], progress: Progress
) -> tuple[list[Triplet], int]:
    triplets, num_entries = [], 0
    for category in CATEGORIES:
        for split in FIQ_SPLITS:
            path = root / "captions" / f"cap.{category}.{split}.json"
            entries = _read_json_list(path, absent)
            progress.start(f"read {path.name}", len(entries))
            for index, entry in enumerate(entries):
                triplet_id = f"{category}-{split}-{index:05d}"
                triplet = _triplet(triplet_id, entry, category, split, item_ids, skipped, path)
                if triplet is not None:
                    triplets.append(triplet)
            progress.advance(f"read {path.name}", len(entries))
            num_entries += len(entries)
    return triplets, num_entries


def _triplet(
    triplet_id: str,
    entry: Any,
    category: str,
    split: str,
    item_ids: set[str],
    skipped: SkipLog,
    path: Path,
) -> Triplet | None:
    if not isinstance(entry, dict) or "candidate" not in entry:
        skipped.add(triplet_id, "malformed_entry", path, "triplet")
        return None
    captions = [str(c) for c in entry.get("captions") or []]
    reference = f"{category}-{entry['candidate']}"
    target = f"{category}-{entry['target']}" if entry.get("target") else ""
    if reference not in item_ids:
        reason = "missing_reference"
    elif target and target not in item_ids:
        reason = "missing_target"
    else:
        reason = "" if query_text(captions) else "empty_caption"
    if reason:
        skipped.add(triplet_id, reason, path, "triplet")
        return None
    texts = tuple(c.strip() for c in captions)
    return Triplet(triplet_id, split, reference, target, query_text(captions), texts, category)
