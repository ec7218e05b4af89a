"""`unifashion bench cir`: composed image retrieval, Recall@10/50 per category (DESIGN.md 7).

Protocol (Fashion-IQ style): each labelled triplet of the split is one query, the fused
(reference image, modification ``text``) embedding ranks the gallery, and R@K is the fraction
of queries whose target is among the top K. Per-category recalls are averaged over categories.

- Gallery: every item of the split (``split``), or for Fashion-IQ the items of the query's
  category (``category``: an image listed under two categories is two items, so a shared
  gallery would count the same picture as a wrong answer). ``auto`` picks by dataset.
- The reference image stays in the gallery (standard) unless ``exclude_reference``.
- No dropped queries: a triplet whose reference or target image is missing or unreadable counts
  as a miss and is listed in the report. Triplets without a target (Fashion-IQ test) cannot be
  scored and are counted as unlabelled.
- Scores without and with gallery captions: ``max_q <e, z_q> [+ w <e, c>]`` (DESIGN.md 5).
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.data.manifest import Item, Triplet, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import markdown_table, provenance_lines, write_report
from unifashion_core.fileio import write_jsonl
from unifashion_core.losses import max_sim
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.captions import caption_gallery
from unifashion_core.retrieval.embed import embed_composed, embed_image_tokens
from unifashion_core.train.checkpoint import checkpoint_dir, load_checkpoint, read_meta
from unifashion_core.train.features import image_tokens
from unifashion_core.train.run import cache_dir_for

KS = (10, 50)
GALLERIES = ("auto", "split", "category")
SETTINGS = ("without_captions", "with_captions")
TOP_LISTED = 10  # result ids written per query to queries.jsonl


def triplet_status(triplet: Triplet, rows: dict[str, int]) -> str:
    """``ok``, or why the triplet cannot be ranked: no_target, missing_reference, missing_target."""
    if not triplet.target:
        return "no_target"
    if triplet.reference not in rows:
        return "missing_reference"
    return "ok" if triplet.target in rows else "missing_target"


@torch.no_grad()
def gallery_embeddings(model: UniFashion, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Vision tokens (N, T, C) -> normalised image query embeddings (N, Q, D) float32."""
    chunks = [embed_image_tokens(model, tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
    return torch.from_numpy(np.concatenate(chunks))


@torch.no_grad()
def fused_embeddings(model: UniFashion, tokens: torch.Tensor, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Reference tokens (M, T, C) + texts -> fused e_cls embeddings (M, D) float32."""
    chunks = [embed_composed(model, tokens[i : i + batch_size], texts[i : i + batch_size])
              for i in range(0, len(texts), batch_size)]
    return torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, model.qformer.embed_dim)


def composed_scores(
    fused: torch.Tensor, gallery: torch.Tensor, captions: torch.Tensor | None = None, caption_weight: float = 1.0
) -> torch.Tensor:
    """The composed score of every query against every gallery item (the exact "flat" index score).

    Args:
        fused: ``(M, D)`` fused embeddings.
        gallery: ``(N, Q, D)`` gallery image query embeddings.
        captions: ``(N, D)`` gallery caption embeddings, or None for the image term alone.
        caption_weight: ``w`` of the caption term.

    Returns:
        ``(M, N)`` scores ``max_q <e, z_q> + w <e, c>``.
    """
    scores = max_sim(gallery, fused).T  # (M, N)
    if captions is None:
        return scores
    return scores + caption_weight * fused @ captions.T  # (M, N)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's target: how many gallery items score strictly higher.

    Args:
        scores: ``(M, N)`` scores; excluded items hold ``-inf``.
        targets: ``(M,)`` target columns.

    Returns:
        ``(M,)`` float ranks (``inf`` when the target itself is excluded).
    """
    target_scores = scores.gather(1, targets[:, None])  # (M, 1)
    ranks = (scores > target_scores).sum(dim=1).float()  # (M,)
    return torch.where(torch.isinf(target_scores[:, 0]), torch.full_like(ranks, math.inf), ranks)


def recalls(ranks: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``R@k`` for each k: the fraction of ranks below k (a miss has rank ``inf``)."""
    return {f"R@{k}": float((ranks < k).float().mean()) if len(ranks) else 0.0 for k in ks}


def _allowed(triplets: list[Triplet], items: list[Item], rows: dict[str, int], exclude_reference: bool,
             by_category: bool) -> torch.Tensor:
    """``(M, N)`` bool: which gallery items each query may retrieve."""
    allowed = torch.ones(len(triplets), len(items), dtype=torch.bool)
    if by_category:
        categories = np.array([item.category for item in items])
        for row, triplet in enumerate(triplets):
            allowed[row] = torch.from_numpy(categories == triplet.category)
    if exclude_reference:
        references = torch.tensor([rows[t.reference] for t in triplets], dtype=torch.long)
        allowed[torch.arange(len(triplets)), references] = False
    return allowed


def _summary(triplets: list[Triplet], ranks: torch.Tensor) -> dict[str, Any]:
    """Per-category recalls and their average over categories."""
    per_category = {}
    for category in sorted({t.category for t in triplets}):
        selected = torch.tensor([t.category == category for t in triplets])
        per_category[category or "(none)"] = {**recalls(ranks[selected]), "num_queries": int(selected.sum())}
    average = {f"R@{k}": float(np.mean([c[f"R@{k}"] for c in per_category.values()])) for k in KS}
    average["mean"] = float(np.mean(list(average.values())))
    return {"per_category": per_category, "average": average}


def evaluate_cir(
    model: UniFashion,
    items: list[Item],
    tokens: torch.Tensor,
    triplets: list[Triplet],
    captions: torch.Tensor | None = None,
    caption_weight: float = 1.0,
    exclude_reference: bool = False,
    by_category: bool = False,
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

    Returns:
        ``ranks`` per setting ``(M,)`` (``inf`` for a miss) and the top gallery rows per
        setting ``(M, TOP_LISTED)`` (-1 where a query has no result, e.g. a missing reference).
    """
    rows = {item.id: row for row, item in enumerate(items)}
    ok = [i for i, t in enumerate(triplets) if triplet_status(t, rows) == "ok"]
    scored = [triplets[i] for i in ok]
    references = torch.tensor([rows[t.reference] for t in scored], dtype=torch.long)
    targets = torch.tensor([rows[t.target] for t in scored], dtype=torch.long)
    fused = fused_embeddings(model, tokens[references], [t.text for t in scored])  # (m, D)
    gallery = gallery_embeddings(model, tokens)  # (N, Q, D)
    allowed = _allowed(scored, items, rows, exclude_reference, by_category)  # (m, N)
    settings = {"without_captions": None, **({"with_captions": captions} if captions is not None else {})}
    ranks, tops = {}, {}
    for name, caption_embeds in settings.items():
        scores = composed_scores(fused, gallery, caption_embeds, caption_weight).masked_fill(~allowed, -math.inf)
        ranks[name] = torch.full((len(triplets),), math.inf)
        ranks[name][ok] = target_ranks(scores, targets)
        top_scores, top_rows = scores.topk(min(TOP_LISTED, len(items)), dim=1)  # (m, k)
        tops[name] = torch.full((len(triplets), top_rows.shape[1]), -1, dtype=torch.long)
        tops[name][ok] = top_rows.masked_fill(torch.isinf(top_scores), -1)
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
    gallery: str = "auto",
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
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
        progress: progress events.

    Raises:
        UserError: no labelled triplets in the split, a bad option, or captions asked of a
            checkpoint without a caption head.
    """
    # 1. check inputs
    if gallery not in GALLERIES:
        raise UserError(f"unknown CIR gallery {gallery!r}; choose one of {', '.join(GALLERIES)}.")
    if not math.isfinite(caption_weight):
        raise UserError(f"--caption-weight must be a finite number, got {caption_weight}.")
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
    model, meta = load_checkpoint(checkpoint, ("caption",) if use_captions else ())
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split), cache_dir_for(dataset), progress)
    if not items:
        raise UserError(f"split {split!r} of {dataset.root} has no readable images.")
    generated, caption_embeds = caption_gallery(model, tokens, progress=progress) if use_captions else ([], None)
    # 3. rank and summarise
    ranks, tops = evaluate_cir(model, items, tokens, labelled,
                               None if caption_embeds is None else torch.from_numpy(caption_embeds),
                               caption_weight, exclude_reference, by_category)
    rows = {item.id: row for row, item in enumerate(items)}
    status = [triplet_status(t, rows) for t in labelled]
    report = {
        "bench": "cir", "protocol": f"recall@10/50 per category; gallery={'category' if by_category else 'split'}; "
        f"reference {'excluded' if exclude_reference else 'kept'}; w={caption_weight:g}",
        "protocol_options": {"gallery": "category" if by_category else "split", "exclude_reference": exclude_reference,
                             "caption_weight": caption_weight, "use_captions": use_captions,
                             "caption_style": model.recipe.model.captioner.style if use_captions else None,
                             "query_text": "the triplet's evaluation text", "misses": "missing images count as misses"},
        "split": split, "seed": seed, "manifest_sha256": dataset.manifest_hash,
        "checkpoint_fingerprint": meta["fingerprint"], "checkpoint": str(checkpoint),
        "checkpoint_phase": meta.get("phase", 1), "num_queries": len(labelled), "num_gallery": len(items),
        "num_unlabelled": len(triplets) - len(labelled),
        "missing": {reason: [t.id for t, s in zip(labelled, status, strict=True) if s == reason]
                    for reason in ("missing_reference", "missing_target")},
        "skipped_images": skipped.counts(),
        "settings": {name: _summary(labelled, setting_ranks) for name, setting_ranks in ranks.items()},
    }
    out = Path(out)
    _write_queries(out, labelled, status, items, ranks, tops)
    if use_captions:
        records = ({"id": i.id, "caption": c} for i, c in zip(items, generated, strict=True))
        write_jsonl(out / "gallery_captions.jsonl", records)
    write_report(out, report, render_markdown(report))
    return report


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
        rows += [{"captions": name, "category": category, **values}
                 for category, values in summary["per_category"].items()]
        rows.append({"captions": name, "category": "**average**", **summary["average"]})
    missing = report["missing"]
    return (f"# Composed image retrieval ({report['split']})\n\n{provenance_lines(report)}\n"
            f"{markdown_table(rows, ['captions', 'category', 'R@10', 'R@50', 'mean', 'num_queries'])}\n"
            f"Misses from missing images: {len(missing['missing_reference'])} references, "
            f"{len(missing['missing_target'])} targets; {report['num_unlabelled']} triplets without a target.\n")



# --- the demo's composed-retrieval stage ------------------------------------------------------
