"""`unifashion bench cir`: composed image retrieval, Recall@10/50 per category (docs/design.md section 7).

Protocol (Fashion-IQ style): each labelled triplet of the split is one query, the fused
(reference image, modification ``text``) embedding ranks the gallery, and R@K is the fraction
of queries whose target is among the top K. Per-category recalls are averaged over categories.

- Gallery: every item of the split (``split``), or for Fashion-IQ the items of the query's
  category (``category``: an image listed under two categories is two items, so a shared
  gallery would count the same picture as a wrong answer). ``auto`` picks by dataset.
- The reference image stays in the gallery (standard) unless ``exclude_reference``.
- No dropped queries: every labelled triplet of the split is asked. One whose reference or target
  image is missing or unreadable is unanswerable and counts as a miss (rank ``inf``); the report
  states the number asked, the number answerable and why the others are not, and a split with no
  readable image at all still reports (every query a miss). Triplets without a target (Fashion-IQ
  test) cannot be scored and are counted as unlabelled; ``dataset_triplets`` accounts for the
  triplets of every split (with the prepare report's per-split accounting where it has one).
- Ranks are pessimistic (``metrics.retrieval.positive_ranks``): a tie with another item counts
  against the query and a non-finite target score is a miss.
- Scores without and with gallery captions: ``max_q <e, z_q> [+ w <e, c>]`` (paper Table 4), the
  trained fused score; and the zero-shot late fusion that needs no phase 2
  (``metrics.cir.zero_shot_scores``) next to its two halves, image-only and text-only.
"""

import math
from pathlib import Path
from typing import Any, Literal

import torch

from unifashion_core.checkpoint import checkpoint_dir, load_checkpoint, read_meta
from unifashion_core.data.manifest import SPLITS, Dataset, Item, Triplet, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance_lines, write_report
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.fileio import write_jsonl
from unifashion_core.metrics import cir
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.progress import NullProgress, Progress

Gallery = Literal["auto", "split", "category"]
ZERO_SHOT_SETTINGS = ("zero_shot", "image_only", "text_only")


