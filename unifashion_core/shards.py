"""Arrays too large for memory, kept on disk as shards and read a few rows at a time.

A shard is ``NAME.npy`` (rows of one shape and dtype) and ``NAME.json`` (what the rows are, plus
the array's shape, dtype and byte size). Both are written through a temporary name, flushed and
renamed, the JSON last, so a shard whose JSON exists was complete when it was written; a file
cut short afterwards (a copy that stopped, a disk that lost its tail) is recognised by its size.
Rows are read with positioned reads, not a memory map, so reading a batch adds only that batch
to the process's resident memory, however large the array.

A shard may also live in memory (``Shard.in_memory``) when nothing is to be kept on disk; it is
read the same way.
"""

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.fileio import fsync_dir, is_running, write_json

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """Rows ``(num_rows, *row_shape)`` of one dtype, on disk at ``path`` or in ``array``.

    Attributes:
        num_rows: number of rows.
        row_shape: shape of one row.
        dtype: numpy dtype name (``float16``, ``float32``).
        path: the ``.npy`` file (None in memory).
        offset: where the rows start in the file (after the ``.npy`` header).
        array: the rows themselves when the shard is in memory.
    """

    num_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    path: Path | None = None
    offset: int = 0
    array: np.ndarray | None = None

    @classmethod
    def in_memory(cls, array: np.ndarray) -> "Shard":
        return cls(len(array), tuple(array.shape[1:]), str(array.dtype), array=array)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows at positions ``rows`` (any order, repeats allowed): ``(len(rows), *row_shape)``."""
        if self.array is not None:
            return self.array[rows]
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as handle:
            for i, row in enumerate(rows.tolist()):
                handle.seek(self.offset + row * self.row_bytes)
                if handle.readinto(memoryview(out[i]).cast("B")) != self.row_bytes:
                    raise OSError(f"{self.path} ended before row {row}; it was cut short after it was written.")
        return out


class Rows:
    """Rows of an array kept in shards, row ``i`` at ``locations[i]`` = (shard number, row in it).

    Indexing with an int gives one row; with a slice, a list of positions or an index tensor, a
    ``(B, ...)`` CPU tensor of the shards' dtype, read from disk just then.
    """

    def __init__(self, shards: list[Shard], locations: np.ndarray) -> None:
        self.shards = shards
        self.locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)  # (N, 2)

    @classmethod
    def sequential(cls, shards: list[Shard]) -> "Rows":
        """All rows of ``shards`` one after the other."""
        locations = [(number, row) for number, shard in enumerate(shards) for row in range(shard.num_rows)]
        return cls(shards, np.array(locations, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int | slice | list[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        picked = self.locations[index if isinstance(index, slice) else np.asarray(index, dtype=np.int64)]  # (B, 2)
        if not self.shards:
            return torch.empty(0)
        out = np.empty((len(picked), *self.shards[0].row_shape), dtype=self.shards[0].dtype)
        for number in np.unique(picked[:, 0]):
            here = picked[:, 0] == number
            out[here] = self.shards[number].read(picked[here, 1])
        return torch.from_numpy(out)

    def select(self, positions: list[int] | np.ndarray | torch.Tensor) -> "Rows":
        """The rows at ``positions``, still where they are."""
        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        return Rows(self.shards, self.locations[np.asarray(positions, dtype=np.int64)])

    def load(self) -> torch.Tensor:
        """Every row in memory (an empty tensor when there are none)."""
        return self[:] if len(self) else torch.empty(0)

    def pieces(self) -> Iterator[torch.Tensor]:
        """The rows in memory one shard's worth at a time, in order (for statistics over all rows)."""
        start = 0
        for shard in self.shards:
            yield self[start : start + shard.num_rows]
            start += shard.num_rows


def write_shard(folder: Path, name: str, array: np.ndarray, record: dict[str, Any]) -> None:
    """Write ``folder/name.npy`` and then ``folder/name.json`` (``record`` plus shape, dtype and
    byte size), each flushed to disk and renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.npy"
    tmp = folder / f".{name}.npy.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    write_json(folder / f"{name}.json", {**record, "format_version": FORMAT_VERSION, "shape": list(array.shape),
                                         "dtype": str(array.dtype), "bytes": target.stat().st_size})


def open_shard(folder: Path, name: str) -> tuple[Shard | None, dict[str, Any], str]:
    """Open a shard written by :func:`write_shard`.

    Returns:
        ``(shard, record, problem)``: the shard and its JSON record, or ``(None, record, problem)``
        with ``problem`` saying in a few words why it cannot be used (cut short, unreadable).
    """
    try:
        record = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, {}, f"its record cannot be read ({exc})"
    path = folder / f"{name}.npy"
    size = path.stat().st_size if path.is_file() else 0
    if record.get("format_version") != FORMAT_VERSION or size != record.get("bytes"):
        return None, record, f"it was cut short ({size:,} of {record.get('bytes', 0):,} bytes)"
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(handle)
            offset = handle.tell()
    except (OSError, ValueError) as exc:
        return None, record, f"its array header cannot be read ({exc})"
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if fortran or list(shape) != record.get("shape") or offset + shape[0] * row_bytes != size:
        return None, record, "its array does not match its record"
    return Shard(shape[0], tuple(shape[1:]), str(dtype), path, offset), record, ""


def remove_shard(folder: Path, name: str) -> None:
    """Delete a shard's two files (the record first, so a half-deleted shard is never used)."""
    (folder / f"{name}.json").unlink(missing_ok=True)
    (folder / f"{name}.npy").unlink(missing_ok=True)


_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files that writers killed in the middle left in ``folder``."""
    for path in folder.iterdir():
        found = _TEMPORARY.match(path.name)
        if found and path.is_file() and not is_running(int(found[1])):
            path.unlink(missing_ok=True)
