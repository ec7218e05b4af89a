"""`unifashion bench caption`: COCO caption metrics + a same-run nearest-neighbour baseline."""

from pathlib import Path

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.fileio import write_jsonl
from unifashion_core.losses import pooled
from unifashion_core.progress import NullProgress, Progress


def references_for(items: list[Item], style: str) -> dict[str, list[str]]:
    """All references per item for a style: the style's target text plus the item's extra references."""
    return {
        item.id: [target, *(r for r in item.references if r != target)]
        for item, target in ((item, item.caption_target(style)) for item in items)
    }


def bench_caption(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    max_items: int = 0,
    spice: bool = False,
    style: str | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Caption ``split`` and score it against all references; the NN baseline runs in the same call.

    The baseline captions each image with the target text of its nearest training image under
    the checkpoint's own mean-pooled image embeddings.
    """
    from unifashion_core.metrics.caption import caption_scores_of

    loaded = load_checkpoint(checkpoint, heads=("caption",))
    model = loaded.model
    style = style or model.config.captioner.style
    dataset = load_dataset(data)
    cache = feature_cache_dir(cache_dir, dataset)
    test_items = dataset.split(split)[: max_items or None]
    items, tokens, skipped = image_tokens(model.vision, dataset, test_items, cache, progress)
    train_items, train_tokens, _ = image_tokens(model.vision, dataset, dataset.split("train"), cache, progress)
    if not items or not train_items:
        raise UserError(f"need usable images in both the train split and split {split!r}.")
    references = references_for(items, style)
    if not any(any(r.strip() for r in refs) for refs in references.values()):
        raise UserError(f"split {split!r} has no reference captions to score against.")
    captions = model.caption_images(tokens, style, progress=progress, task="caption bench")
    predictions = dict(zip([i.id for i in items], captions, strict=True))
    nearest = (pooled(model.embed_images(tokens)) @ pooled(model.embed_images(train_tokens)).T).argmax(1)
    baseline = {item.id: train_items[j].caption_target(style) for item, j in zip(items, nearest.tolist(), strict=True)}
    scores = caption_scores_of({"model": predictions, "baseline": baseline}, references, spice=spice)
    model_scores, base_scores = scores["model"], scores["baseline"]
    write_jsonl(
        Path(out) / "predictions.jsonl",
        [
            {"id": i.id, "prediction": predictions[i.id], "baseline": baseline[i.id], "references": references[i.id]}
            for i in items
        ],
    )
    protocol = f"COCO caption metrics (pycocoevalcap, PTB tokenizer), style {style}, all references per item"
    report = {
        **provenance("caption", protocol, split, loaded.recipe.seed, dataset, loaded, len(items)),
        "skipped_images": skipped.counts(),
        "model": model_scores,
        "baseline": {"name": "caption of the nearest training image (phase-1 embeddings)", **base_scores},
        "beats_baseline_on_cider": model_scores["CIDEr"] > base_scores["CIDEr"],
    }
    columns = ["system", *model_scores.keys()]
    rows = [{"system": "unifashion", **model_scores}, {"system": "nearest-neighbour", **base_scores}]
    markdown = (
        f"# Captioning\n\n{provenance_lines(report)}- style: `{style}`\n\n{markdown_table(rows, columns)}\n"
        "Scores as pycocoevalcap returns them (fractions; the paper reports x100).\n"
    )
    return write_report("caption", out, report, markdown)
