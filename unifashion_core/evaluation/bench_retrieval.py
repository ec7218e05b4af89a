"""`unifashion bench retrieval`: Recall@1/5/10 both ways, `full` or `random100`, plus a baseline."""

from pathlib import Path
from typing import Literal

import numpy as np

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.baseline import baseline_similarity
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.fileio import write_json
from unifashion_core.losses import max_sim
from unifashion_core.metrics.retrieval import KS, paired_recalls
from unifashion_core.progress import NullProgress, Progress

Protocol = Literal["full", "random100"]


def random100_candidates(items: list[Item], seed: int, size: int = 100) -> list[list[int]]:
    """For each item: itself first, then up to 99 seeded negatives of the same category.

    When a category has fewer items, the rest are drawn from other categories (the report
    counts how often that happened).
    """
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_category.setdefault(item.category, []).append(index)
    everyone = np.arange(len(items))
    lists = []
    for index, item in enumerate(items):
        same = [j for j in by_category[item.category] if j != index]
        chosen = list(rng.choice(same, size=min(size - 1, len(same)), replace=False)) if same else []
        if len(chosen) < size - 1:
            others = np.setdiff1d(everyone, [index, *chosen])
            extra = rng.choice(others, size=min(size - 1 - len(chosen), len(others)), replace=False)
            chosen += list(extra)
        lists.append([index, *(int(j) for j in chosen)])
    return lists


def bench_retrieval(
    checkpoint: str | Path, data: str | Path, out: str | Path, split: str = "test",
    protocol: Protocol = "full", seed: int = 0, cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Evaluate cross-modal retrieval on ``split`` and write report.json/report.md to ``out``.

    Args:
        checkpoint: the model (checkpoint or run directory).
        data: the prepared dataset.
        out: report directory.
        split: evaluation split.
        protocol: ``full`` (the whole split) or ``random100`` (each query against its positive and
            99 seeded same-category negatives; the lists are written to ``candidates.json``).
        seed: seed of the random100 draw.
        cache_dir: where frozen vision features are cached (None: not on disk).
        progress: progress events.
    """
    if protocol not in ("full", "random100"):
        raise UserError(f"unknown protocol {protocol!r}; choose full or random100.")
    loaded = load_checkpoint(checkpoint)
    model, field = loaded.model, loaded.recipe.data.caption_field
    dataset = load_dataset(data)
    cache = feature_cache_dir(cache_dir, dataset)
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split), cache, progress)
    train_items, train_tokens, _ = image_tokens(model.vision, dataset, dataset.split("train"), cache, progress)
    if len(items) < 2:
        raise UserError(f"split {split!r} of {dataset.root} has fewer than 2 usable items.")
    texts = [item.text(field) for item in items]
    sim_model = max_sim(model.embed_images(tokens), model.embed_texts(texts)).numpy()
    sim_base = baseline_similarity(train_tokens, [item.text(field) for item in train_items], tokens, texts)
    candidates = random100_candidates(items, seed) if protocol == "random100" else None
    out = Path(out)
    if candidates is not None:
        write_json(out / "candidates.json", {"seed": seed, "ids": [[items[j].id for j in c] for c in candidates]})
    model_metrics, base_metrics = paired_recalls(sim_model, texts, candidates), paired_recalls(sim_base, texts,
                                                                                             candidates)
    report = {
        **provenance("retrieval", protocol, split, seed, dataset, loaded, len(items)),
        "text_field": field,
        "skipped_images": skipped.counts(),
        "positives": "a query's own pair, plus any item with an identical text",
        "model": model_metrics,
        "baseline": {"name": "frozen vision mean-pool + MiniLM mean-pool, ridge map fitted on train", **base_metrics},
        "model_minus_baseline_mean_R": model_metrics["mean_R"] - base_metrics["mean_R"],
    }
    rows = [{"system": "unifashion", **model_metrics}, {"system": "ridge baseline", **base_metrics}]
    columns = ["system", *[f"i2t_R@{k}" for k in KS], *[f"t2i_R@{k}" for k in KS], "mean_R"]
    markdown = (f"# Cross-modal retrieval ({protocol})\n\n{provenance_lines(report)}\n"
                f"{markdown_table(rows, columns)}\n"
                f"Model minus baseline (mean R): {report['model_minus_baseline_mean_R']:+.4f}\n")
    return write_report("retrieval", out, report, markdown)
