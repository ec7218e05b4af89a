"""FashionGen: ``fashiongen_256_256_{train,validation}.h5`` (uint8 image arrays, bytes texts).

Choices made here:

- One item per HDF5 row. FashionGen photographs each product from several poses, so the id is
  ``"{productID}-{row}"`` (row within its file) and ``attributes["product_id"]`` ties the views
  together; should an id repeat (a product in both files at the same row) the second one is
  skipped with reason ``duplicate_id``.
- caption = ``input_name``, description = ``input_description`` (an empty description is kept as
  ""; an empty name is skipped with reason ``empty_caption``), category = ``input_category``.
- ``validation`` is the evaluation split and becomes ``test``; ``val_fraction`` carves a
  validation split out of train *by product*, so the views of one product stay together.
- The arrays are re-encoded as PNG under ``images/{split}/``. They are checked once per file
  (shape (N, H, W, 3), dtype uint8) since an array row always decodes.
- The product id names the image file: one that would write outside ``--out`` (``..`` or an
  absolute name) is skipped with reason ``outside_root``.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unifashion_core.data.adapters.common import (
    IMAGE_DIR,
    OUTSIDE_ROOT,
    assign_splits,
    clean_text,
    destination,
    relative_name,
    report_info,
)
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

FILES = {"train": "fashiongen_256_256_train.h5", "test": "fashiongen_256_256_validation.h5"}
TEXT_KEYS = (
    "input_name",
    "input_description",
    "input_category",
    "input_subcategory",
    "input_productID",
)
OPTIONAL_KEYS = ("input_gender", "input_pose", "input_brand", "input_season", "input_department")
CHUNK_ROWS = 256  # rows of images read from the HDF5 file at once


def prepare_fashiongen(
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    val_fraction: float = 0.0,
) -> dict[str, Any]:
    """Prepare FashionGen from its HDF5 files.

    Args:
        root: directory holding ``fashiongen_256_256_train.h5`` and/or ``..._validation.h5``.
        out: the prepared dataset directory.
        seed: seed of the optional validation carve-out.
        progress: receives progress events.
        val_fraction: share of the training *products* moved to ``val``.

    Returns:
        The report of ``write_dataset``.
    """
    h5py = _import_h5py()
    present = {split: root / name for split, name in FILES.items() if (root / name).is_file()}
    if not present:
        raise UserError(f"{root} has none of {', '.join(FILES.values())}; is it FashionGen?")
    skipped, items, rows = SkipLog(), [], {}
    seen: set[str] = set()
    for split, path in present.items():
        with _open(h5py, path) as handle:
            file_items = _read_rows(handle, path, split, seen, skipped, progress)
        rows[path] = [(int(item.attributes["source_row"]), item.image) for item in file_items]
        items += file_items
    train_products = [i.attributes["product_id"] for i in items if i.split == "train"]
    carve = assign_splits(train_products, seed, val_fraction, 0.0)
    items = [replace(i, split=carve.get(i.attributes["product_id"], i.split)) for i in items]
    num_empty = sum(not i.description for i in items)
    files = [p.name for p in present.values()]
    info = report_info(
        "fashiongen",
        root,
        seed,
        files=files,
        val_fraction=val_fraction,
        num_empty_descriptions=num_empty,
    )
    return write_dataset(out, items, [], skipped, info, _png_writer(h5py, rows, progress))


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise UserError("FashionGen is stored as HDF5: install h5py (`pip install h5py`).") from exc
    return h5py


def _open(h5py: Any, path: Path) -> Any:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc}).") from exc


def decode(value: Any) -> str:
    """One HDF5 text cell (bytes, numpy bytes, a 1-element array or a number) as clean text."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, bytes | np.bytes_):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            value = bytes(value).decode("latin-1")
    elif isinstance(value, np.generic):
        value = value.item()
    return clean_text(str(value))


def _check_layout(handle: Any, path: Path) -> int:
    missing = [key for key in ("input_image", *TEXT_KEYS) if key not in handle]
    if missing:
        raise UserError(f"{path} lacks the FashionGen keys {', '.join(missing)}.")
    images = handle["input_image"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        shape = f"{images.shape} {images.dtype}"
        raise UserError(f"{path}: input_image is {shape}, not (N, H, W, 3) uint8.")
    if any(len(handle[key]) != len(images) for key in TEXT_KEYS):
        raise UserError(f"{path}: the text keys and input_image have different row counts.")
    return len(images)


def _read_rows(
    handle: Any, path: Path, split: str, seen: set[str], skipped: SkipLog, progress: Progress
) -> list[Item]:
    num_rows = _check_layout(handle, path)
    columns = {key: handle[key][:] for key in (*TEXT_KEYS, *OPTIONAL_KEYS) if key in handle}
    progress.start(f"read {path.name}", num_rows)
    items = []
    for row in range(num_rows):
        texts = {key.removeprefix("input_"): decode(column[row]) for key, column in columns.items()}
        item_id = f"{texts['productID']}-{row}"
        if not texts["name"]:
            skipped.add(item_id, "empty_caption", f"{path}#{row}")
        elif relative_name(f"{item_id}.png") is None:
            skipped.add(item_id, OUTSIDE_ROOT, f"{path}#{row}")
        elif item_id in seen:
            skipped.add(item_id, "duplicate_id", f"{path}#{row}")
        else:
            seen.add(item_id)
            items.append(_item(item_id, texts, split, row, path))
        progress.advance(f"read {path.name}")
    return items


def _item(item_id: str, texts: dict[str, str], split: str, row: int, path: Path) -> Item:
    optional = {key.removeprefix("input_") for key in OPTIONAL_KEYS}
    attributes = {k: v for k, v in texts.items() if k in optional and v}
    attributes["subcategory"] = texts["subcategory"]
    attributes["product_id"] = texts["productID"]
    attributes["source_row"] = row
    attributes["source_file"] = path.name
    return Item(
        id=item_id,
        image=f"{IMAGE_DIR}/{split}/{item_id}.png",
        split=split,
        caption=texts["name"],
        description=texts["description"],
        category=texts["category"],
        attributes=attributes,
    )


def _png_writer(
    h5py: Any, rows: dict[Path, list[tuple[int, str]]], progress: Progress
) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        progress.start("write images", sum(len(r) for r in rows.values()))
        for path, wanted in rows.items():
            with _open(h5py, path) as handle:
                _write_pngs(handle["input_image"], wanted, tmp, progress)

    return write


def _write_pngs(images: Any, wanted: list[tuple[int, str]], tmp: Path, progress: Progress) -> None:
    chunks = defaultdict(list)
    for row, dest in wanted:
        chunks[row // CHUNK_ROWS].append((row, dest))
    for index, chunk in sorted(chunks.items()):
        start = index * CHUNK_ROWS
        block = images[start : start + CHUNK_ROWS]  # (<=CHUNK_ROWS, H, W, 3) uint8
        for row, dest in chunk:
            target = destination(tmp, dest)
            Image.fromarray(block[row - start]).save(target, format="PNG", compress_level=3)
            progress.advance("write images")
