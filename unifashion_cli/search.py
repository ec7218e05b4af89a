"""`unifashion search`: query an index with a text, an image, or both."""

from pathlib import Path

import typer
from rich.table import Table

from unifashion_cli.console import err, handle_errors, out, print_json


@handle_errors
def search(
    text: str | None = typer.Option(None, "--text", help="Query text (text->image, or with --image: composed)."),
    image: Path | None = typer.Option(None, "--image", help="Query image (image->text, or with --text: composed)."),
    k: int = typer.Option(10, "-k", "--top-k", help="How many results."),
    mode: str = typer.Option("auto", "--mode", help="auto, t2i, i2t, i2i (similar images) or cir."),
    index_dir: Path | None = typer.Option(None, "--index", help="Index directory (default: workspace latest)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Query model (default: the index's)."),
    no_captions: bool = typer.Option(False, "--no-captions", help="Composed: ignore gallery captions."),
    caption_weight: float = typer.Option(1.0, "--caption-weight", help="Composed: weight w of the caption term."),
    composed: str = typer.Option("auto", "--composed", help="Composed score: fused (phase 2), zero-shot (late "
                                 "fusion, no phase 2) or auto (fused after phase 2, else zero-shot)."),
    image_weight: float | None = typer.Option(None, "--image-weight", help="Zero-shot: weight of image->image "
                                              "(text->image gets the rest; default: the checkpoint recipe's "
                                              "model.zero_shot_image_weight)."),
    filters: list[str] = typer.Option(None, "--filter", help="FIELD=VALUE on a manifest field (category, split, "
                                      "any attribute); repeat it: one field with several values allows any of them."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Write a contact sheet PNG of query and results."),
    json_output: bool = typer.Option(False, "--json", help="Print results as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No warnings."),
) -> None:
    """Search the index; prints rank, id, score and caption of the top-k items."""
    from unifashion_cli import workspace
    from unifashion_core.retrieval.query_text import tokenizer_warnings
    from unifashion_core.retrieval.search import (
        check_query,
        composed_score,
        contact_sheet,
        load_searcher,
        results_as_dicts,
        zero_shot_weight,
    )
    from unifashion_core.retrieval.search import (
        search as run_search,
    )

    effective, warnings = check_query(text, str(image) if image else None, mode)
    index_path = workspace.resolve("index", index_dir)
    score = composed_score(composed, index_path, checkpoint) if effective == "cir" else None
    model, index = load_searcher(index_path, checkpoint)
    image_weight = zero_shot_weight(model, image_weight)
    warnings += tokenizer_warnings(model.tokenizer, text) if text is not None else []
    for warning in warnings:
        if not quiet:
            err.print(f"warning: {warning}")
    results = run_search(model, index, text, image, k, effective, caption_weight, not no_captions,
                         composed=score or "fused", image_weight=image_weight, filter=parse_filters(filters or []))
    if sheet is not None:
        contact_sheet(results, sheet, image, text)
    if json_output:
        print_json(
            {
                "mode": effective,
                "composed_score": score,
                "query": {"text": text, "image": str(image) if image else None, "filter": parse_filters(filters or [])},
                "results": results_as_dicts(results),
            }
        )
        return
    if score is not None:
        captions = not no_captions and bool(index.meta.get("has_captions"))
        out.print(_describe_score(score, image_weight, caption_weight, captions))
    table = Table(title=f"{effective}: {text or ''} {image or ''}".strip())
    for column in ("rank", "id", "score", "caption"):
        table.add_column(column)
    for r in results:
        table.add_row(str(r.rank), r.id, f"{r.score:.4f}", r.caption)
    out.print(table)
    if sheet is not None:
        out.print(f"contact sheet: {sheet}")


def _describe_score(score: str, image_weight: float, caption_weight: float, captions: bool) -> str:
    """One line saying which composed score ranked the results."""
    if score == "zero-shot":
        return (f"composed score: zero-shot late fusion, {image_weight:g} x image->image + {1 - image_weight:g} x "
                "text->image (the checkpoint has no phase-2 training; --composed fused forces the fused score)")
    caption_term = f" + {caption_weight:g} x gallery captions" if captions else ""
    return f"composed score: fused (reference + text) embedding{caption_term}"


def parse_filters(filters: list[str]) -> dict[str, str | list[str]] | None:
    """``["gender=Men", "gender=Unisex", "category=shirt"]`` -> ``{"gender": ["Men", "Unisex"],
    "category": "shirt"}``."""
    from unifashion_core.errors import UserError

    parsed: dict[str, list[str]] = {}
    for entry in filters:
        name, equals, value = entry.partition("=")
        if not equals or not name.strip():
            raise UserError(f"--filter {entry!r} is not FIELD=VALUE, e.g. --filter category=dress.")
        parsed.setdefault(name.strip(), []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in parsed.items()} or None
