"""`unifashion bench retrieval`: Recall@1/5/10 both ways, `full` and `random100`, with a baseline.

Both protocols run by default and are reported side by side, each with the ridge baseline
measured in the same run (``evaluation/baseline.py``):

- ``full``: every query against the whole split.
- ``random100``: every query against its own pair and 99 seeded negatives, drawn from the query's
  own category when it has at least 99 other items, otherwise all of them topped up from the rest
  of the split (the report gives the share of same-category negatives). The lists are written to
  ``candidates.json``; ``candidates=FILE`` re-runs the bench on exactly those lists.

Items sharing a text count as positives; ranking is pessimistic (``metrics.retrieval``).
"""

from pathlib import Path
from typing import Any, Literal

import numpy as np

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.config import VisionConfig
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.baseline import BASELINE_VISION, split_baseline_similarity
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.fileio import read_json, write_json
from unifashion_core.losses import max_sim
from unifashion_core.metrics.retrieval import KS, paired_recalls
from unifashion_core.progress import NullProgress, Progress

Protocol = Literal["full", "random100", "both"]
PROTOCOLS: dict[str, tuple[str, ...]] = {"full": ("full",), "random100": ("random100",),
                                         "both": ("full", "random100")}
CANDIDATES_FILE = "candidates.json"
LIST_SIZE = 100


def random100_candidates(items: list[Item], seed: int, size: int = LIST_SIZE) -> list[list[int]]:
    """For each item: itself first, then ``size - 1`` seeded negatives (or every other item).

    Negatives come from the item's own category when it has at least ``size - 1`` other items;
    otherwise all of them are taken and the list is topped up from the other categories.
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
            chosen += list(rng.choice(others, size=min(size - 1 - len(chosen), len(others)), replace=False))
        lists.append([index, *(int(j) for j in chosen)])
    return lists


def same_category_share(items: list[Item], candidates: list[list[int]]) -> float:
    """The share of negatives (every list entry after the first) in their query's category."""
    same = sum(items[j].category == items[c[0]].category for c in candidates for j in c[1:])
    total = sum(len(c) - 1 for c in candidates)
    return same / total if total else 0.0


def load_candidates(path: str | Path, items: list[Item]) -> list[list[int]]:
    """The candidate lists of a ``candidates.json`` as rows of ``items``, in the order of ``items``.

    Raises:
        UserError: an unreadable file, a query of ``items`` without a list, a list that does not
            start with its query, an id that is not a usable item of the split, or lists of
            different lengths.
    """
    data = read_json(Path(path))
    lists = data.get("ids") if isinstance(data, dict) else None
    if not isinstance(lists, list) or not all(isinstance(c, list) and c for c in lists):
        raise UserError(f"--candidates {path} is not a candidates.json written by bench retrieval.")
    rows = {item.id: row for row, item in enumerate(items)}
    by_query = {str(c[0]): c for c in lists}
    if missing := [item.id for item in items if item.id not in by_query]:
        raise UserError(f"--candidates {path} has no list for {len(missing)} queries of the split (e.g. "
                        f"{missing[0]!r}); it was written for other data or another split.")
    if unknown := sorted({str(j) for c in lists for j in c if str(j) not in rows}):
        raise UserError(f"--candidates {path} names {len(unknown)} ids that are not usable items of the split "
                        f"(e.g. {unknown[0]!r}).")
    if len({len(c) for c in lists}) != 1:
        raise UserError(f"--candidates {path}: every candidate list must have the same length.")
    return [[rows[str(j)] for j in by_query[item.id]] for item in items]


