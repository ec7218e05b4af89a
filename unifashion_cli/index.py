"""`unifashion index`: embed a catalogue split into a local index or a Qdrant collection (resumable);
`add`, `remove` and `compact` change a local index's live catalogue without a rebuild."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json

app = typer.Typer(
    help="Build an index of a split's images and texts (bare `unifashion index`), or change its live catalogue "
         "without a rebuild: add, remove, compact.",
    add_completion=False,
)

INDEX_OPTION = typer.Option(None, "--index", help="Index directory (default: workspace latest).")


@app.callback(invoke_without_command=True)
@handle_errors
def index(
    ctx: typer.Context,
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Model checkpoint (default: workspace latest)."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: workspace latest)."),
    split: str = typer.Option("test", "--split", help="Which split to index: train, val or test."),
    out_dir: Path | None = typer.Option(None, "--out", help="Index directory (default: workspace/index)."),
    kind: str = typer.Option("flat", "--kind", help="flat (exact scan) or pq (PQ-scan candidates + exact re-rank: "
                             "large catalogues)."),
    captions: bool = typer.Option(False, "--captions", help="Also caption the gallery (composed retrieval w/ cap)."),
    backend: str = typer.Option("local", "--backend", help="local (files in --out) or qdrant (a Qdrant collection; "
                                "--out then only names it)."),
    qdrant_url: str | None = typer.Option(None, "--qdrant-url", help="Qdrant server or cluster URL (API key from "
                                          "$QDRANT_API_KEY)."),
    qdrant_path: Path | None = typer.Option(None, "--qdrant-path", help="Directory for Qdrant's embedded local mode."),
    qdrant_collection: str = typer.Option("unifashion", "--qdrant-collection", help="Collection (alias) name."),
    qdrant_shards: int | None = typer.Option(None, "--qdrant-shards", help="Shards of the new collection (cluster)."),
    qdrant_replicas: int | None = typer.Option(None, "--qdrant-replicas", help="Replicas of each shard (cluster)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished index in --out."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Build an index of a split's images and texts; an interrupted build resumes when re-run."""
    if ctx.invoked_subcommand is not None:
        return
    from unifashion_cli import workspace
    from unifashion_core.errors import UserError
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.index import check_kind

    check_kind(kind)
    qdrant = _qdrant_target(backend, qdrant_url, qdrant_path, qdrant_collection, qdrant_shards, qdrant_replicas)
    target = out_dir or workspace.default_output("index")
    if (target / "meta.json").is_file() and not overwrite:
        raise UserError(f"{target} already holds an index; pass --overwrite to rebuild it.")
    with RichProgress(quiet) as progress:
        summary = build_index(
            workspace.resolve("checkpoint", checkpoint), workspace.resolve("data", data), target,
            split=split, kind=kind, captions=captions, progress=progress, qdrant=qdrant,
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
        where = f"Qdrant collection {qdrant.collection!r} (named by {target})" if qdrant else str(target)
        out.print(f"indexed {summary.num_items} items of split {split!r} into {where}{with_captions} "
                  f"({len(summary.skipped)} skipped, see skipped.json)")


def _qdrant_target(backend: str, url: str | None, path: Path | None, collection: str, shards: int | None,
                   replicas: int | None):  # noqa: ANN202 - QdrantTarget is imported lazily
    """The Qdrant target of ``--backend qdrant`` (None for local), with the flags checked."""
    from unifashion_core.errors import UserError

    if backend not in ("local", "qdrant"):
        raise UserError(f"unknown backend {backend!r}; use local or qdrant.")
    if backend == "local":
        if url or path:
            raise UserError("--qdrant-url and --qdrant-path need --backend qdrant.")
        return None
    try:
        from unifashion_core.retrieval.qdrant import QdrantTarget
    except ImportError as exc:
        raise UserError("--backend qdrant needs qdrant-client: pip install 'unifashion[qdrant]'.") from exc
    return QdrantTarget(url, str(path) if path else None, collection, shards, replicas)


@app.command("add")
@handle_errors
def add(
    data: Path = typer.Option(..., "--data", help="Prepared dataset whose items to add (or replace, by id)."),
    split: str | None = typer.Option(None, "--split", help="Only this split (default: every item)."),
    index_dir: Path | None = INDEX_OPTION,
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Query model (default: the index's)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Items embedded and written per batch."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Embed a dataset's items and upsert them into the live catalogue (durable; searches see them at once)."""
    from unifashion_cli import workspace
    from unifashion_core.errors import UserError
    from unifashion_core.retrieval.upsert import add_dataset

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1.")
    with RichProgress(quiet) as progress:
        summary = add_dataset(workspace.resolve("index", index_dir), workspace.resolve("data", data), split,
                              checkpoint, batch_size, progress)
    if json_output:
        print_json({"index": str(summary.index), "added": summary.num_added, "replaced": summary.num_replaced,
                    "num_skipped": len(summary.skipped), "skipped": list(summary.skipped),
                    "num_items": summary.num_items, "images_copied": summary.uploads})
    else:
        out.print(f"added {summary.num_added} and replaced {summary.num_replaced} items in {summary.index} "
                  f"({len(summary.skipped)} unreadable images skipped); it now holds {summary.num_items} items")


@app.command("remove")
@handle_errors
def remove(
    ids: list[str] = typer.Argument(..., help="Ids of the items to remove."),
    index_dir: Path | None = INDEX_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Remove items from the live catalogue (durable); an unknown id removes nothing."""
    from unifashion_cli import workspace
    from unifashion_core.retrieval.catalogue import Catalogue

    view = Catalogue.open(workspace.resolve("index", index_dir)).delete(ids)
    if json_output:
        print_json({"index": str(view.path), "removed": sorted(set(ids)), "num_items": view.num_items})
    else:
        out.print(f"removed {len(set(ids))} items from {view.path}; it now holds {view.num_items} items")


@app.command("compact")
@handle_errors
def compact(
    index_dir: Path | None = INDEX_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Fold the live catalogue's changes into a fresh index, atomically (a running server picks it up)."""
    from unifashion_cli import workspace
    from unifashion_core.retrieval.catalogue import compact as compact_index

    with RichProgress(quiet) as progress:
        summary = compact_index(workspace.resolve("index", index_dir), progress)
    if json_output:
        print_json({"index": str(summary.index), "num_items": summary.num_items,
                    "num_segments": summary.num_segments, "num_uploads": summary.num_uploads})
    elif summary.num_segments == 0:
        out.print(f"{summary.index} has no changes to fold in ({summary.num_items} items)")
    else:
        out.print(f"folded {summary.num_segments} writes into {summary.index}: {summary.num_items} items")
