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
- Many images are dead links. Every triplet of the caption files is kept all the same: one whose
  reference or target has no item simply names an id without an item, and ``bench cir`` counts
  it as a miss. The report says, per split, how many triplets were read, how many are
  answerable (every image present) and why the others are not (``missing_reference``,
  ``missing_target``, ``no_target`` for the official test split; ``malformed_entry`` and
  ``empty_caption`` entries are also skipped, with their reason, from ``triplets.jsonl``).
- Image names come from a listing of ``images/``; one that resolves outside the root (a
  symlink) is skipped with reason ``outside_root``.
"""

from collections import Counter
from pathlib import Path
from typing import Any

from unifashion_core.data.adapters.common import IMAGE_DIR, copy_files, report_info, source_image
from unifashion_core.data.images import MAX_PIXELS
from unifashion_core.data.manifest import SPLITS, Item, SkipLog, Triplet, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import read_json
from unifashion_core.progress import NullProgress, Progress

CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_STRIP = ".?, "


def prepare_fashioniq(
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Prepare Fashion-IQ items (images in the official splits) and every triplet.

    Args:
        root: directory holding ``captions/``, ``image_splits/`` and ``images/``.
        out: the prepared dataset directory.
        seed: recorded in the report (the official splits are used as they are).
        progress: receives progress events.
        max_pixels: images with more pixels are skipped (reason ``too_large``).

    Returns:
        The report of ``write_dataset``, with ``num_caption_entries`` and ``triplets`` (per split:
        ``num_read``, ``num_answerable`` and ``unanswerable`` counts by reason) added.
    """
    if not (root / "captions").is_dir() and not (root / "image_splits").is_dir():
        raise UserError(f"{root} has neither captions/ nor image_splits/; is it Fashion-IQ?")
    skipped = SkipLog()
    absent: list[str] = []
    items, files = _read_items(root, skipped, absent, progress, max_pixels)
    triplets, dropped, num_entries = _read_triplets(root, skipped, absent, progress)
    answerability = triplet_answerability(triplets, {item.id for item in items}, dropped)
    info = report_info(
        "fashioniq", root, seed, num_caption_entries=num_entries, absent_files=absent,
        triplets=answerability,
    )  # fmt: skip
    num_answerable = sum(split["num_answerable"] for split in answerability.values())
    progress.log(f"Fashion-IQ: {num_answerable} of {num_entries} triplets have all their images")
    return write_dataset(out, items, triplets, skipped, info, copy_files(files, progress))


def query_text(captions: list[str]) -> str:
    """The evaluation query ``"{C1} and {c2}"`` (stripped of ``.?, ``; "" when both are empty)."""
    parts = [c.strip(_STRIP) for c in captions if c.strip(_STRIP)]
    if not parts:
        return ""
    return " and ".join([parts[0].capitalize(), *parts[1:]])


def triplet_answerability(
    triplets: list[Triplet], item_ids: set[str], dropped: dict[str, Counter[str]]
) -> dict[str, dict[str, Any]]:
    """Per split: triplets read, answerable (reference and target are items), and why not.

    Args:
        triplets: the triplets kept.
        item_ids: the ids of the prepared items.
        dropped: per split, the entries of the caption files that made no triplet, by reason.
    """
    reasons = {split: Counter(dropped.get(split, {})) for split in SPLITS}
    num_answerable = Counter[str]()
    for triplet in triplets:
        if reason := _unanswerable_reason(triplet, item_ids):
            reasons[triplet.split][reason] += 1
        else:
            num_answerable[triplet.split] += 1
    return {
        split: {
            "num_read": num_answerable[split] + sum(reasons[split].values()),
            "num_answerable": num_answerable[split],
            "unanswerable": dict(sorted(reasons[split].items())),
        }
        for split in SPLITS
    }


def _unanswerable_reason(triplet: Triplet, item_ids: set[str]) -> str:
    if triplet.reference not in item_ids:
        return "missing_reference"
    if not triplet.target:
        return "no_target"
    return "" if triplet.target in item_ids else "missing_target"


def _read_json_list(path: Path, absent: list[str]) -> list[Any]:
    if not path.is_file():
        absent.append(f"{path.parent.name}/{path.name}")
        return []
    data = read_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path} should hold a JSON list.")
    return data


def _find_image(names: set[str], asin: str) -> str | None:
    return next((f"{asin}{ext}" for ext in IMAGE_EXTENSIONS if f"{asin}{ext}" in names), None)


def _read_items(
    root: Path, skipped: SkipLog, absent: list[str], progress: Progress, max_pixels: int
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
        name, item_id = _find_image(names, asin), f"{category}-{asin}"
        if name is None:  # most Fashion-IQ images are dead links: not worth a stat each
            skipped.add(item_id, "missing", f"{folder}/{asin}.png")
        elif (image := source_image(root, f"images/{name}", item_id, skipped, max_pixels=max_pixels)) is not None:
            dest = f"{IMAGE_DIR}/{name}"
            files[dest] = image
            attributes = {"asin": asin}
            items.append(Item(item_id, dest, split, "", category=category, attributes=attributes))
    return items, files


def _read_triplets(
    root: Path, skipped: SkipLog, absent: list[str], progress: Progress
) -> tuple[list[Triplet], dict[str, Counter[str]], int]:
    """Every triplet of the caption files, the entries dropped per split by reason, and their count."""
    triplets, dropped, num_entries = [], {split: Counter[str]() for split in FIQ_SPLITS}, 0
    for category in CATEGORIES:
        for split in FIQ_SPLITS:
            path = root / "captions" / f"cap.{category}.{split}.json"
            entries = _read_json_list(path, absent)
            progress.start(f"read {path.name}", len(entries))
            for index, entry in enumerate(entries):
                triplet_id = f"{category}-{split}-{index:05d}"
                triplet = _triplet(triplet_id, entry, category, split)
                if isinstance(triplet, str):
                    skipped.add(triplet_id, triplet, path, "triplet")
                    dropped[split][triplet] += 1
                else:
                    triplets.append(triplet)
            progress.advance(f"read {path.name}", len(entries))
            num_entries += len(entries)
    return triplets, dropped, num_entries


def _triplet(triplet_id: str, entry: Any, category: str, split: str) -> Triplet | str:
    """The triplet of one caption-file entry, or why it makes none."""
    if not isinstance(entry, dict) or "candidate" not in entry:
        return "malformed_entry"
    captions = [str(c) for c in entry.get("captions") or []]
    if not query_text(captions):
        return "empty_caption"
    reference = f"{category}-{entry['candidate']}"
    target = f"{category}-{entry['target']}" if entry.get("target") else ""
    texts = tuple(c.strip() for c in captions)
    return Triplet(triplet_id, split, reference, target, query_text(captions), texts, category)
