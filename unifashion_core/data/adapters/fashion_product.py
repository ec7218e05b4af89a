"""Kaggle Fashion Product Images (Myntra catalogue): ``styles.csv`` + ``images/{id}.jpg``.

Caption = ``productDisplayName``; description composed from the attributes ("Men's blue shirt,
topwear for formal use, summer season."); category = ``articleType``. The dataset has no official
split, so the catalogue's ids are split at random with a seed (70/10/20 train/val/test by
default; the test ids are the same whatever ``val_fraction`` is).

The full Kaggle ``styles.csv`` has rows whose product name contains unquoted commas; as the name
is the last column, the extra fields are joined back into it. Rows with too few fields or no id
are skipped with the reason ``malformed_row`` or ``missing_id``.
"""

import csv
from pathlib import Path
from typing import Any

from unifashion_core.data.adapters.catalogue_triplets import catalogue_triplets, singular_noun
from unifashion_core.data.adapters.common import (
    IMAGE_DIR,
    assign_splits,
    clean_text,
    copy_files,
    report_info,
    source_image,
)
from unifashion_core.data.images import MAX_PIXELS
from unifashion_core.data.manifest import Item, SkipLog, Triplet, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import open_text
from unifashion_core.progress import NullProgress, Progress

CSV_NAMES = ("styles.csv", "sample_styles.csv")
COLUMNS = (
    "id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
    "usage", "productDisplayName",
)  # fmt: skip
_POSSESSIVE = {"men": "Men's", "women": "Women's", "boys": "Boys'", "girls": "Girls'"}

def prepare_fashion_product(
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_pixels: int = MAX_PIXELS,
    triplets: bool = False,
) -> dict[str, Any]:
    """Prepare Fashion Product Images with a seeded split by item.

    Args:
        root: directory holding ``styles.csv`` (or ``sample_styles.csv``) and ``images/``.
        out: the prepared dataset directory.
        seed: seed of the split.
        progress: receives progress events.
        val_fraction: share of the catalogue's ids put in ``val``.
        test_fraction: share of the catalogue's ids put in ``test``.
        max_pixels: images with more pixels are skipped (reason ``too_large``).
        triplets: also derive composed-retrieval triplets from the attributes (see
            ``catalogue_triplets``); the report gets their counts under ``catalogue_triplets``.

    Returns:
        The report of ``write_dataset``.
    """
    csv_path = next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
    if csv_path is None:
        raise UserError(f"{root} has no styles.csv; point --root at the Fashion Product Images.")
    skipped = SkipLog()
    rows = read_styles(csv_path, skipped)
    # Split the catalogue's ids, not the usable items: an unreadable image elsewhere never moves
    # an item to another split.
    splits = assign_splits((row["id"] for row in rows), seed, val_fraction, test_fraction)
    items, files = _usable_items(root, rows, splits, skipped, progress, max_pixels)
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    info = report_info(
        "fashion-product", root, seed, csv=csv_path.name, num_rows=len(rows), **fractions
    )
    derived: list[Triplet] = []
    if triplets:
        derived, info["catalogue_triplets"] = catalogue_triplets(items, seed)
    return write_dataset(out, items, derived, skipped, info, copy_files(files, progress))


def _usable_items(
    root: Path,
    rows: list[dict[str, str]],
    splits: dict[str, str],
    skipped: SkipLog,
    progress: Progress,
    max_pixels: int,
) -> tuple[list[Item], dict[str, Path]]:
    """The items whose caption is there and whose image decodes, and their files to copy."""
    progress.start("check images", len(rows))
    items, files = [], {}
    for row in rows:
        progress.advance("check images")
        name = f"images/{row['id']}.jpg"
        if not row["productDisplayName"]:
            skipped.add(row["id"], "empty_caption", root / name)
        elif (image := source_image(root, name, row["id"], skipped, max_pixels=max_pixels)) is not None:
            dest = f"{IMAGE_DIR}/{row['id']}.jpg"
            files[dest] = image
            items.append(_item(row, dest, splits[row["id"]]))
    return items, files


def read_styles(path: Path, skipped: SkipLog) -> list[dict[str, str]]:
    """Read the styles CSV into one dict per usable row (bad rows go to ``skipped``).

    Raises:
        UserError: a header without the expected columns.
    """
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[: len(COLUMNS)] != list(COLUMNS):
            raise UserError(f"{path} does not start with the columns {','.join(COLUMNS)}.")
        rows, seen = [], set()
        for line_number, fields in enumerate(reader, start=2):
            if not any(f.strip() for f in fields):
                continue  # a blank line is not a record
            row = _parse_row(fields)
            where = f"{path.name}:{line_number}"
            if row is None:
                skipped.add(where, "malformed_row", path, "row")
            elif not row["id"]:
                skipped.add(where, "missing_id", path, "row")
            elif row["id"] in seen:
                skipped.add(row["id"], "duplicate_id", path, "row")
            else:
                seen.add(row["id"])
                rows.append(row)
    return rows


def _parse_row(fields: list[str]) -> dict[str, str] | None:
    if len(fields) < len(COLUMNS):
        return None
    # Unquoted commas in the product name (the last column) make extra fields: join them back.
    fields = [*fields[: len(COLUMNS) - 1], ",".join(fields[len(COLUMNS) - 1 :])]
    return {name: clean_text(value) for name, value in zip(COLUMNS, fields, strict=True)}


def _item(row: dict[str, str], image: str, split: str) -> Item:
    attributes = {k: v for k, v in row.items() if k not in ("id", "productDisplayName") and v}
    if attributes.get("year", "").endswith(".0"):
        attributes["year"] = attributes["year"][:-2]  # pandas wrote the years as floats
    return Item(
        id=row["id"],
        image=image,
        split=split,
        caption=row["productDisplayName"],
        description=describe(row),
        category=row["articleType"],
        attributes=attributes,
    )


def describe(row: dict[str, str]) -> str:
    """A one-sentence description from the attributes ("Men's blue shirt, topwear for ...")."""
    gender = row.get("gender", "")
    head = " ".join(
        part
        for part in (
            _POSSESSIVE.get(gender.lower(), gender),
            row.get("baseColour", "").lower(),
            singular_noun(row.get("articleType", "")),
        )
        if part
    )
    use = row.get("subCategory", "").lower()
    if row.get("usage"):
        use = f"{use} for {row['usage'].lower()} use".strip()
    season = f"{row['season'].lower()} season" if row.get("season") else ""
    sentence = ", ".join(part for part in (head, use, season) if part)
    return f"{sentence[:1].upper()}{sentence[1:]}." if sentence else ""
