"""`unifashion demo`: run the whole main job on the built-in demo data and the `small` preset."""

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def demo(
    quick: bool = typer.Option(False, "--quick", help="A short smoke run (about 3 minutes)."),
    num_items: int | None = typer.Option(None, "--num-items", help="Demo items to draw (default 1200, quick 300)."),
    tryon: bool = typer.Option(False, "--tryon", help="Train and show try-on at 64 px instead of 32 (slower)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Prepare, train, index, search, caption, generate and bench; writes demo/report.md."""
    from unifashion_cli import workspace
    from unifashion_core.walkthrough import run_demo

    with RichProgress(quiet) as progress:
        result = run_demo(workspace.workspace_dir(), quick=quick, num_items=num_items, progress=progress,
                          tryon=tryon)
    workspace.remember("data", result.data)
    workspace.remember("phase1", result.phase1)
    workspace.remember("checkpoint", result.checkpoint)
    workspace.remember("index", result.index)
    workspace.remember("captioned_index", result.index)
    if json_output:
        print_json(result.report)
        return
    for name, info in result.report["stages"].items():
        out.print(f"{name:>9}: {info['seconds']:.0f} s")
    out.print(f"report: {result.report_path}")
