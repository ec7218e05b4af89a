"""Atomic writes, hashing and small JSON helpers shared by every artifact writer."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unifashion_core.errors import UserError


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One hex SHA-256 over several files (names excluded, order kept); missing files skipped."""
    digest = hashlib.sha256()
    for path in paths:
        if Path(path).exists():
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output directory that exists and is not empty, unless ``overwrite``.

    Also checks that its parent can be created and written, so a run fails before doing work.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; choose a directory path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it.")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {parent}: {exc.strerror}.") from exc
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: permission denied.")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out`` only if the block succeeds.

    A crash leaves ``out`` as it was (the temporary directory is removed).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` with two renames (old kept until then)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file through a temporary name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a missing or malformed file into a UserError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path} does not exist.") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}.") from exc


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write JSON Lines (one sorted-key object per line) atomically."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON Lines; a malformed line is a UserError naming the line."""
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}:{number} is not valid JSON: {exc.msg}.") from exc
    except FileNotFoundError as exc:
        raise UserError(f"{path} does not exist.") from exc
    return records
