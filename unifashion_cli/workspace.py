"""The default workspace: remembers the latest prepared data, checkpoints and index.

It lives in ``$UNIFASHION_HOME`` or ``./unifashion-work`` and holds ``state.json``, so that
``unifashion search --text "red shirt"`` works after ``unifashion demo`` with no paths. Only the
CLI reads and writes it: core functions take explicit paths and return where they wrote.
"""

import os
from pathlib import Path

from unifashion_core.errors import UserError
from unifashion_core.fileio import read_json, write_json

KINDS = ("data", "checkpoint", "phase1", "index", "captioned_index")

_HINTS = {
    "data": "run `unifashion prepare demo --out DIR` (or pass --data)",
    "checkpoint": "run `unifashion train demo --phase 1` (or pass --checkpoint)",
    "phase1": "run `unifashion train RECIPE --phase 1` first, or pass --checkpoint or set train.init_checkpoint",
    "index": "run `unifashion index` (or pass --index)",
    "captioned_index": "run `unifashion index --captions` (or pass --index)",
}


def workspace_dir() -> Path:
    """The workspace directory (not created until something is remembered)."""
    return Path(os.environ.get("UNIFASHION_HOME", "unifashion-work")).absolute()


def _state_path() -> Path:
    return workspace_dir() / "state.json"


def remember(kind: str, path: str | Path) -> None:
    """Record ``path`` as the latest artifact of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown workspace kind {kind!r}")
    state = read_json(_state_path()) if _state_path().is_file() else {}
    state[kind] = str(Path(path).absolute())
    write_json(_state_path(), state)


def latest(kind: str) -> Path | None:
    """The latest remembered artifact of ``kind`` that still exists, or None."""
    if not _state_path().is_file():
        return None
    value = read_json(_state_path()).get(kind)
    return Path(value) if value and Path(value).exists() else None


def resolve(kind: str, given: str | Path | None) -> Path:
    """The path the user gave, or the latest remembered one; a clear error when there is none."""
    if given:
        path = Path(given)
        if not path.exists():
            raise UserError(f"{path} does not exist.")
        return path
    path = latest(kind)
    if path is None:
        raise UserError(
            f"no {kind.replace('_', ' ')} given and none in the workspace {workspace_dir()}: {_HINTS[kind]}."
        )
    return path


def default_output(name: str) -> Path:
    """A fresh default output location inside the workspace, e.g. ``runs/demo``."""
    return workspace_dir() / name


def cache_dir() -> Path:
    """Where the workspace keeps caches (frozen vision features)."""
    return workspace_dir() / "cache"
