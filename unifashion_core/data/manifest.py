"""The one on-disk dataset format every adapter writes and every command reads.

A prepared dataset is a directory::

    manifest.jsonl   one Item per line (image paths relative to the directory)
    triplets.jsonl   composed-retrieval triplets (may be empty)
    report.json      counts per split, every skipped item with its reason, hashes
    images/...       the images (adapters may also point into a copied/linked tree)
"""

import collections
import functools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin

from unifashion_core import __version__
from unifashion_core.errors import UserError
from unifashion_core.fileio import atomic_dir, read_json, read_jsonl, sha256_files, write_json, write_jsonl

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Item:
    """One catalogue item: an image and its texts.

    Attributes:
        id: unique within the dataset.
        image: path relative to the dataset directory.
        split: ``train``, ``val`` or ``test``.
        caption: the short text used for retrieval and short-style captioning.
        description: a longer professional description ("" when the dataset has none).
        category: garment category (used by same-category negatives and per-category CIR).
        references: extra reference captions for caption evaluation (besides ``caption``).
        attributes: dataset-specific structured attributes (colour, pattern, ...).
        extras: other relative paths (``person``, ``mask``, ``sketch``) for try-on data.
    """

    id: str
    image: str
    split: str
    caption: str
    description: str = ""
    category: str = ""
    references: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)

    def all_captions(self) -> list[str]:
        """The caption followed by the extra references (the reference set for caption bench)."""
        return [self.caption, *self.references]

    def text(self, field: str = "caption") -> str:
        """The item's text in ``field`` (``caption`` or ``description``), falling back to the caption."""
        return getattr(self, field) or self.caption

    def caption_target(self, style: str) -> str:
        """The reference text a captioner learns in ``style``: the caption for ``short``, else the
        description (or the caption when there is none)."""
        return self.caption if style == "short" else self.description or self.caption


@dataclass(frozen=True)
class Triplet:
    """A composed-retrieval query: reference image + modification text -> target image.

    ``texts`` keeps the raw modification sentences (Fashion-IQ has two); ``text`` is the
    evaluation form. ``target`` is "" when the split has no ground truth (Fashion-IQ test).
    """

    id: str
    split: str
    reference: str
    target: str
    text: str
    texts: tuple[str, ...] = ()
    category: str = ""


@dataclass(frozen=True)
class Skipped:
    """An item or triplet that did not make it into the manifest, and why."""

    id: str
    reason: str
    path: str = ""
    kind: str = "item"