def evaluate_cir(
    model: UniFashion,
    items: list[Item],
    tokens: torch.Tensor,
    triplets: list[Triplet],
    captions: torch.Tensor | None = None,
    caption_weight: float = 1.0,
    exclude_reference: bool = False,
    by_category: bool = False,
    image_weight: float | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rank the gallery for every labelled triplet, with and (when given) without captions.

    Args:
        model: the query model.
        items: the gallery items, rows of ``tokens``.
        tokens: ``(N, T, C)`` gallery vision tokens (also the references' tokens).
        triplets: labelled triplets; one whose reference or target is not in ``items`` is a miss.
        captions: ``(N, D)`` gallery caption embeddings; adds the ``with_captions`` setting.
        caption_weight: ``w`` of the caption term.
        exclude_reference: remove each query's reference image from its gallery.
        by_category: restrict each query's gallery to its category.
        image_weight: also rank by the zero-shot score with this image weight, and by its image-only
            and text-only halves (``ZERO_SHOT_SETTINGS``); None: the fused settings only.

    Returns:
        ``ranks`` per setting ``(M,)`` (``inf`` for a miss) and the top gallery rows per
        setting ``(M, TOP_LISTED)`` (-1 where a query has no result, e.g. a missing reference).
    """
    rows = {item.id: row for row, item in enumerate(items)}
    ok = [i for i, t in enumerate(triplets) if cir.triplet_status(t, rows) == "ok"]
    settings = ["without_captions", *(["with_captions"] if captions is not None else []),
                *(ZERO_SHOT_SETTINGS if image_weight is not None else [])]
    ranks = {name: torch.full((len(triplets),), math.inf) for name in settings}
    tops = {name: torch.full((len(triplets), min(cir.TOP_LISTED, len(items))), -1, dtype=torch.long)
            for name in settings}
    if not ok:  # nothing answerable (e.g. no readable image): every query is a miss
        return ranks, tops
    scored = [triplets[i] for i in ok]
    references = torch.tensor([rows[t.reference] for t in scored], dtype=torch.long)
    targets = torch.tensor([rows[t.target] for t in scored], dtype=torch.long)
    fused = model.embed_composed(tokens[references], [t.text for t in scored])  # (m, D)
    gallery = model.embed_images(tokens)  # (N, Q, D)
    allowed = cir.allowed_items(scored, items, rows, exclude_reference, by_category)  # (m, N)
    for name in settings[:2 if captions is not None else 1]:
        caption_embeds = captions if name == "with_captions" else None
        ranks[name][ok], tops[name][ok] = cir.rank_targets(fused, gallery, targets, allowed, caption_embeds,
                                                           caption_weight)
    if image_weight is not None:
        texts = model.embed_texts([t.text for t in scored])  # (m, D)
        for name, weight in zip(ZERO_SHOT_SETTINGS, (image_weight, 1.0, 0.0), strict=True):
            scores = cir.zero_shot_scores(gallery[references], texts, gallery, weight)  # (m, N)
            ranks[name][ok], tops[name][ok] = cir.rank_scored(scores, targets, allowed)
    return ranks, tops


def bench_cir(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    seed: int = 0,
    exclude_reference: bool = False,
    use_captions: bool = True,
    caption_weight: float = 1.0,
    gallery: Gallery = "auto",
    zero_shot: bool = True,
    image_weight: float | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Evaluate composed retrieval on ``split``; write report.json, report.md and queries.jsonl.

    Args:
        checkpoint: the model (a phase-2 checkpoint or run directory, or any other for comparison).
        data: the prepared dataset with triplets.
        out: report directory.
        split: evaluation split (Fashion-IQ: ``val``; its test split has no targets).
        seed: recorded in the report (the protocol itself draws nothing at random).
        exclude_reference: remove each query's reference image from its gallery.
        use_captions: also score with gallery captions made by the checkpoint's captioner.
        caption_weight: ``w`` of the caption term.
        gallery: ``split``, ``category`` or ``auto`` (category for Fashion-IQ).
        zero_shot: also score with the zero-shot late fusion, image-only and text-only.
        image_weight: the zero-shot score's image weight, in [0, 1] (None: the checkpoint recipe's
            ``model.zero_shot_image_weight``).
        cache_dir: where frozen vision features are cached (None: not on disk).
        progress: progress events.

    Raises:
        UserError: no labelled triplets in the split, a bad option, or captions asked of a
            checkpoint without a caption head.
    """
    # 1. check inputs
    if gallery not in ("auto", "split", "category"):
        raise UserError(f"unknown CIR gallery {gallery!r}; choose auto, split or category.")
    if not math.isfinite(caption_weight):
        raise UserError(f"--caption-weight must be a finite number, got {caption_weight}.")
    if image_weight is not None and not 0.0 <= image_weight <= 1.0:
        raise UserError(f"--image-weight must be in [0, 1], got {image_weight}.")
    checkpoint = checkpoint_dir(checkpoint)
    dataset = load_dataset(data)
    triplets = dataset.split_triplets(split)
    labelled = [t for t in triplets if t.target]
    if not labelled:
        raise UserError(f"split {split!r} of {dataset.root} has no composed-retrieval triplets with a target "
                        "(Fashion-IQ's test split has none: use --split val).")
    if use_captions and "caption" not in read_meta(checkpoint).get("heads", []):
        raise UserError(f"checkpoint {checkpoint} has no caption head to caption the gallery; pass --no-captions.")
    by_category = gallery == "category" or (gallery == "auto" and dataset.report.get("dataset") == "fashioniq")
    # 2. model, gallery tokens and captions
    loaded = load_checkpoint(checkpoint, ("caption",) if use_captions else ())
    model = loaded.model
    weight_source = "--image-weight" if image_weight is not None else "the checkpoint's model.zero_shot_image_weight"
    image_weight = model.config.zero_shot_image_weight if image_weight is None else image_weight
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split),
                                          feature_cache_dir(cache_dir, dataset), progress)
    captioning = use_captions and bool(items)
    generated = model.caption_images(tokens, progress=progress, task="caption gallery") if captioning else []
    caption_embeds = model.embed_texts(generated) if use_captions else None  # (N, D)
    # 3. rank and summarise (unanswerable queries are misses)
    ranks, tops = evaluate_cir(model, items, tokens, labelled, caption_embeds, caption_weight, exclude_reference,
                               by_category, image_weight if zero_shot else None)
    rows = {item.id: row for row, item in enumerate(items)}
    status = [cir.triplet_status(t, rows) for t in labelled]
    report = {
        "bench": "cir", "protocol": f"recall@10/50 per category; gallery={'category' if by_category else 'split'}; "
        f"reference {'excluded' if exclude_reference else 'kept'}; w={caption_weight:g}",
        "protocol_options": {"gallery": "category" if by_category else "split", "exclude_reference": exclude_reference,
                             "caption_weight": caption_weight, "use_captions": use_captions,
                             "zero_shot_image_weight": image_weight if zero_shot else None,
                             "zero_shot_image_weight_from": weight_source if zero_shot else None,
                             "caption_style": model.config.captioner.style if use_captions else None,
                             "query_text": "the triplet's evaluation text", "ties": "pessimistic",
                             "misses": "unanswerable queries (missing or unreadable images) count as misses"},
        "split": split, "seed": seed, "manifest_sha256": dataset.manifest_hash,
        "checkpoint_fingerprint": loaded.fingerprint, "checkpoint": str(checkpoint),
        "checkpoint_phase": loaded.meta.get("phase", 1), "num_queries": len(labelled),
        "num_answerable": status.count("ok"), "num_gallery": len(items),
        "unanswerable": {reason: status.count(reason) for reason in ("missing_reference", "missing_target")},
        "num_unlabelled": len(triplets) - len(labelled),
        "dataset_triplets": dataset_triplets(dataset),
        "skipped_images": skipped.counts(),
        "settings": {name: cir.summary(labelled, setting_ranks) for name, setting_ranks in ranks.items()},
        "chance": _chance(labelled, status, items, exclude_reference, by_category),
    }
    out = Path(out)
    _write_queries(out, labelled, status, items, ranks, tops)
    if use_captions:
        records = ({"id": i.id, "caption": c} for i, c in zip(items, generated, strict=True))
        write_jsonl(out / "gallery_captions.jsonl", records)
    return write_report("cir", out, report, render_markdown(report))


