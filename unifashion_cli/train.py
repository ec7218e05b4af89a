"""`unifashion train`: phase 1 (retrieval, then caption and generation heads) or phase 2 (CIR).

Under ``accelerate launch --num_processes N unifashion train ...`` every process runs this
command; only the first (``RANK`` 0) shows progress, prints and updates the workspace.
"""

import os
from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def train(
    recipe: str = typer.Argument(..., help="A YAML recipe file, or a packaged recipe's name (`unifashion recipes`)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.retrieval.lr=3e-4."),
    phase: int = typer.Option(1, "--phase", min=1, max=2, help="1: retrieval + heads; 2: composed retrieval."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: recipe, then workspace)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint",
        help="Phase 2: the phase-1 checkpoint to start from (default: train.init_checkpoint, then the "
        "workspace's latest phase-1 run)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory (default: workspace/runs/NAME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Train from a recipe; writes checkpoints, metrics.jsonl, curves.png and the resolved config.yaml.

    Data parallel: `accelerate launch --num_processes N unifashion train RECIPE ...`.
    """
    from unifashion_cli import workspace
    from unifashion_core.config import load_recipe

    main_process = os.environ.get("RANK", "0") == "0"
    resolved = load_recipe(recipe, overrides or [])
    dataset = workspace.resolve("data", data or resolved.data.path or None)
    with RichProgress(quiet or not main_process) as progress:
        if phase == 1:
            from unifashion_core.train.phase1 import run_training

            run = out_dir or workspace.default_output(f"runs/{resolved.name}")
            result = run_training(resolved, dataset, run, resume, overwrite, workspace.cache_dir(), progress)
        else:
            from unifashion_core.train.phase2 import run_phase2

            run = out_dir or workspace.default_output(f"runs/{resolved.name}-phase2")
            init = _phase1_checkpoint(checkpoint, resolved.train.init_checkpoint, run if resume else None)
            progress.log(f"phase 2 starts from {init}")
            result = run_phase2(resolved, init, dataset, run, resume, overwrite, workspace.cache_dir(), progress)
    if not main_process:
        return
    if phase == 1:
        workspace.remember("phase1", result.checkpoint)
    workspace.remember("checkpoint", result.checkpoint)
    workspace.remember("data", dataset)
    if json_output:
        print_json({"checkpoint": str(result.checkpoint), "phase": result.phase, "metrics": result.metrics,
                    "skipped": result.skipped, "terms": list(result.terms),
                    "init_checkpoint": str(result.init_checkpoint) if result.init_checkpoint else None})
        return
    out.print(f"checkpoint: {result.checkpoint}")
    for key, value in result.metrics.items():
        out.print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")


def _phase1_checkpoint(given: Path | None, from_recipe: str, resumed_run: Path | None) -> Path:
    """Phase 2's starting point: --checkpoint, else the recipe's train.init_checkpoint, else (when
    resuming) the one the run started from, else the workspace's latest phase-1 checkpoint."""
    from unifashion_cli import workspace
    from unifashion_core.checkpoint import read_meta

    if given or from_recipe:
        return workspace.resolve("phase1", given or from_recipe)
    if resumed_run is not None and (resumed_run / "checkpoint" / "meta.json").is_file():
        return Path(read_meta(resumed_run / "checkpoint")["init_checkpoint"])
    return workspace.resolve("phase1", None)
