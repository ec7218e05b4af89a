"""`unifashion bench fid | kid | clip-score`: generate for the split's captions and compare."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.images import ImageError, image_to_array, open_image
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, provenance, provenance_lines, write_report
from unifashion_core.progress import NullProgress, Progress


@torch.no_grad()
def generate_for_prompts(
    model: Any,
    prompts: list[str],
    steps: int,
    sampler: str,
    guidance: float,
    seed: int,
    batch_size: int = 16,
    progress: Progress = NullProgress(),
) -> tuple[torch.Tensor, int]:
    """Images (N, 3, R, R) in [0, 1] for text prompts, and the number of UNet calls per image."""
    images, calls = [], 0
    progress.start(f"generate ({sampler}, {steps} steps)", len(prompts))
    for rows in batch_slices(len(prompts), batch_size):
        batch = prompts[rows]
        queries = model.generation_queries(None, batch)
        result = model.generator.sample(
            queries, num_inference_steps=steps, sampler=sampler, guidance_scale=guidance, seed=seed + rows.start,
            source="text",
        )
        images.append(result.images.clamp(0, 1).cpu())
        calls = result.num_unet_calls
        progress.advance(f"generate ({sampler}, {steps} steps)", len(batch))
    return torch.cat(images), calls


def real_images(dataset: Any, items: list[Item], size: int) -> tuple[list[Item], torch.Tensor]:
    """The split's real images at the generator's resolution, in [0, 1]."""
    kept, arrays = [], []
    for item in items:
        try:
            arrays.append(image_to_array(open_image(dataset.image_path(item)), size))
            kept.append(item)
        except ImageError:
            continue
    return kept, torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0)


def bench_generation(
    subject: str,
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    max_items: int = 0,
    clip: str = "",
    steps: int = 20,
    sampler: str = "dpm++",
    guidance: float | None = None,
    seed: int = 0,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Generate one image per item caption of ``split`` and score them (FID/KID or CLIP-S).

    On the demo data the report adds the colour accuracy (the share of images whose garment's
    mean colour is nearest the colour asked for).
    """
    from unifashion_core.metrics.generation import check_fid_count, clip_score, colour_accuracy, fid_kid

    if subject == "clip-score" and not clip:
        raise UserError("bench clip-score needs --clip pointing at a CLIP model directory or hub id.")
    loaded = load_checkpoint(checkpoint, heads=("generate",))
    model, g = loaded.model, loaded.model.config.generator
    sampling = {"sampler": sampler, "steps": steps, "guidance": g.guidance_scale if guidance is None else guidance,
                "guidance_from": "the checkpoint's recipe" if guidance is None else "the command line"}
    guidance = sampling["guidance"]
    dataset = load_dataset(data)
    items, real = real_images(dataset, dataset.split(split)[: max_items or None], g.resolution)
    if not items:
        raise UserError(f"split {split!r} has no usable images to compare with.")
    if subject in ("fid", "kid"):
        check_fid_count(len(items), f"split {split!r}" + (f" with --max-items {max_items}" if max_items else ""))
    prompts = [item.caption for item in items]
    fake, calls = generate_for_prompts(model, prompts, steps, sampler, guidance, seed, progress=progress)
    report: dict[str, Any] = {
        **provenance(
            subject,
            f"one image per {split} caption, {sampler} {steps} steps, guidance {guidance}, "
            f"{g.resolution}px, real images resized to the same size",
            split, seed, dataset, loaded, len(items),
        ),
        "sampling": sampling,
        "unet_calls_per_image": calls,
    }
    if subject in ("fid", "kid"):
        report.update(fid_kid(real, fake, kid_subset_size=min(50, len(items))))
    else:
        report["clip_score"] = clip_score(fake, prompts, clip)
    accuracy = colour_accuracy(fake, [item.attributes.get("colour") for item in items])
    if accuracy is not None:
        report["colour_accuracy"] = accuracy
    figures = {
        k: report[k]
        for k in ("fid", "kid_mean", "kid_std", "clip_score", "colour_accuracy", "extractor")
        if k in report
    }
    markdown = f"# Generation ({subject})\n\n{provenance_lines(report)}\n" + "".join(
        f"- {k}: {v}\n" for k, v in figures.items()
    )
    return write_report(subject, out, report, markdown)
