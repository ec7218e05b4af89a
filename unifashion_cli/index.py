"""`unifashion index`: embed a catalogue split into a FAISS index (resumable)."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def index(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Model checkpoint (default: workspace latest)."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: workspace latest)."),
    split: str = typer.Option("test", "--split", help="Which split to index: train, val or test."),
    out_dir: Path | None = typer.Option(None, "--out", help="Index directory (default: workspace/index)."),
    kind: str = typer.Option("flat", "--kind", help="flat (exact scan) or ivf (IVF candidates + exact re-rank: "
                             "large catalogues)."),
    captions: bool = typer.Option(False, "--captions", help="Also caption the gallery (composed retrieval w/ cap)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished index in --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Build an index of a split's images and texts; an interrupted build resumes when re-run."""
    from unifashion_cli import workspace
    from unifashion_core.errors import UserError
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.index import check_kind

    check_kind(kind)
    target = out_dir or workspace.default_output("index")
    if (target / "meta.json").is_file() and not overwrite:
        raise UserError(f"{target} already holds an index; pass --overwrite to rebuild it.")
    with RichProgress(quiet) as progress:
        summary = build_index(
            workspace.resolve("checkpoint", checkpoint), workspace.resolve("data", data), target,
            split=split, kind=kind, captions=captions, progress=progress,
        )
    workspace.remember("index", target)
    if captions:
        workspace.remember("captioned_index", target)
    if json_output:
        print_json({"index": str(summary.index), "split": summary.split, "kind": summary.kind,
                    "num_items": summary.num_items, "num_skipped": len(summary.skipped),
                    "skipped": list(summary.skipped), "fingerprint": summary.fingerprint,
                    "captions": summary.captions})
    else:
        with_captions = ", with gallery captions" if captions else ""
        out.print(f"indexed {summary.num_items} items of split {split!r} into {target}{with_captions} "
                  f"({len(summary.skipped)} skipped, see skipped.json)")
