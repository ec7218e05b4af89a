"""The CLI contract: the commands, fast help without torch, one-line user errors with exit 2, sub-apps."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unifashion_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("prepare", "train", "index", "search", "serve", "caption", "generate", "bench", "demo", "recipes")
BENCH_SUBJECTS = ("retrieval", "caption", "fid", "kid", "clip-score", "cir", "queries", "ablation", "speed",
                  "paper-speed", "index", "memory")
runner = CliRunner()


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unifashion_cli.main", *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})}, timeout=120,
    )


def test_help_lists_the_commands_quickly_and_without_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from unifashion_cli.main import app; "
        "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']); "
        "print(time.perf_counter() - t); print('torch' in sys.modules); print(r.output)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds, torch_loaded, output = result.stdout.split("\n", 2)
    assert torch_loaded == "False"
    assert float(seconds) < 1.0
    for command in COMMANDS:
        assert command in output


def test_unknown_recipe_key_exits_2_and_names_the_closest_key():
    result = _run("train", "recipes/demo.yaml", "--phase", "1", "trian.lr=1")
    assert result.returncode == 2
    assert "did you mean 'train'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_phase_option_may_come_before_the_recipe():
    result = runner.invoke(app, ["train", "--phase", "2", "recipes/fashioniq.yaml", "seed=x"])
    assert result.exit_code == 2  # parsed: the recipe loaded and the bad override was reported


@pytest.mark.parametrize("args, message", [
    (["train", "recipes/missing.yaml"], "does not exist"),
    (["train", "recipes/tiny.yaml", "train.lr"], "key=value"),
    (["train", "recipes/tiny.yaml", "--phase", "3"], ""),
    (["prepare", "nosuch", "--out", "x", "--root", "."], "unknown dataset"),
    (["bench", "nosuch"], "No such command"),
    (["search"], "give --text, --image"),
    (["search", "--text", "  "], "empty"),
    (["search", "--text", "the and of"], "only stop words"),
    (["search", "--text", "please show me something", "--image", "x.png"], "only stop words"),
    (["generate", "--out", "x.png", "--text", "red", "--steps", "0"], "--steps"),
    (["generate", "--out", "x.png", "--text", "red", "--guidance", "99"], "--guidance"),
    (["generate", "--out", "x.png", "--person", "p.png"], "--mask"),
])
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_prepare_refuses_a_non_empty_out_unless_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["prepare", "demo", "--out", str(out), "--num-items", "60"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_prepare_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = runner.invoke(app, ["prepare", "demo", "--out", str(locked / "d")])
    assert result.exit_code == 2


def test_commands_without_workspace_state_say_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    result = runner.invoke(app, ["search", "--text", "red shirt"])
    assert result.exit_code == 2
    assert "unifashion index" in result.output


def test_help_is_fast_end_to_end():
    started = time.perf_counter()
    result = _run("--help")
    assert result.returncode == 0
    assert time.perf_counter() - started < 5.0  # includes interpreter start-up


def test_bench_lists_its_subjects_each_with_only_its_own_options():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for subject in BENCH_SUBJECTS:
        assert subject in result.output
    options = {subject: runner.invoke(app, ["bench", subject, "--help"]).output for subject in BENCH_SUBJECTS}
    assert "--protocol" in options["retrieval"] and "--protocol" not in options["cir"]
    assert "--caption-weight" in options["cir"] and "--caption-weight" not in options["retrieval"]
    assert "--clip" in options["clip-score"] and "--clip" not in options["fid"]
    assert "--spice" in options["caption"] and "--spice" not in options["speed"]
    assert "--shapes" in options["queries"] and "--image-weight" in options["cir"]


def test_recipes_list_and_show_the_packaged_recipes():
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0
    for name in ("demo", "tiny", "fashioniq", "fashion-product"):
        assert name in listed.output
    shown = runner.invoke(app, ["recipes", "show", "demo"])
    assert shown.exit_code == 0 and "preset: small" in shown.output
    missing = runner.invoke(app, ["recipes", "show", "nope"])
    assert missing.exit_code == 2 and "packaged recipe" in missing.output


@pytest.mark.parametrize("rank", ["0", "1"])
def test_train_prints_and_updates_the_workspace_only_in_the_first_process(rank, tmp_path, monkeypatch):
    from unifashion_core.train import phase1
    from unifashion_core.train.setup import TrainResult

    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("RANK", rank)  # what `accelerate launch` sets in each process
    (tmp_path / "data").mkdir()
    trained = []

    def run_training(recipe, data, run, resume, overwrite, cache_dir, progress):  # every process trains
        progress.log("training")
        trained.append(run)
        return TrainResult(run / "checkpoint", 1, {"retrieval/loss": 0.5})

    monkeypatch.setattr(phase1, "run_training", run_training)
    result = runner.invoke(app, ["train", "tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert trained == [tmp_path / "run"]
    state = tmp_path / "ws" / "state.json"
    if rank == "0":
        assert "checkpoint:" in result.output and "retrieval/loss: 0.5000" in result.output
        assert str(tmp_path / "run" / "checkpoint") in state.read_text()
    else:
        assert result.output == "" and not state.exists()
