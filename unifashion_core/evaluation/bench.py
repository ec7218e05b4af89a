"""One entry point for `unifashion bench`: dispatch to the subject's benchmark."""

from pathlib import Path
from typing import Any

from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress


def run_bench(
    subject: str, checkpoint: Path, data: Path, out: Path, split: str = "test", protocol: str = "full",
    seed: int = 0, max_items: int = 0, clip: str = "", spice: bool = False, steps: int = 20,
    sampler: str = "dpm++", exclude_reference: bool = False, use_captions: bool = True, caption_weight: float = 1.0,
    recipe: Path | None = None, progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Run benchmark ``subject`` and return its report (also written to ``out``).

    ``cir`` and ``ablation`` use ``exclude_reference``, ``use_captions`` and ``caption_weight``;
    ``ablation`` trains phase 2 from the (phase-1) ``checkpoint`` with ``recipe`` (default: the
    checkpoint's own config.yaml).
    """
    if subject == "retrieval":
        from unifashion_core.evaluation.bench_retrieval import bench_retrieval

        return bench_retrieval(checkpoint, data, out, split=split, protocol=protocol, seed=seed, progress=progress)
    if subject == "caption":
        from unifashion_core.evaluation.bench_caption import bench_caption

        return bench_caption(checkpoint, data, out, split=split, max_items=max_items, spice=spice, progress=progress)
    if subject in ("fid", "kid", "clip-score"):
        from unifashion_core.evaluation.bench_generation import bench_generation

        return bench_generation(subject, checkpoint, data, out, split=split, max_items=max_items, clip=clip,
                                steps=steps, sampler=sampler, seed=seed, progress=progress)
    if subject == "speed":
        from unifashion_core.evaluation.bench_speed import bench_speed

        return bench_speed(checkpoint, data, out, split=split, seed=seed, max_items=max_items, progress=progress)
    if subject == "cir":
        from unifashion_core.evaluation.bench_cir import bench_cir

        return bench_cir(checkpoint, data, out, split=split, seed=seed, exclude_reference=exclude_reference,
                         use_captions=use_captions, caption_weight=caption_weight, progress=progress)
    if subject == "ablation":
        from unifashion_core.config import load_recipe
        from unifashion_core.evaluation.ablation import run_ablation
        from unifashion_core.train.checkpoint import checkpoint_dir

        resolved = load_recipe(recipe or checkpoint_dir(checkpoint) / "config.yaml")
        return run_ablation(resolved, checkpoint, data, out, split=split, seed=seed,
                            exclude_reference=exclude_reference, use_captions=use_captions,
                            caption_weight=caption_weight, progress=progress)
    raise UserError(f"unknown bench subject {subject!r}.")
