"""What an index knows about each item besides its vectors: id, text, image path and fields.

An index directory holds, in the row order of its vectors::

    items.jsonl        one ItemRecord per line ({"id", "caption", "image", "fields"}), any order
    item_offsets.npy   (N, 2) int64 byte range of each row's line in items.jsonl
    fields.json        {"names": [F field names], "values": {name: [sorted distinct values]}}
    field_codes.npy    (F, N) int32 code of each row's value in its field's values (-1: no value)

``item_at(row)`` reads one line (no manifest, no full load); a filter ``{field: value(s)}``
becomes a boolean row mask from the memory-mapped codes, which the searches apply inside the
ranking so that a filtered top-k is the top-k of the allowed items.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unifashion_core.data.manifest import Item
from unifashion_core.errors import UserError
from unifashion_core.fileio import read_json, write_json

ITEMS = "items.jsonl"
ITEM_OFFSETS = "item_offsets.npy"
FIELDS = "fields.json"
FIELD_CODES = "field_codes.npy"
PAYLOAD_FILES = (ITEMS, ITEM_OFFSETS, FIELDS, FIELD_CODES)

Filter = Mapping[str, str | list[str]]


@dataclass(frozen=True)
class ItemRecord:
    """One indexed item as a search result shows it.

    Attributes:
        id: the item id (unique in the index).
        caption: the item's caption in the manifest.
        image: the image path relative to the dataset directory (``meta["data"]``).
        fields: filterable manifest fields: ``category``, ``split`` and every attribute, as strings.
    """

    id: str
    caption: str = ""
    image: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, item: Item) -> "ItemRecord":
        """The record of a manifest ``Item``.

        Attributes become fields as strings (numbers and booleans as JSON writes them); empty
        and None values are left out. ``category`` and ``split`` win over attributes of the same name.
        """
        values = {**item.attributes, "category": item.category, "split": item.split}
        fields = {name: field_value(value) for name, value in values.items() if value not in (None, "")}
        return cls(item.id, item.caption, item.image, fields)

    def to_json(self) -> str:
        """One line of ``items.jsonl``."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> "ItemRecord":
        """The record :meth:`to_json` wrote."""
        data = json.loads(line)
        return cls(data["id"], data["caption"], data["image"], data["fields"])


def field_value(value: Any) -> str:
    """A manifest value as the string a filter compares with."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


class PayloadWriter:
    """Writes the payload files of ``num_items`` rows into the (temporary) index directory ``out``.

    Call :meth:`add` with each row's record once, in any order, then :meth:`close`.
    """

    def __init__(self, out: Path, num_items: int) -> None:
        self.out = out
        self.offsets = np.full((num_items, 2), -1, dtype=np.int64)  # (N, 2)
        self._codes: dict[str, np.ndarray] = {}  # field -> (N,) codes in first-seen order
        self._vocab: dict[str, dict[str, int]] = {}
        self._handle = open(out / ITEMS, "wb")  # noqa: SIM115 - closed by close()

    def add(self, row: int, record: ItemRecord) -> None:
        """Write one row's record."""
        data = (record.to_json() + "\n").encode("utf-8")
        start = self._handle.tell()
        self._handle.write(data)
        self.offsets[row] = (start, start + len(data))
        for name, value in record.fields.items():
            seen = self._vocab.setdefault(name, {})
            column = self._codes.setdefault(name, np.full(len(self.offsets), -1, dtype=np.int32))
            column[row] = seen.setdefault(value, len(seen))

    def close(self) -> None:
        """Write the offsets, the sorted vocabularies and the codes.

        Raises:
            ValueError: a row got no record.
        """
        self._handle.close()
        if (self.offsets[:, 0] < 0).any():
            raise ValueError("every row needs an item record.")
        names = sorted(self._vocab)
        values = {name: sorted(self._vocab[name]) for name in names}
        codes = np.full((len(names), len(self.offsets)), -1, dtype=np.int32)  # (F, N)
        for position, name in enumerate(names):
            sorted_code = {value: code for code, value in enumerate(values[name])}
            remap = np.empty(len(sorted_code), dtype=np.int32)  # first-seen code -> sorted code
            remap[list(self._vocab[name].values())] = [sorted_code[v] for v in self._vocab[name]]
            present = self._codes[name] >= 0
            codes[position, present] = remap[self._codes[name][present]]
        np.save(self.out / ITEM_OFFSETS, self.offsets)
        np.save(self.out / FIELD_CODES, codes)
        write_json(self.out / FIELDS, {"names": names, "values": values})


class ItemStore:
    """Read access to the payload of an index directory (memory-mapped, loaded lazily).

    Args:
        path: the index directory.

    Raises:
        UserError: a payload file is missing.
    """

    def __init__(self, path: Path) -> None:
        for name in PAYLOAD_FILES:
            if not (path / name).is_file():
                raise UserError(f"index {path} is incomplete ({name} is missing); rebuild it with "
                                "`unifashion index`.")
        self.path = path
        # plain arrays over the maps: a memmap's own indexing costs a search's ten look-ups ~0.1 ms
        self.offsets = np.asarray(np.load(path / ITEM_OFFSETS, mmap_mode="r"))  # (N, 2)
        self.codes = np.load(path / FIELD_CODES, mmap_mode="r")  # (F, N)
        described = read_json(path / FIELDS)
        self.names: list[str] = described["names"]
        self._values: dict[str, list[str]] = described["values"]
        self._lookup: dict[str, dict[str, int]] = {}
        self._items = np.asarray(np.memmap(path / ITEMS, dtype=np.uint8, mode="r"))  # the lines' bytes

    def record(self, row: int) -> ItemRecord:
        """The record of one row (one line read; safe from several threads)."""
        start, end = self.offsets[row].tolist()
        return ItemRecord.from_json(self._items[start:end].tobytes())

    def values(self, name: str) -> list[str]:
        """The distinct values of a field, sorted."""
        self._check_field(name)
        return list(self._values[name])

    def allowed_rows(self, filter: Filter) -> np.ndarray:
        """Boolean ``(N,)`` mask of the rows whose fields match every ``field: value(s)`` of ``filter``.

        A row matches a field when its value is one of the allowed values; a value no item has
        matches nothing. An empty filter allows every row.

        Raises:
            UserError: a field no item has, or a value that is not a string or a list of strings.
        """
        mask = np.ones(self.codes.shape[1], dtype=bool)
        for name, wanted in filter.items():
            self._check_field(name)
            allowed = [wanted] if isinstance(wanted, str) else wanted
            if not isinstance(allowed, list | tuple) or not all(isinstance(v, str) for v in allowed):
                raise UserError(f"filter {name!r} must be a string or a list of strings, got {wanted!r}.")
            lookup = self._lookup.setdefault(name, {v: c for c, v in enumerate(self._values[name])})
            codes = [lookup[v] for v in allowed if v in lookup]
            mask &= np.isin(self.codes[self.names.index(name)], codes)
        return mask

    def _check_field(self, name: str) -> None:
        if name not in self._values:
            known = ", ".join(self.names) or "none"
            raise UserError(f"cannot filter on {name!r}: no indexed item has that field (fields: {known}).")
