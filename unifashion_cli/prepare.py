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
    seed: int = typer.Option(0, "--seed", help="Seed for drawing (demo) and for splits."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="fashion-product, fashiongen: share of items put in val."
    ),
    test_fraction: float | None = typer.Option(
        None, "--test-fraction", help="fashion-product: share of items put in test."
    ),
    num_items: int | None = typer.Option(None, "--num-items", help="demo: how many items to draw."),
    image_size: int | None = typer.Option(None, "--image-size", help="demo: image side in pixels."),
    num_tryon: int | None = typer.Option(
        None, "--num-tryon", help="demo: garments worn by drawn people (try-on part; default up to 144, 0 = none)."
    ),
    triplets: bool = typer.Option(
        False, "--triplets", help="fashion-product: derive composed-retrieval triplets from attributes."
    ),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Datasets of image files: refuse images with more pixels."
    ),
    check_leakage: bool = typer.Option(False, "--check-leakage", help="Also write leakage.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Prepare a dataset: manifest.jsonl, triplets.jsonl, report.json and images/ in --out."""
    from unifashion_cli import workspace
    from unifashion_core.data.prepare import prepare as run_prepare
    from unifashion_core.fileio import check_output_dir

    check_output_dir(out_dir, overwrite)
    given = {
        "val_fraction": val_fraction, "test_fraction": test_fraction, "num_items": num_items,
        "image_size": image_size, "num_tryon": num_tryon, "triplets": triplets or None, "max_pixels": max_pixels,
    }  # fmt: skip
    options = {key: value for key, value in given.items() if value is not None}
    with RichProgress(quiet) as progress:
        result = run_prepare(
            name, out_dir, root, seed=seed, check_leakage=check_leakage, progress=progress, **options
        )
    workspace.remember("data", out_dir)
    if json_output:
        print_json({**result.report, "leakage": result.leakage} if result.leakage else result.report)
        return
    counts = ", ".join(f"{k} {v}" for k, v in result.num_items.items())
    num_triplets = ", ".join(f"{k} {v}" for k, v in result.num_triplets.items())
    out.print(f"prepared {name} in {out_dir}: items {counts}; triplets {num_triplets}; "
              f"skipped {result.num_skipped} (see report.json)")
    if result.leakage is not None:
        out.print(f"leakage check: {result.leakage['summary']} (see leakage.json)")