class SkipLog:
    """Collects skipped entries so that nothing is dropped silently."""

    def __init__(self) -> None:
        self.entries: list[Skipped] = []

    def add(self, id: str, reason: str, path: str = "", kind: str = "item") -> None:
        self.entries.append(Skipped(str(id), reason, str(path), kind))

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(f"{e.kind}:{e.reason}" for e in self.entries))


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset loaded from disk."""

    root: Path
    items: tuple[Item, ...]
    triplets: tuple[Triplet, ...]
    report: dict[str, Any]

    def split(self, name: str) -> list[Item]:
        check_split(name)
        return [item for item in self.items if item.split == name]

    def split_triplets(self, name: str) -> list[Triplet]:
        check_split(name)
        return [t for t in self.triplets if t.split == name]

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}

    def image_path(self, item: Item, key: str = "image") -> Path:
        relative = item.image if key == "image" else item.extras[key]
        return self.root / relative

    @functools.cached_property
    def manifest_hash(self) -> str:
        """SHA-256 of manifest.jsonl and triplets.jsonl as they are on disk (computed once), not the
        value report.json recorded at prepare time: an edited manifest gets a new hash."""
        return manifest_hash(self.root)


def check_split(name: str) -> None:
    if name not in SPLITS:
        raise UserError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}.")


def manifest_hash(root: str | Path) -> str:
    """SHA-256 over manifest.jsonl and triplets.jsonl: the data identity recorded in reports."""
    root = Path(root)
    return sha256_files([root / "manifest.jsonl", root / "triplets.jsonl"])


def _item_record(item: Item) -> dict[str, Any]:
    record = asdict(item)
    record["references"] = list(item.references)
    return record


def _triplet_record(triplet: Triplet) -> dict[str, Any]:
    record = asdict(triplet)
    record["texts"] = list(triplet.texts)
    return record


def write_dataset(
    out: str | Path,
    items: list[Item],
    triplets: list[Triplet],
    skipped: SkipLog,
    info: dict[str, Any],
    write_files: Any = None,
) -> dict[str, Any]:
    """Write a prepared dataset atomically and return its report.

    Args:
        out: destination directory (replaced as a whole when the write succeeds).
        items, triplets: the records; ids must be unique.
        skipped: everything left out, with reasons.
        info: dataset-specific fields for the report (``dataset``, ``seed``, ``source``...).
        write_files: optional ``fn(tmp_dir)`` that writes images into the temporary directory
            before the manifest (so a crash never leaves a manifest without its images).
    """
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids are not unique")
    with atomic_dir(out) as tmp:
        if write_files is not None:
            write_files(tmp)
        write_jsonl(tmp / "manifest.jsonl", [_item_record(i) for i in items])
        write_jsonl(tmp / "triplets.jsonl", [_triplet_record(t) for t in triplets])
        report = {
            **info,
            "format_version": FORMAT_VERSION,
            "unifashion_version": __version__,
            "num_items": {s: sum(i.split == s for i in items) for s in SPLITS},
            "num_triplets": {s: sum(t.split == s for t in triplets) for s in SPLITS},
            "num_skipped": len(skipped.entries),
            "skipped_counts": skipped.counts(),
            "skipped": [asdict(e) for e in skipped.entries],
            "manifest_sha256": manifest_hash(tmp),
        }
        write_json(tmp / "report.json", report)
    return report


def load_dataset(path: str | Path) -> Dataset:
    """Load a prepared dataset directory (or the path of its manifest.jsonl)."""
    root = Path(path)
    if root.name == "manifest.jsonl":
        root = root.parent
    if not (root / "manifest.jsonl").is_file():
        raise UserError(
            f"{root} is not a prepared dataset (no manifest.jsonl); run `unifashion prepare` first."
        )
    report = read_json(root / "report.json") if (root / "report.json").is_file() else {}
    if not isinstance(report, dict):
        raise UserError(f"{root / 'report.json'} is not a prepared dataset's report; re-run `unifashion prepare`.")
    if report.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise UserError(f"{root} was written by a newer unifashion; upgrade to read it.")
    items = _parse_records(root / "manifest.jsonl", Item, "references")
    if len({item.id for item in items}) != len(items):
        repeated = collections.Counter(item.id for item in items).most_common(1)[0][0]
        raise UserError(f"{root / 'manifest.jsonl'} lists the id {repeated!r} more than once; "
                        "re-run `unifashion prepare`.")
    triplet_path = root / "triplets.jsonl"
    triplets = _parse_records(triplet_path, Triplet, "texts") if triplet_path.is_file() else ()
    return Dataset(root=root, items=items, triplets=triplets, report=report)


def _parse_records(path: Path, kind: type, tuple_field: str) -> tuple[Any, ...]:
    """The records of a JSON Lines file as ``kind`` (Item or Triplet), each one checked: the fields
    the type has, of the types it declares, and a known split."""
    records = []
    for number, record in enumerate(read_jsonl(path), start=1):
        record = {**record, tuple_field: tuple(record.get(tuple_field) or ())}
        try:
            parsed = kind(**record)
        except TypeError as exc:
            raise UserError(f"{path}: record {number} does not fit ({exc}); re-run `unifashion prepare`.") from None
        bad = [f.name for f in fields(kind) if not isinstance(getattr(parsed, f.name), get_origin(f.type) or f.type)]
        if bad or parsed.split not in SPLITS or not parsed.id:
            what = f"{bad[0]} has the wrong type" if bad else f"split {parsed.split!r}" if parsed.id else "no id"
            raise UserError(f"{path}: record {number} is not valid ({what}); re-run `unifashion prepare`.")
        records.append(parsed)
    return tuple(records)
