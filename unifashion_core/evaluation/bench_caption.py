"""`unifashion bench caption`: COCO caption metrics + a same-run nearest-neighbour baseline."""

from pathlib import Path
from typing import Any

import torch

from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import markdown_table, provenance, provenance_lines, write_report
from unifashion_core.fileio import write_jsonl
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.train.checkpoint import load_checkpoint
from unifashion_core.train.features import image_tokens
from unifashion_core.train.run import cache_dir_for
from unifashion_core.train.stages import caption_targets


def references_for(items: list[Item], style: str) -> dict[str, list[str]]:
    """All references per item for a style: the style's target text plus the item's extra references."""
    targets = caption_targets(items, style)
    return {
        item.id: [target, *(r for r in item.references if r != target)]
        for item, target in zip(items, targets, strict=True)
    }


@torch.no_grad()
def _pooled_image_embeddings(model: Any, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Mean of the normalised query embeddings, renormalised: (N, D) for nearest-neighbour search."""
    chunks = [
        model.qformer.encode_image(tokens[i : i + batch_size].float()).embeds.mean(1)
        for i in range(0, len(tokens), batch_size)
    ]
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def _generate_captions(
    model: Any, tokens: torch.Tensor, style: str, batch_size: int = 32, progress: Progress = NullProgress()
) -> list[str]:
    captions = []
    progress.start("caption bench", len(tokens))
    for start in range(0, len(tokens), batch_size):
        queries = model.qformer.encode_image(tokens[start : start + batch_size].float()).query_output
        captions += model.captioner.generate(queries, style, max_new_tokens=model.recipe.model.captioner.max_new_tokens)
        progress.advance("caption bench", len(queries))
    return captions


def bench_caption(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    max_items: int = 0,
    spice: bool = False,
    style: str | None = None,
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Caption ``split`` and score it against all references; the NN baseline runs in the same call."""
    from unifashion_core.evaluation.caption_metrics import caption_scores

    model, meta = load_checkpoint(checkpoint, heads=("caption",))
    style = style or model.recipe.model.captioner.style
    dataset = load_dataset(data)
    cache = cache_dir_for(dataset)
    test_items = dataset.split(split)[: max_items or None]
    items, tokens, skipped = image_tokens(model.vision, dataset, test_items, cache, progress)
    train_items, train_tokens, _ = image_tokens(model.vision, dataset, dataset.split("train"), cache, progress)
    if not items or not train_items:
        raise UserError(f"need usable images in both the train split and split {split!r}.")
    references = references_for(items, style)
    if not any(any(r.strip() for r in refs) for refs in references.values()):
        raise UserError(f"split {split!r} has no reference captions to score against.")
    predictions = dict(
        zip([i.id for i in items], _generate_captions(model, tokens, style, progress=progress), strict=True)
    )
    nearest = (_pooled_image_embeddings(model, tokens) @ _pooled_image_embeddings(model, train_tokens).T).argmax(1)
    train_targets = caption_targets(train_items, style)
    baseline = {item.id: train_targets[j] for item, j in zip(items, nearest.tolist(), strict=True)}
    model_scores = caption_scores(predictions, references, spice=spice)
    base_scores = caption_scores(baseline, references, spice=spice)
    write_jsonl(
        Path(out) / "predictions.jsonl",
        [
            {"id": i.id, "prediction": predictions[i.id], "baseline": baseline[i.id], "references": references[i.id]}
            for i in items
        ],
    )
    protocol = f"COCO caption metrics (pycocoevalcap, PTB tokenizer), style {style}, all references per item"
    report = {
        **provenance("caption", protocol, split, model.recipe.seed, dataset, meta, checkpoint, len(items)),
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
    write_report(out, report, markdown)
    return report
