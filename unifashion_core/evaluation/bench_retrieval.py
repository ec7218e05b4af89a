"""`unifashion bench retrieval`: Recall@1/5/10 both ways, `full` or `random100`, plus a baseline."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.baseline import baseline_similarity
from unifashion_core.evaluation.reports import markdown_table, provenance, provenance_lines, write_report
from unifashion_core.evaluation.retrieval_metrics import KS, recall_at_k
from unifashion_core.fileio import write_json
from unifashion_core.losses import max_sim
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.embed import embed_image_tokens, embed_texts
from unifashion_core.train.checkpoint import load_checkpoint
from unifashion_core.train.features import image_tokens
from unifashion_core.train.run import cache_dir_for

PROTOCOLS = ("full", "random100")


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


def _recalls(sim: np.ndarray, texts: list[str], candidates: list[list[int]] | None) -> dict[str, float]:
    """R@k both ways; identical texts count as positives (they cannot be told apart)."""
    n = len(texts)
    rows_i2t, pos_i2t, rows_t2i, pos_t2i = [], [], [], []
    for query in range(n):
        columns = candidates[query] if candidates is not None else list(range(n))
        positives = {c for c, j in enumerate(columns) if texts[j] == texts[query]}
        rows_i2t.append(sim[query, columns])
        rows_t2i.append(sim[columns, query])
        pos_i2t.append(positives)
        pos_t2i.append(positives)
    i2t = recall_at_k(np.stack(rows_i2t), pos_i2t)
    t2i = recall_at_k(np.stack(rows_t2i), pos_t2i)
    result = {f"i2t_R@{k}": i2t[k] for k in KS} | {f"t2i_R@{k}": t2i[k] for k in KS}
    result["mean_R"] = float(np.mean(list(result.values())))
    return result


def bench_retrieval(
    checkpoint: str | Path, data: str | Path, out: str | Path, split: str = "test",
    protocol: str = "full", seed: int = 0, progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Evaluate cross-modal retrieval on ``split`` and write report.json/report.md to ``out``."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    model, meta = load_checkpoint(checkpoint)
    dataset = load_dataset(data)
    field = model.recipe.data.caption_field
    cache = cache_dir_for(dataset)
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split), cache, progress)
    train_items, train_tokens, _ = image_tokens(model.vision, dataset, dataset.split("train"), cache, progress)
    if len(items) < 2:
        raise UserError(f"split {split!r} of {dataset.root} has fewer than 2 usable items.")
    texts = [getattr(i, field) or i.caption for i in items]
    with torch.no_grad():
        sim_model = max_sim(torch.from_numpy(embed_image_tokens(model, tokens)),
                            torch.from_numpy(embed_texts(model, texts))).numpy()
    sim_base = baseline_similarity(train_tokens, [getattr(i, field) or i.caption for i in train_items], tokens, texts)
    candidates = random100_candidates(items, seed) if protocol == "random100" else None
    out = Path(out)
    if candidates is not None:
        write_json(out / "candidates.json", {"seed": seed, "ids": [[items[j].id for j in c] for c in candidates]})
    model_metrics, base_metrics = _recalls(sim_model, texts, candidates), _recalls(sim_base, texts, candidates)
    report = {
        **provenance("retrieval", protocol, split, seed, dataset, meta, checkpoint, len(items)),
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
    write_report(out, report, markdown)
    return report
