"""Phase 1 (`unifashion train RECIPE --phase 1`): set up data, model and accelerate, then run the
recipe's stages in order: retrieval (1a), caption and generate (1b).

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` and
``checkpoint/`` (replaced atomically at every save; see ``unifashion_core.checkpoint``).
"""

from pathlib import Path
from typing import Any

import torch

from unifashion_core.checkpoint import read_weights, save_checkpoint
from unifashion_core.config import QUERY_SOURCES, Recipe
from unifashion_core.data.images import pixel_values
from unifashion_core.data.manifest import Dataset, Item, SkipLog, load_dataset
from unifashion_core.data.tryon import has_tryon, load_tryon, stack_tryon
from unifashion_core.errors import UserError
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.models.unifashion import UniFashion, build_model
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.train import stages as stage_lib
from unifashion_core.train.loop import MetricsLog, run_stage
from unifashion_core.train.setup import TrainResult, build_accelerator, prepare_run_dir, start_run_dir

STAGE_HEADS = {"caption": "caption", "generate": "generate"}


def run_training(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> TrainResult:
    """Train phase 1 of ``recipe`` on the prepared dataset ``data`` into the run directory ``out``.

    Args:
        recipe: the resolved recipe (``train.stages`` lists the stages that run).
        data: the prepared dataset.
        out: the run directory (``config.yaml``, ``metrics.jsonl``, ``checkpoint/``).
        resume: continue the run in ``out`` exactly where its last checkpoint stopped.
        overwrite: replace a non-empty ``out``.
        cache_dir: where frozen vision features are cached (None: not cached on disk).
        progress: progress events.
    """
    dataset = load_dataset(data)
    out = Path(out)
    meta, resume_state = prepare_run_dir(out, recipe, resume, overwrite, progress)
    torch.manual_seed(recipe.seed)
    heads = tuple(STAGE_HEADS[s] for s in recipe.train.stages if s in STAGE_HEADS)
    model = build_model(recipe.model, recipe.data.max_text_length, heads)
    if meta is not None:
        model.load_state_dict(read_weights(out / "checkpoint"), strict=False)
    accelerator = build_accelerator(recipe)
    model.to(accelerator.device)
    context = _TrainingData.load(model, dataset, recipe, feature_cache_dir(cache_dir, dataset), progress)
    if meta is None:
        start_run_dir(out, recipe)  # only now: a run that could not be set up leaves nothing behind
    done = list(meta.get("stages_done", [])) if meta else []
    metrics_log = MetricsLog(out / "metrics.jsonl")
    results: dict[str, Any] = dict(meta.get("metrics", {})) if meta else {}
    for name in recipe.train.stages:
        if name in done:
            continue
        stage = context.build_stage(name)
        state = resume_state if resume_state is not None and resume_state["stage"] == name else None

        def save(stage_meta: dict[str, Any], training_state: dict[str, Any], name: str = name) -> None:
            finished = done + [name] if stage_meta["stage_done"] else done
            save_checkpoint(out / "checkpoint", model, recipe, {
                **stage_meta, "phase": 1, "stages_done": finished,
                "heads": [STAGE_HEADS[s] for s in finished if s in STAGE_HEADS],
                "metrics": {**results, **{f"{name}/{k}": v for k, v in stage_meta["metrics"].items()}},
                "manifest_sha256": dataset.manifest_hash, "data": str(dataset.root.absolute()),
                "seed": recipe.seed, "skipped_images": context.skipped.counts(),
            }, training_state)

        last = run_stage(stage, accelerator, recipe.seed, recipe.train, metrics_log, save, progress, state)
        results.update({f"{name}/{k}": v for k, v in last.items()})
        done.append(name)
    return TrainResult(out / "checkpoint", 1, results, context.skipped.counts())


class _TrainingData:
    """The frozen inputs of every stage, computed once: vision tokens, texts, pixels."""

    def __init__(self, model: UniFashion, recipe: Recipe, dataset: Dataset, items: dict[str, list[Item]],
                 tokens: dict[str, torch.Tensor], skipped: SkipLog) -> None:
        self.model, self.recipe, self.dataset = model, recipe, dataset
        self.items, self.tokens, self.skipped = items, tokens, skipped

    @classmethod
    def load(cls, model: UniFashion, dataset: Dataset, recipe: Recipe, cache_dir: Path | None,
             progress: Progress) -> "_TrainingData":
        items, tokens, skipped = {}, {}, SkipLog()
        limits = {"train": None, "val": recipe.train.eval_max_items}
        for split, limit in limits.items():
            kept, split_tokens, split_skipped = image_tokens(  # the trunk's maps when the top trains
                model.vision, dataset, dataset.split(split)[:limit], cache_dir, progress,
                num_top=recipe.model.vision.trainable_blocks)
            items[split], tokens[split] = kept, split_tokens.to(model.device)
            skipped.entries += split_skipped.entries
        if len(items["train"]) < 2:
            raise UserError(f"{dataset.root} has fewer than 2 usable training images; nothing to train on.")
        return cls(model, recipe, dataset, items, tokens, skipped)

    def texts(self, split: str) -> list[str]:
        return [item.text(self.recipe.data.caption_field) for item in self.items[split]]

    def build_stage(self, name: str) -> stage_lib.Stage:
        model, recipe = self.model, self.recipe
        if name == "retrieval":
            return stage_lib.retrieval_stage(model, recipe, self.tokens["train"], self.items["train"],
                                             self.tokens["val"], self.texts("val"))
        if name == "caption":
            style = recipe.model.captioner.style
            return stage_lib.caption_stage(
                model, recipe, self.queries("train", "image"),
                [item.caption_target(style) for item in self.items["train"]], self.queries("val", "image"),
                [item.caption_target(style) for item in self.items["val"]])
        pixels, val_pixels = self.pixels("train"), self.pixels("val")
        g = recipe.model.generator
        needed = {source: g.standardize_queries or getattr(g.query_mix, source) > 0 for source in QUERY_SOURCES}
        tryon_needed = {source: getattr(g.tryon.query_mix, source) > 0 for source in QUERY_SOURCES}
        queries = {source: self.queries("train", source) for source in QUERY_SOURCES
                   if needed[source] or (g.tryon.fraction > 0 and tryon_needed[source])}
        tryon = self.tryon_data({s: q for s, q in queries.items() if tryon_needed[s]}) if g.tryon.fraction > 0 else None
        return stage_lib.generate_stage(
            model, recipe, {s: q for s, q in queries.items() if needed[s]}, pixels,
            (self.queries("val", "text"), val_pixels) if len(val_pixels) else None, tryon)

    def tryon_data(self, queries: dict[str, torch.Tensor]) -> stage_lib.TryOnData | None:
        """The training items with person + mask extras as try-on examples (None when there are
        none), their inputs loaded per batch; ``queries``: (N, Q, H) per source, all items."""
        rows = [row for row, item in enumerate(self.items["train"]) if has_tryon(item)]
        if not rows:
            return None
        items, size = [self.items["train"][row] for row in rows], self.recipe.model.generator.tryon_resolution
        return stage_lib.TryOnData({source: q[rows] for source, q in queries.items()},
                                   lambda positions: stack_tryon([load_tryon(self.dataset, items[p], size)
                                                                  for p in positions]))

    def queries(self, split: str, source: str) -> torch.Tensor:
        """Frozen Q-Former query outputs (N, Q, H) of a split's images and/or captions: ``source``
        is "image" (image mode), "text" (text only) or "multimodal" (image + caption)."""
        return self.model.source_queries(source, self.model.vision_top(self.tokens[split]), self.texts(split))

    def pixels(self, split: str) -> torch.Tensor:
        """Training images at the generator's resolution, in [-1, 1]: (N, 3, R, R)."""
        paths = [self.dataset.image_path(item) for item in self.items[split]]
        return pixel_values(paths, self.recipe.model.generator.resolution)
