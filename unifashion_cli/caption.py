"""`unifashion caption`: describe garments in a catalogue's style."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json


@handle_errors
def caption(
    image: Path = typer.Option(..., "--image", help="An image, a folder of images, or a prepared dataset."),
    style: str | None = typer.Option(None, "--style", help="short, professional or detailed (default: the recipe's)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint (default: workspace latest)."),
    split: str | None = typer.Option(None, "--split", help="With a prepared dataset: only this split."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", help="Length cap of each caption."),
    num_beams: int = typer.Option(1, "--num-beams", help="Beam search width (1 = greedy)."),
    out_file: Path | None = typer.Option(None, "--out", help="Write JSON Lines {image, caption} here."),
    json_output: bool = typer.Option(False, "--json", help="Print results as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Caption one image, or many (batched); many are written as JSON Lines with --out."""
    from unifashion_cli import workspace
    from unifashion_core.fileio import write_jsonl
    from unifashion_core.inference import caption_images

    with RichProgress(quiet) as progress:
        results, skipped = caption_images(
            workspace.resolve("checkpoint", checkpoint), image, style, max_new_tokens, num_beams,
            split=split, progress=progress,
        )
    records = [vars(r) for r in results]
    if out_file is not None:
        write_jsonl(out_file, records)
    if json_output:
        print_json({"captions": records, "skipped": [vars(e) for e in skipped.entries]})
        return
    for record in records if out_file is None or len(records) <= 20 else records[:20]:
        out.print(f"{record['image']}: {record['caption']}" if len(records) > 1 else record["caption"])
    if skipped.entries:
        out.print(f"skipped {len(skipped.entries)} unreadable images: {skipped.counts()}")
    if out_file is not None:
        out.print(f"wrote {len(records)} captions to {out_file}")
