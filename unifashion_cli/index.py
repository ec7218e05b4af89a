"""`unifashion index`: embed a catalogue split into a local index or a Qdrant collection (resumable)."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def index(
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
