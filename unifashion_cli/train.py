"""`unifashion train`: phase 1 (retrieval, then caption and generation heads) or phase 2 (CIR)."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def train(
    recipe: Path = typer.Argument(..., help="A YAML recipe, e.g. recipes/demo.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.retrieval.lr=3e-4."),
    phase: int = typer.Option(1, "--phase", min=1, max=2, help="1: retrieval + heads; 2: composed retrieval."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: recipe, then workspace)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Phase 2: the phase-1 checkpoint to start from."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Checkpoint directory (default: workspace/checkpoints/NAME)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Train from a recipe; writes checkpoints, metrics.jsonl and the resolved config.yaml."""
    from unifashion_core.config import load_recipe
    from unifashion_core.train.run import run_training

    resolved = load_recipe(recipe, overrides or [])
    with RichProgress(quiet) as progress:
        result = run_training(
            resolved,
            phase=phase,
            data=data,
            init_checkpoint=checkpoint,
            out=out_dir,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
        )
    if json_output:
        print_json(result)
    else:
        out.print(f"checkpoint: {result['checkpoint']}")
        for key, value in result.get("metrics", {}).items():
            out.print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