def dataset_triplets(dataset: Dataset) -> dict[str, dict[str, Any]]:
    """Per split: the triplets the dataset holds, with the prepare report's accounting where it has one
    (Fashion-IQ: ``num_read`` from the caption files, ``num_answerable`` and ``unanswerable`` by reason)."""
    prepared = dataset.report.get("triplets") or {}
    return {split: {"num_triplets": len(dataset.split_triplets(split)), **prepared.get(split, {})}
            for split in SPLITS}


def _chance(triplets: list[Triplet], status: list[str], items: list[Item], exclude_reference: bool,
            by_category: bool) -> dict[str, float]:
    """Expected R@K of a random ranking: ``min(1, K / gallery size)`` per query, 0 for a miss."""
    rows = {item.id: row for row, item in enumerate(items)}
    ok = [t for t, state in zip(triplets, status, strict=True) if state == "ok"]
    sizes = cir.allowed_items(ok, items, rows, exclude_reference, by_category).sum(1).float()  # (m,)
    return {f"R@{k}": float((k / sizes).clamp(max=1.0).sum()) / len(triplets) for k in cir.KS}


def _write_queries(out: Path, triplets: list[Triplet], status: list[str], items: list[Item],
                   ranks: dict[str, torch.Tensor], tops: dict[str, torch.Tensor]) -> None:
    """queries.jsonl: each query with its status, target rank and top result ids per setting."""
    records = []
    for row, (triplet, state) in enumerate(zip(triplets, status, strict=True)):
        records.append({
            "id": triplet.id, "category": triplet.category, "reference": triplet.reference,
            "target": triplet.target, "text": triplet.text, "status": state,
            "rank": {name: None if math.isinf(r[row]) else int(r[row]) for name, r in ranks.items()},
            "top": {name: [items[j].id for j in t[row].tolist() if j >= 0] for name, t in tops.items()},
        })
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "queries.jsonl", records)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: one row per (setting, category) and the category average of each setting."""
    rows = []
    for name, summary in report["settings"].items():
        rows += [{"score": name, "category": category, **values}
                 for category, values in summary["per_category"].items()]
        rows.append({"score": name, "category": "**average**", **summary["average"]})
    missing, chance = report["unanswerable"], report["chance"]
    weight = report["protocol_options"]["zero_shot_image_weight"]
    source = report["protocol_options"].get("zero_shot_image_weight_from")
    zero_shot = (f"zero_shot = {weight:g} x image->image + {1 - weight:g} x text->image (no composed training; "
                 f"weight from {source}); image_only and text_only are its halves. " if weight is not None else "")
    return (f"# Composed image retrieval ({report['split']})\n\n{provenance_lines(report)}\n"
            f"{markdown_table(rows, ['score', 'category', 'R@10', 'R@50', 'mean', 'num_queries'])}\n"
            "without_captions / with_captions = the trained fused score (phase 2 trains it); "
            f"{zero_shot}Chance: R@10 {chance['R@10']:.4f}, R@50 {chance['R@50']:.4f}.\n\n"
            f"Queries asked: {report['num_queries']}; answerable: {report['num_answerable']}. Misses from missing "
            f"or unreadable images: {missing['missing_reference']} references, {missing['missing_target']} targets; "
            f"{report['num_unlabelled']} triplets without a target.\n")
