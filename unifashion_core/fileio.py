"""Atomic writes, hashing and small JSON helpers shared by every artifact writer."""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from unifashion_core.errors import UserError

FSYNC_THREADS = 16  # files flushed at once by fsync_tree


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

    An error leaves ``out`` as it was (the temporary directory is removed); so does a kill or a
    power loss, since the new tree is on disk before the rename. What a killed run leaves (a
    ``.{name}.tmp-{pid}-*`` or ``.{name}.old-{pid}`` sibling) is removed by the next run once
    that process is gone.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` with two renames (old kept until then).

    Every file and folder of ``src`` is flushed to disk first and the parent folder after the
    renames, so a power loss cannot leave ``dst`` with renamed but empty files. Between the two
    renames ``dst`` is briefly absent (never half written).
    """
    fsync_tree(src)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root``, then its folders (deepest first) and ``root``, to disk.

    The files are flushed by a few threads at once: the disk batches them, one by one would take
    milliseconds each.
    """
    walked = list(os.walk(root, topdown=False))
    files = [path for folder, _, names in walked for name in names if not (path := Path(folder) / name).is_symlink()]
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
        list(pool.map(lambda path: _fsync(path, os.O_RDONLY), files))
    for folder, _, _ in walked:
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _stale_siblings(out: Path, kinds: str = "tmp|old") -> list[Path]:
    """The ``.{name}.tmp-{pid}-*`` / ``.{name}.old-{pid}-*`` folders of ``out`` whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:{kinds})-(\d+)-")
    return sorted(sibling for sibling in out.parent.iterdir()
                  if (found := pattern.match(sibling.name)) and sibling.is_dir() and not sibling.is_symlink()
                  and not is_running(int(found[1])))


def remove_stale_siblings(out: Path) -> None:
    """Put back ``out`` if a run was killed mid-swap (``restore_interrupted``), then remove the
    temporaries and set-aside old trees of ``out`` left by runs that were killed (their process is gone)."""
    restore_interrupted(out)
    for sibling in _stale_siblings(out):
        shutil.rmtree(sibling, ignore_errors=True)


def restore_interrupted(out: str | Path) -> None:
    """Put ``out`` back when a run was killed between the two renames of ``replace_dir``.

    Such a run left no ``out``, only the previous tree as ``.{name}.old-{pid}-*``: that tree is
    complete, so it is renamed back (readers then see the last finished version).
    """
    out = Path(out)
    if out.exists() or not out.parent.is_dir():
        return
    for old in _stale_siblings(out, "old")[:1]:
        os.replace(old, out)
        fsync_dir(out.parent)


def is_running(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; then flush it to disk and rename it to ``path``.

    The parent folder is flushed after the rename, so after a crash ``path`` holds either the old
    or the new contents, never an empty or half file. An error (or a kill) in the block leaves
    ``path`` as it was. The temporary name keeps the suffix, for writers that infer the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (``atomic_file``): the old text or the new, never half."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically (``atomic_file``): the old bytes or the new, never half."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def refuse_corrupt(path: str | Path, remedy: str, errors: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn what a reader raises on a damaged artifact into one UserError naming the file.

    Use it around the lines that decode ``path`` (a truncated safetensors file, an ``.npy`` cut
    short, a FAISS file of garbage), not around whole computations: a bug elsewhere keeps its
    traceback.

    Args:
        path: the file (or directory) being read.
        remedy: what to do, e.g. "delete it; the next run recomputes it".
        errors: the reader's own exception types, besides OSError, ValueError, EOFError and
            RuntimeError (what numpy, FAISS and torch raise).
    """
    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, *errors) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path} is damaged or cut short and was not loaded ({reason}); {remedy}.") from exc


def write_json(path: str | Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def not_utf8(path: str | Path) -> UserError:
    """The error for a text file in another encoding than UTF-8, naming its first bad line."""
    raw = Path(path).read_bytes()
    try:
        raw.decode("utf-8")
        where = ""
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        where = f" (line {line}, byte 0x{raw[exc.start]:02x})"
    return UserError(f"{path} is not UTF-8 text{where}; save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).")


@contextlib.contextmanager
def open_text(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """Open a UTF-8 text file to read (a leading BOM is dropped, as Excel writes one).

    A missing file, or bytes that are not UTF-8 met while the block reads, are a UserError
    naming the file (and the first bad line).
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline=newline)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    with handle:
        try:
            yield handle
        except UnicodeDecodeError:
            raise not_utf8(path) from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (see ``open_text``)."""
    with open_text(path) as handle:
        return handle.read()


def read_json(path: str | Path) -> Any:
    """Read a JSON file (UTF-8); a missing, malformed or otherwise encoded file is a UserError."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}.") from exc


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write JSON Lines (one sorted-key object per line) atomically."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON Lines (UTF-8); a line that is not a JSON object is a UserError naming the line."""
    records = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number} is not valid JSON: {exc.msg}.") from exc
                if not isinstance(records[-1], dict):
                    raise UserError(f"{path}:{number} is not a JSON object ({{...}}).")
    return records
