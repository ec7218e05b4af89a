"""Atomic writes reach the disk before they are renamed into place, and survive a kill."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unifashion_core import fileio
from unifashion_core.data.images import open_image
from unifashion_core.data.manifest import load_dataset, manifest_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(path, whether it was a directory) of every os.fsync call, in order."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file behind a descriptor")
    calls: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        calls.append((path, Path(path).is_dir()))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_write_text_atomic_flushes_the_file_before_and_the_folder_after_the_rename(
    tmp_path: Path, fsynced: list[tuple[str, bool]]
) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    fileio.write_text_atomic(target, "new")
    assert target.read_text() == "new"
    (file_path, file_is_dir), (dir_path, dir_is_dir) = fsynced
    assert Path(file_path).parent == tmp_path and Path(file_path).name.startswith(".report.json.tmp-")
    assert not file_is_dir  # the temporary file itself, flushed while it still had its own name
    assert (Path(dir_path), dir_is_dir) == (tmp_path, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_dir_flushes_every_file_and_folder_then_the_parent(
    tmp_path: Path, fsynced: list[tuple[str, bool]]
) -> None:
    out = tmp_path / "data"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "images" / "a").mkdir(parents=True)
        for name in ("images/a/1.png", "images/2.png", "manifest.jsonl"):
            (tmp / name).write_bytes(b"x")
    tree = [(str(Path(p).relative_to(tmp)), is_dir) for p, is_dir in fsynced if Path(p).is_relative_to(tmp)]
    files = {name for name, is_dir in tree if not is_dir}
    assert files == {"images/a/1.png", "images/2.png", "manifest.jsonl"}
    folders = [name for name, is_dir in tree if is_dir]
    assert folders == ["images/a", "images", "."]  # deepest first, after every file
    assert all(not is_dir for _, is_dir in tree[: len(files)])
    assert fsynced[-1] == (str(tmp_path), True)  # the renames are flushed last
    assert (out / "images" / "a" / "1.png").read_bytes() == b"x"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_dir_removes_what_killed_runs_left(tmp_path: Path) -> None:
    stale = tmp_path / f".data.tmp-{_dead_pid()}-abc"
    stale_old = tmp_path / f".data.old-{_dead_pid()}-abc"
    live = tmp_path / f".data.tmp-{os.getpid()}-def"  # a run still going on
    for folder in (stale, stale_old, live):
        (folder / "images").mkdir(parents=True)
    with fileio.atomic_dir(tmp_path / "data") as tmp:
        (tmp / "manifest.jsonl").write_text("")
    assert not stale.exists() and not stale_old.exists() and live.exists()


def test_a_replace_killed_between_its_two_renames_gets_the_old_tree_back(tmp_path: Path) -> None:
    old = tmp_path / f".checkpoint.old-{_dead_pid()}-abcd"  # replace_dir moved it aside, then was killed
    (old / "model.safetensors").parent.mkdir(parents=True)
    (old / "model.safetensors").write_bytes(b"weights")
    fileio.restore_interrupted(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == b"weights" and not old.exists()
    live = tmp_path / f".index.old-{os.getpid()}-abcd"  # a replace still going on is left alone
    live.mkdir()
    fileio.restore_interrupted(tmp_path / "index")
    assert live.is_dir() and not (tmp_path / "index").exists()


# --- a prepare killed at random moments ----------------------------------------------------------


def _prepare(out: Path, home: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "unifashion_cli.main", "prepare", "demo", "--out", str(out),
               "--num-items", "300", "--num-tryon", "0", "--image-size", "48", "-q", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNIFASHION_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _check_complete(out: Path, reference: bytes) -> None:
    dataset = load_dataset(out)
    assert (out / "manifest.jsonl").read_bytes() == reference
    assert sum(dataset.report["num_items"].values()) == len(dataset.items) == 300
    assert dataset.report["manifest_sha256"] == manifest_hash(out)
    for item in dataset.items:
        open_image(dataset.image_path(item))


def test_prepare_killed_at_random_moments_leaves_nothing_half_written(tmp_path: Path) -> None:
    out, home = tmp_path / "D", tmp_path / "ws"
    started = time.monotonic()
    first = _prepare(out, home)
    assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    duration = time.monotonic() - started
    reference = (out / "manifest.jsonl").read_bytes()
    rng = np.random.default_rng(0)
    for attempt, moment in enumerate(rng.uniform(0.3, 1.0, size=4) * duration):
        overwrite = attempt < 2  # first replacing a complete D, then writing a new one
        if not overwrite:
            fileio.shutil.rmtree(out, ignore_errors=True)
        process = _prepare(out, home, *(["--overwrite"] if overwrite else []))
        time.sleep(moment)
        process.kill()
        process.wait(timeout=30)
        if out.exists():  # absent, or complete: never half
            _check_complete(out, reference)
    last = _prepare(out, home, "--overwrite")
    assert last.wait(timeout=60) == 0
    _check_complete(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "ws"]  # the leftovers are cleaned up
