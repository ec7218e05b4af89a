"""One entry point for `unifashion bench`: dispatch to the subject's benchmark."""

from pathlib import Path
from typing import Any

from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress


def run_bench(
    subject: str, checkpoint: Path, data: Path, out: Path, split: str = "test", protocol: str = "full",
    seed: int = 0, max_items: int = 0, clip: str = "", spice: bool = False, steps: int = 20,
    sampler: str = "dpm++", progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Run benchmark ``subject`` and return its report (also written to ``out``)."""
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
    raise UserError(f"`unifashion bench {subject}` is not built yet (composed retrieval: issue #6).")
