"""`unifashion prepare`: turn a dataset (or the built-in demo) into the shared manifest format."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json

DATASET_NAMES = "demo, fashion-product, fashioniq, fashiongen, fashion200k, vitonhd"


@handle_errors
def prepare(
    name: str = typer.Argument(..., help=f"Dataset: {DATASET_NAMES}."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory for the prepared dataset."),
    root: Path | None = typer.Option(None, "--root", help="The dataset's official layout (not for demo)."),
    num_items: int = typer.Option(1200, "--num-items", help="Demo only: how many items to draw."),
    image_size: int = typer.Option(128, "--image-size", help="Demo only: image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing (demo) and for splits."),
    check_leakage: bool = typer.Option(False, "--check-leakage", help="Also write leakage.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Prepare a dataset: manifest.jsonl, triplets.jsonl, report.json and images/ in --out."""
    from unifashion_cli import workspace
    from unifashion_core.data.pipeline import run_prepare
    from unifashion_core.errors import UserError
    from unifashion_core.fileio import check_output_dir

    check_output_dir(out_dir, overwrite)
    if name != "demo" and root is None:
        raise UserError(f"`prepare {name}` needs --root pointing at the dataset's files.")
    with RichProgress(quiet) as progress:
        report = run_prepare(
            name, out_dir, root=root, seed=seed, num_items=num_items, image_size=image_size,
            check_leakage=check_leakage, progress=progress,
        )
    workspace.remember("data", out_dir)
    if json_output:
        print_json(report)
        return
    counts = ", ".join(f"{k} {v}" for k, v in report["num_items"].items())
    triplets = ", ".join(f"{k} {v}" for k, v in report["num_triplets"].items())
    out.print(f"prepared {name} in {out_dir}: items {counts}; triplets {triplets}; "
              f"skipped {report['num_skipped']} (see report.json)")
    if "leakage" in report:
        out.print(f"leakage check: {report['leakage']['summary']} (see leakage.json)")
