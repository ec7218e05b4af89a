"""`unifashion bench SUBJECT`: measured reports (JSON + Markdown) with their provenance."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json

SUBJECTS = ("retrieval", "caption", "fid", "kid", "clip-score", "cir", "ablation", "speed")


@handle_errors
def bench(
    subject: str = typer.Argument(..., help=f"What to measure: {', '.join(SUBJECTS)}."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint (default: workspace latest)."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: workspace latest)."),
    split: str = typer.Option("test", "--split", help="Evaluation split."),
    protocol: str = typer.Option("full", "--protocol", help="retrieval: full or random100."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampled protocols and generation."),
    max_items: int = typer.Option(0, "--max-items", help="Evaluate at most this many items (0 = all)."),
    clip: str = typer.Option("", "--clip", help="clip-score: CLIP model directory or hub id."),
    spice: bool = typer.Option(False, "--spice", help="caption: also SPICE (needs Stanford CoreNLP jars)."),
    steps: int = typer.Option(20, "--steps", help="fid/kid/clip-score: sampling steps."),
    sampler: str = typer.Option("dpm++", "--sampler", help="fid/kid/clip-score: sampler."),
    exclude_reference: bool = typer.Option(
        False, "--exclude-reference", help="cir/ablation: remove each query's reference image from its gallery."),
    no_captions: bool = typer.Option(False, "--no-captions", help="cir/ablation: score without gallery captions only."),
    caption_weight: float = typer.Option(1.0, "--caption-weight", help="cir/ablation: weight w of the caption term."),
    recipe: Path | None = typer.Option(None, "--recipe", help="ablation: phase-2 recipe (default: the checkpoint's)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Report directory (default: workspace/bench/SUBJECT)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Benchmark a checkpoint; writes report.json and report.md.

    `ablation` trains phase 2 three times from a phase-1 --checkpoint (Base, +LLM, +LLM+diffusion)
    and compares them with `cir`, with and without gallery captions.
    """
    from unifashion_core import workspace
    from unifashion_core.errors import UserError
    from unifashion_core.evaluation.bench import run_bench

    if subject not in SUBJECTS:
        raise UserError(f"unknown bench subject {subject!r}; choose one of {', '.join(SUBJECTS)}.")
    target = out_dir or workspace.default_output(f"bench/{subject}")
    with RichProgress(quiet) as progress:
        report = run_bench(
            subject, checkpoint=workspace.resolve("checkpoint", checkpoint), data=workspace.resolve("data", data),
            out=target, split=split, protocol=protocol, seed=seed, max_items=max_items, clip=clip,
            spice=spice, steps=steps, sampler=sampler, exclude_reference=exclude_reference,
            use_captions=not no_captions, caption_weight=caption_weight, recipe=recipe, progress=progress,
        )
    if json_output:
        print_json(report)
    else:
        out.print((target / "report.md").read_text(encoding="utf-8"))
        out.print(f"report: {target / 'report.json'}")
