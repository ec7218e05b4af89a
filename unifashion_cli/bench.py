"""`unifashion bench SUBJECT`: measured reports (JSON + Markdown) with their provenance.

One subcommand per subject, each with only its own options, each calling its own core function.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from unifashion_cli.console import RichProgress, handle_errors, out, print_json

app = typer.Typer(
    name="bench", help="Benchmark a checkpoint; each subject writes report.json and report.md.",
    no_args_is_help=True,
)

CHECKPOINT = typer.Option(None, "--checkpoint", help="Checkpoint or run directory (default: workspace latest).")
DATA = typer.Option(None, "--data", help="Prepared dataset (default: workspace latest).")
SPLIT = typer.Option("test", "--split", help="Evaluation split.")
SEED = typer.Option(0, "--seed", help="Seed of sampled protocols and of generation.")
OUT = typer.Option(None, "--out", help="Report directory (default: workspace/bench/SUBJECT).")
JSON = typer.Option(False, "--json", help="Print the report as JSON.")
QUIET = typer.Option(False, "-q", "--quiet", help="No progress output.")
MAX_ITEMS = typer.Option(0, "--max-items", help="Evaluate at most this many items (0 = all).")
STEPS = typer.Option(20, "--steps", help="Sampling steps.")
SAMPLER = typer.Option("dpm++", "--sampler", help="dpm++, plms or ddim.")
GUIDANCE = typer.Option(None, "--guidance", help="Classifier-free guidance (default: the recipe's).")
EXCLUDE_REFERENCE = typer.Option(False, "--exclude-reference",
                                 help="Remove each query's reference image from its gallery.")
NO_CAPTIONS = typer.Option(False, "--no-captions", help="Score without gallery captions only.")
CAPTION_WEIGHT = typer.Option(1.0, "--caption-weight", help="Weight w of the gallery-caption term.")
IMAGE_WEIGHT = typer.Option(None, "--image-weight",
                            help="Zero-shot composed score: weight of image->image (text->image gets the rest; "
                                 "default: the checkpoint recipe's model.zero_shot_image_weight).")


def _run(subject: str, out_dir: Path | None, json_output: bool, quiet: bool,
         bench: Callable[..., Any], **paths: Path | None) -> None:
    """Resolve the workspace defaults, run ``bench(**paths, out=..., cache_dir=..., progress=...)``
    and print its report."""
    from unifashion_cli import workspace

    resolved = {name: workspace.resolve(name, value) for name, value in paths.items()}
    target = out_dir or workspace.default_output(f"bench/{subject}")
    with RichProgress(quiet) as progress:
        report = bench(**resolved, out=target, progress=progress)
    if json_output:
        print_json(report.data)
    else:
        out.print(report.markdown)
        out.print(f"report: {report.out / 'report.json'}")


def _cached(bench: Callable[..., Any]) -> Callable[..., Any]:
    """``bench`` with the workspace's feature cache."""
    from unifashion_cli import workspace

    return lambda **kwargs: bench(**kwargs, cache_dir=workspace.cache_dir())


