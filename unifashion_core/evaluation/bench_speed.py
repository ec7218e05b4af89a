"""`unifashion bench speed`: embedding throughput, query latency, and generation speed vs quality.

Every figure is measured in this run on this machine; the report names the device and threads.
"""

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint, read_meta
from unifashion_core.data.manifest import SkipLog, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import load_pixels
from unifashion_core.progress import NullProgress, Progress


def _embedding_throughput(model: Any, dataset: Any, items: list, batch_size: int = 32) -> float:
    """Images per second from decoded file to query embeddings (vision + Q-Former)."""
    load_pixels(dataset, items[:4], model.vision, SkipLog())  # warm-up
    started = time.perf_counter()
    count = 0
    for rows in batch_slices(len(items), batch_size):
        kept, pixels = load_pixels(dataset, items[rows], model.vision, SkipLog())
        if kept:
            model.embed_images(model.image_tokens(pixels), batch_size)
            count += len(kept)
    return count / (time.perf_counter() - started)


def _query_latency(model: Any, checkpoint: Path, data: Path, split: str, texts: list[str]) -> dict[str, float]:
    """p50/p95 milliseconds of text->image queries (encode + exact index search), one at a time."""
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.index import RetrievalIndex

    with tempfile.TemporaryDirectory() as tmp:
        build_index(checkpoint, data, Path(tmp) / "index", split=split)
        index = RetrievalIndex.load(Path(tmp) / "index")
        model.embed_texts(texts[:2])
        timings = []
        for text in texts:
            started = time.perf_counter()
            index.search_images(model.embed_texts([text]).numpy(), min(10, index.num_items))
            timings.append((time.perf_counter() - started) * 1000)
        return {
            "p50_ms": float(np.percentile(timings, 50)),
            "p95_ms": float(np.percentile(timings, 95)),
            "num_queries": len(texts),
            "gallery_size": len(index.ids),
        }


def _generation(model: Any, dataset: Any, items: list, seed: int, progress: Progress) -> list[dict[str, Any]]:
    """Seconds per image and FID for 20-step DPM-Solver++ and 50-step PLMS on the same prompts."""
    from unifashion_core.evaluation.bench_generation import generate_for_prompts, real_images
    from unifashion_core.metrics.generation import fid_kid

    kept, real = real_images(dataset, items, model.config.generator.resolution)
    prompts = [item.caption for item in kept]
    guidance = model.config.generator.guidance_scale
    rows = []
    for sampler, steps in (("dpm++", 20), ("plms", 50)):
        started = time.perf_counter()
        fake, calls = generate_for_prompts(model, prompts, steps, sampler, guidance, seed, progress=progress)
        seconds = (time.perf_counter() - started) / len(prompts)
        scores = fid_kid(real, fake, kid_subset_size=min(50, len(prompts)))
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "unet_calls": calls,
                "seconds_per_image": seconds,
                "fid": scores["fid"],
                "kid_mean": scores["kid_mean"],
                "extractor": scores["extractor"],
            }
        )
    return rows


def bench_speed(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    seed: int = 0,
    max_items: int = 0,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Measure speed figures for a checkpoint; generation only when it has a trained generator."""
    heads = ("generate",) if "generate" in read_meta(checkpoint).get("heads", []) else ()
    loaded = load_checkpoint(checkpoint, heads=heads)
    model = loaded.model
    dataset = load_dataset(data)
    items = dataset.split(split)[: max_items or None]
    if len(items) < 2:
        raise UserError(f"split {split!r} has fewer than 2 items to measure with.")
    if heads:  # the samplers are compared by FID
        from unifashion_core.metrics.generation import check_fid_count

        check_fid_count(len(items), f"split {split!r}" + (f" with --max-items {max_items}" if max_items else ""))
    report: dict[str, Any] = {
        **provenance("speed", "wall-clock on this machine, after one warm-up batch", split, seed, dataset, loaded,
                     len(items)),
        "device": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}",
        "embedding_images_per_s": _embedding_throughput(model, dataset, items),
        "query_latency": _query_latency(model, Path(checkpoint), Path(data), split, [i.caption for i in items][:50]),
    }
    markdown = (
        f"# Speed\n\n{provenance_lines(report)}- device: {report['device']}\n\n"
        f"- embedding throughput: {report['embedding_images_per_s']:.1f} images/s\n"
        f"- text->image query latency: p50 {report['query_latency']['p50_ms']:.1f} ms, "
        f"p95 {report['query_latency']['p95_ms']:.1f} ms (gallery {report['query_latency']['gallery_size']})\n"
    )
    if heads:
        rows = _generation(model, dataset, items, seed, progress)
        report["generation"] = rows
        report["dpm_vs_plms"] = {
            "fid_ratio": rows[0]["fid"] / rows[1]["fid"],
            "unet_call_ratio": rows[1]["unet_calls"] / rows[0]["unet_calls"],
            "speedup": rows[1]["seconds_per_image"] / rows[0]["seconds_per_image"],
        }
        markdown += "\n## Generation\n\n" + markdown_table(
            rows, ["sampler", "steps", "unet_calls", "seconds_per_image", "fid", "kid_mean"]
        )
        ratio = report["dpm_vs_plms"]
        markdown += (
            f"\nDPM-Solver++ FID / PLMS FID = {ratio['fid_ratio']:.3f}; "
            f"{ratio['unet_call_ratio']:.2f}x fewer UNet calls; {ratio['speedup']:.2f}x faster per image.\n"
        )
    return write_report("speed", out, report, markdown)
