"""Kill tests: training and index building killed with SIGKILL at seeded random moments, then run
again, end exactly where an uninterrupted run ends (README, "Reliability").

Each kill waits for a seeded random amount of finished work (metrics lines, index shards), then a
seeded random delay, so it can land anywhere: before the first checkpoint, mid-step, mid-save,
between stages, during the final assembly. The processes run with one thread, as the reference
does, so the comparison is bit-exact. (`--resume` into a run killed after it wrote its config but
before its first checkpoint is a case of tests/test_bad_inputs.py.)
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train.save_every=1", "train.retrieval.max_steps=3", "train.caption.max_steps=2",
         "train.generate.max_steps=2"]  # 7 steps, a checkpoint after each  # fmt: skip
TIMEOUT = 300


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "UNIFASHION_HOME": str(home), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(command: list[str], home: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _kill_at(command: list[str], home: Path, done: Callable[[], int], work: int, delay: float) -> int:
    """Start ``command``; SIGKILL it once ``done()`` reaches ``work`` and ``delay`` seconds more have
    passed (or let it finish). Returns its exit status (-9 when killed)."""
    process = subprocess.Popen(command, env=_env(home), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and done() < work and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    return process.wait(timeout=60)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unifashion_cli.main", "train", "tiny", *TRAIN, "--data", str(data),
            "--out", str(out), "-q", *extra]


def test_training_killed_twice_then_resumed_equals_an_uninterrupted_run(tiny_phase1: Path, tmp_path: Path) -> None:
    data, home = tiny_phase1 / "data", tmp_path / "ws"
    _run(_train(data, tmp_path / "straight"), home)
    reference = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    total = _lines(tmp_path / "straight" / "metrics.jsonl")  # one line per step
    run, rng, statuses = tmp_path / "killed", random.Random(14), []
    metrics = run / "metrics.jsonl"
    for attempt in range(2):  # first during start-up, before any checkpoint; then after a random step
        base, delay = _lines(metrics), rng.uniform(0.0, 0.5)
        work = rng.randrange(1, total - 1) if attempt else 0
        command = _train(data, run, *(["--resume"] if attempt else []))
        statuses.append(_kill_at(command, home, lambda base=base: _lines(metrics) - base, work, delay))
        if attempt == 0:  # killed with no checkpoint: the next --resume starts the run from step 0
            assert statuses[0] == -signal.SIGKILL and not (run / "checkpoint").exists()
    assert statuses[1] == -signal.SIGKILL, statuses
    _run(_train(data, run, "--resume"), home)
    resumed = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


INDEX_SCRIPT = """
import sys
from unifashion_core.retrieval.build import build_index
build_index(sys.argv[1], sys.argv[2], sys.argv[3], split="train", batch_size=8)
"""


def _index_files(index: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(index.iterdir())}


def test_index_killed_then_rebuilt_equals_an_uninterrupted_build(tiny_phase1: Path, tmp_path: Path) -> None:
    checkpoint, data, home = tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path / "ws"

    def build(out: Path) -> list[str]:
        return [sys.executable, "-c", INDEX_SCRIPT, str(checkpoint), str(data), str(out)]

    _run(build(tmp_path / "straight"), home)
    out, rng = tmp_path / "killed", random.Random(0)
    partial = tmp_path / ".killed.partial"
    status = _kill_at(build(out), home, lambda: len(list(partial.glob("shard-*.npz"))), rng.randrange(0, 14),
                      rng.uniform(0.0, 0.3))
    assert status == -signal.SIGKILL
    _run(build(out), home)
    rebuilt, reference = _index_files(out), _index_files(tmp_path / "straight")
    differing = sorted(name for name in rebuilt.keys() | reference.keys() if rebuilt.get(name) != reference.get(name))
    assert not differing, f"the rebuilt index differs from the uninterrupted one in {differing}"
    assert not partial.exists()