@app.command()
@handle_errors
def retrieval(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT,
    protocol: str = typer.Option("both", "--protocol",
                                 help="full (the whole split), random100, or both side by side."),
    candidates: Path | None = typer.Option(None, "--candidates",
                                           help="A candidates.json to re-run random100 on exactly its lists."),
    seed: int = SEED, out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Recall@1/5/10 image->text and text->image, full and random100, with a same-run ridge baseline."""
    from unifashion_core.evaluation.bench_retrieval import bench_retrieval

    bench = _cached(lambda **kw: bench_retrieval(**kw, split=split, protocol=protocol, seed=seed,
                                                 candidates=candidates))
    _run("retrieval", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def caption(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT,
    max_items: int = MAX_ITEMS,
    style: str | None = typer.Option(None, "--style", help="short, professional or detailed (default: recipe's)."),
    spice: bool = typer.Option(False, "--spice", help="Also SPICE (needs Stanford CoreNLP jars)."),
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """BLEU-4, METEOR, ROUGE-L, CIDEr (pycocoevalcap), with a nearest-neighbour baseline."""
    from unifashion_core.evaluation.bench_caption import bench_caption

    bench = _cached(lambda **kw: bench_caption(**kw, split=split, max_items=max_items, spice=spice, style=style))
    _run("caption", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


def _generation(subject: str, checkpoint: Path | None, data: Path | None, split: str, max_items: int, steps: int,
                sampler: str, guidance: float | None, seed: int, clip: str, out_dir: Path | None,
                json_output: bool, quiet: bool) -> None:
    from unifashion_core.evaluation.bench_generation import bench_generation

    def bench(**kw: Any) -> Any:
        return bench_generation(subject, **kw, split=split, max_items=max_items, clip=clip, steps=steps,
                                sampler=sampler, guidance=guidance, seed=seed)

    _run(subject, out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def fid(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, max_items: int = MAX_ITEMS,
    steps: int = STEPS, sampler: str = SAMPLER, guidance: float | None = GUIDANCE, seed: int = SEED,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """FID and KID of images generated from the split's captions (Inception-v3 features)."""
    _generation("fid", checkpoint, data, split, max_items, steps, sampler, guidance, seed, "", out_dir,
                json_output, quiet)


@app.command()
@handle_errors
def kid(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, max_items: int = MAX_ITEMS,
    steps: int = STEPS, sampler: str = SAMPLER, guidance: float | None = GUIDANCE, seed: int = SEED,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """KID (and FID) of images generated from the split's captions (Inception-v3 features)."""
    _generation("kid", checkpoint, data, split, max_items, steps, sampler, guidance, seed, "", out_dir,
                json_output, quiet)


@app.command(name="clip-score")
@handle_errors
def clip_score(
    clip: str = typer.Option(..., "--clip", help="CLIP model directory or hub id."),
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, max_items: int = MAX_ITEMS,
    steps: int = STEPS, sampler: str = SAMPLER, guidance: float | None = GUIDANCE, seed: int = SEED,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """CLIP-S of images generated from the split's captions."""
    _generation("clip-score", checkpoint, data, split, max_items, steps, sampler, guidance, seed, clip, out_dir,
                json_output, quiet)


@app.command()
@handle_errors
def tryon(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, max_items: int = MAX_ITEMS,
    queries: str = typer.Option("image", "--queries",
                                help="The garment as image (in-shop photo), text (caption) or multimodal (both)."),
    with_sketch: bool = typer.Option(False, "--with-sketch", help="Also give try-on the person's sketch."),
    steps: int = STEPS, sampler: str = SAMPLER, guidance: float | None = GUIDANCE, seed: int = SEED,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Try-on (paired SSIM/PSNR/FID/KID against two baselines; unpaired FID/KID) and design from a sketch."""
    from unifashion_core.evaluation.bench_tryon import bench_tryon

    bench = _cached(lambda **kw: bench_tryon(**kw, split=split, max_items=max_items, queries=queries,
                                             with_sketch=with_sketch, steps=steps, sampler=sampler,
                                             guidance=guidance, seed=seed))
    _run("tryon", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def cir(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, seed: int = SEED,
    exclude_reference: bool = EXCLUDE_REFERENCE, no_captions: bool = NO_CAPTIONS,
    caption_weight: float = CAPTION_WEIGHT,
    gallery: str = typer.Option("auto", "--gallery", help="split, category, or auto (category for Fashion-IQ)."),
    image_weight: float | None = IMAGE_WEIGHT,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Composed retrieval: Recall@10/50 per category and averaged, fused (with and without gallery captions)
    next to the zero-shot late fusion, image-only and text-only."""
    from unifashion_core.evaluation.bench_cir import bench_cir

    bench = _cached(lambda **kw: bench_cir(**kw, split=split, seed=seed, exclude_reference=exclude_reference,
                                           use_captions=not no_captions, caption_weight=caption_weight,
                                           gallery=gallery, image_weight=image_weight))
    _run("cir", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def queries(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, seed: int = SEED,
    shapes: str | None = typer.Option(None, "--shapes", help="Query shapes: attribute fields joined by '+', "
                                      "comma-separated (default per dataset, e.g. type,colour+type)."),
    max_queries: int = typer.Option(200, "--max-queries", help="At most this many value combinations per shape."),
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Short shopper queries built from the attributes ("blue dress"): P@5 and nDCG@10 per shape, with the
    ridge baseline."""
    from unifashion_core.evaluation.bench_queries import bench_queries

    parsed = [shape for shape in (shapes or "").split(",") if shape.strip()] if shapes is not None else None
    bench = _cached(lambda **kw: bench_queries(**kw, split=split, shapes=parsed, max_queries=max_queries, seed=seed))
    _run("queries", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def ablation(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, seed: int = SEED,
    recipe: str | None = typer.Option(None, "--recipe", help="Phase-2 recipe (default: the checkpoint's)."),
    exclude_reference: bool = EXCLUDE_REFERENCE, no_captions: bool = NO_CAPTIONS,
    caption_weight: float = CAPTION_WEIGHT,
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Phase 2 three times from one phase-1 --checkpoint (Base, +LLM, +LLM+diffusion), compared by cir."""
    from unifashion_core.checkpoint import checkpoint_dir
    from unifashion_core.config import load_recipe
    from unifashion_core.evaluation.ablation import run_ablation

    def bench(checkpoint: Path, **kw: Any) -> Any:
        resolved = load_recipe(recipe or checkpoint_dir(checkpoint) / "config.yaml")
        return run_ablation(resolved, checkpoint, **kw, split=split, seed=seed, exclude_reference=exclude_reference,
                            use_captions=not no_captions, caption_weight=caption_weight)

    _run("ablation", out_dir, json_output, quiet, _cached(bench), checkpoint=checkpoint, data=data)


@app.command()
@handle_errors
def speed(
    checkpoint: Path | None = CHECKPOINT, data: Path | None = DATA, split: str = SPLIT, seed: int = SEED,
    max_items: int = MAX_ITEMS, out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Embedding throughput, query latency, and 20-step DPM-Solver++ against 50-step PLMS."""
    from unifashion_core.evaluation.bench_speed import bench_speed

    bench = lambda **kw: bench_speed(**kw, split=split, seed=seed, max_items=max_items)  # noqa: E731
    _run("speed", out_dir, json_output, quiet, bench, checkpoint=checkpoint, data=data)


@app.command(name="paper-speed")
@handle_errors
def paper_speed(
    recipe: str = typer.Option("vitonhd", "--recipe", help="A paper-preset recipe (file or packaged name)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the recipe."),
    only: str = typer.Option("retrieval,caption,generate,sampling", "--only",
                             help="Which measurements, comma-separated."),
    batch_size: int = typer.Option(32, "--batch-size", help="Training-step batch (the paper's: 32)."),
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """The paper preset at its real sizes with random weights: training-step and sampling seconds (GPU)."""
    from unifashion_core.evaluation.paper_speed import bench_paper_speed

    def bench(**kw: Any) -> Any:
        return bench_paper_speed(recipe, overrides or [], only=tuple(only.split(",")), batch_size=batch_size, **kw)

    _run("paper-speed", out_dir, json_output, quiet, bench)


@app.command()
@handle_errors
def index(
    items: int = typer.Option(100_000, "--items", help="Catalogue size N."),
    queries: int = typer.Option(8, "--queries", help="Query vectors per image Q."),
    dim: int = typer.Option(256, "--dim", help="Embedding width D."),
    kind: str = typer.Option("flat,pq", "--kind", help="Index kinds to build and query, comma-separated."),
    sample: int = typer.Option(200, "--sample", help="Queries per mode (latency and recall@10 against exact)."),
    clusters: int = typer.Option(0, "--clusters", help="Cluster centres of the synthetic items (0: N / 100)."),
    threads: int = typer.Option(1, "--threads", help="Threads per single query (batches use every core)."),
    seed: int = SEED, out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Index build time, disk, peak RSS, latency and recall@10 on seeded synthetic vectors (no model)."""
    from unifashion_core.evaluation.bench_index import bench_index

    def bench(**kw: Any) -> Any:
        return bench_index(**kw, items=items, num_queries=queries, dim=dim, kinds=tuple(kind.split(",")),
                           sample=sample, seed=seed, clusters=clusters, threads=threads)

    _run("index", out_dir, json_output, quiet, bench)


@app.command()
@handle_errors
def memory(
    recipe: str = typer.Option("demo", "--recipe", help="The recipe trained (file or packaged name)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the recipe."),
    sizes: str = typer.Option("2000,20000", "--sizes", help="Dataset sizes in items, comma-separated, smallest first."),
    steps: int = typer.Option(12, "--steps", help="Optimiser steps of each stage."),
    image_size: int = typer.Option(64, "--image-size", help="Side of the demo images in pixels."),
    out_dir: Path | None = OUT, json_output: bool = JSON, quiet: bool = QUIET,
) -> None:
    """Peak memory and seconds per step of training at two data sizes (fresh processes), and their ratio."""
    from unifashion_core.evaluation.bench_memory import bench_memory

    try:
        counts = tuple(int(size) for size in sizes.split(","))
    except ValueError:
        raise typer.BadParameter(f"--sizes {sizes!r} is not a comma-separated list of item counts.") from None

    def bench(**kw: Any) -> Any:
        return bench_memory(recipe=recipe, sizes=counts, steps=steps, image_size=image_size,
                            overrides=overrides or [], **kw)

    _run("memory", out_dir, json_output, quiet, bench)