def bench_retrieval(
    checkpoint: str | Path, data: str | Path, out: str | Path, split: str = "test",
    protocol: Protocol = "both", seed: int = 0, candidates: str | Path | None = None,
    cache_dir: str | Path | None = None, baseline_vision: VisionConfig = BASELINE_VISION,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Evaluate cross-modal retrieval on ``split`` and write report.json/report.md to ``out``.

    Args:
        checkpoint: the model (checkpoint or run directory).
        data: the prepared dataset.
        out: report directory.
        split: evaluation split.
        protocol: ``full``, ``random100`` or ``both`` (side by side).
        seed: seed of the random100 draw.
        candidates: a ``candidates.json`` to re-run random100 on exactly its lists (instead of
            drawing them).
        cache_dir: where frozen vision features are cached (None: not on disk).
        baseline_vision: the baseline's frozen encoder (DESIGN's floor: EfficientNet-Lite0 at 224 px,
            whatever the checkpoint's image size).
        progress: progress events.

    Raises:
        UserError: an unknown protocol, ``candidates`` without random100, fewer than 2 usable items
            in the split, no training items for the baseline, or a bad candidates file.
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose full, random100 or both.")
    if candidates is not None and "random100" not in PROTOCOLS[protocol]:
        raise UserError("--candidates gives random100 lists; use it with --protocol random100 or both.")
    loaded = load_checkpoint(checkpoint)
    model, field = loaded.model, loaded.recipe.data.caption_field
    dataset = load_dataset(data)
    cache = feature_cache_dir(cache_dir, dataset)
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split), cache, progress)
    if len(items) < 2:
        raise UserError(f"split {split!r} of {dataset.root} has fewer than 2 usable items.")
    texts = [item.text(field) for item in items]
    sims = {"model": max_sim(model.embed_images(tokens), model.embed_texts(texts)).numpy(),
            "baseline": split_baseline_similarity(dataset, items, texts, field, baseline_vision, cache, progress)}
    out = Path(out)
    results = {name: _protocol_results(name, sims, texts, items, seed, candidates, out)
               for name in PROTOCOLS[protocol]}
    report = {
        **provenance("retrieval", " + ".join(results), split, seed, dataset, loaded, len(items)),
        "text_field": field,
        "skipped_images": skipped.counts(),
        "positives": "a query's own pair, plus any item with an identical text",
        "ties": "pessimistic: a tie with a non-positive counts against the query; NaN scores are misses",
        "baseline": {"name": "frozen vision mean-pool + MiniLM mean-pool, ridge map fitted on train",
                     "vision": f"{baseline_vision.name} at {baseline_vision.image_size} px (frozen)"},
        "protocols": results,
    }
    return write_report("retrieval", out, report, render_markdown(report))


def _protocol_results(name: str, sims: dict[str, np.ndarray], texts: list[str], items: list[Item], seed: int,
                      candidates: str | Path | None, out: Path) -> dict[str, Any]:
    """Model and baseline recalls under one protocol (random100 also writes its candidate lists)."""
    lists, about = None, {}
    if name == "random100":
        lists = load_candidates(candidates, items) if candidates else random100_candidates(items, seed)
        source = f"read from {candidates}" if candidates else f"drawn with seed {seed}"
        write_json(out / CANDIDATES_FILE, {"source": source, "ids": [[items[j].id for j in c] for c in lists]})
        about = {"candidates_file": CANDIDATES_FILE, "candidates_source": source, "list_size": len(lists[0]),
                 "same_category_share": same_category_share(items, lists)}
    model, baseline = (paired_recalls(sims[system], texts, lists) for system in ("model", "baseline"))
    return {**about, "model": model, "baseline": baseline,
            "model_minus_baseline_mean_R": model["mean_R"] - baseline["mean_R"]}


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: one row per (protocol, system) and the model's margin over the baseline."""
    rows, notes = [], []
    for name, result in report["protocols"].items():
        rows += [{"protocol": name, "system": "unifashion", **result["model"]},
                 {"protocol": name, "system": "ridge baseline", **result["baseline"]}]
        notes.append(f"{name}: model minus baseline (mean R) {result['model_minus_baseline_mean_R']:+.4f}")
        if name == "random100":
            notes.append(f"random100: lists of {result['list_size']} ({result['candidates_source']}), "
                         f"{result['same_category_share']:.1%} of negatives from the query's category")
    columns = ["protocol", "system", *[f"i2t_R@{k}" for k in KS], *[f"t2i_R@{k}" for k in KS], "mean_R"]
    return (f"# Cross-modal retrieval\n\n{provenance_lines(report)}- baseline vision: "
            f"{report['baseline']['vision']}\n\n{markdown_table(rows, columns)}\n"
            + "".join(f"- {note}\n" for note in notes))
