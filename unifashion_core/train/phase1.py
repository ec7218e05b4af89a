"""Phase 1 (`unifashion train RECIPE --phase 1`): set up data, model and accelerate, then run the
recipe's stages in order: retrieval (1a), caption and generate (1b).

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl``, ``curves.png``
and ``checkpoint/`` (replaced atomically at every save; see ``unifashion_core.checkpoint``).
Training data streams from disk a batch at a time: vision tokens from the feature cache; phase
1b's frozen Q-Former query outputs and the generate stage's images (decoded and resized once, kept
as uint8) from shards in ``RUN/.frozen/``, written when a stage starts and removed when the
run ends.
"""

import shutil
from pathlib import Path
from typing import Any

import torch

from unifashion_core.checkpoint import read_weights, save_checkpoint
from unifashion_core.config import QUERY_SOURCES, Recipe
from unifashion_core.data.images import pixel_values, pixel_values_of, rgb_images
from unifashion_core.data.manifest import Dataset, Item, SkipLog, load_dataset
from unifashion_core.data.tryon import has_tryon, load_tryon, stack_tryon
from unifashion_core.distributed import barrier
from unifashion_core.errors import UserError
from unifashion_core.features import cached_tokens, feature_cache_dir
from unifashion_core.models.unifashion import EMBED_BATCH, UniFashion, build_model
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.shards import Rows
from unifashion_core.train import stages as stage_lib
from unifashion_core.train.data import Field, compute_rows, rows_per_piece
from unifashion_core.train.loop import run_stage
from unifashion_core.train.runlog import RunLog
from unifashion_core.train.setup import TrainResult, build_accelerator, prepare_run_dir, start_run_dir

STAGE_HEADS = {"caption": "caption", "generate": "generate"}
FROZEN_DIR = ".frozen"


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

    Runs in one process or in each process of ``accelerate launch`` (data parallel).

    Args:
        recipe: the resolved recipe (``train.stages`` lists the stages that run).
        data: the prepared dataset.
        out: the run directory (``config.yaml``, ``metrics.jsonl``, ``curves.png``, ``checkpoint/``).
        resume: continue the run in ``out`` exactly where its last checkpoint stopped.
        overwrite: replace a non-empty ``out``.
        cache_dir: where frozen vision features are cached (None: kept in memory for this run).
        progress: progress events.
    """
    dataset = load_dataset(data)
    out = Path(out)
    accelerator = build_accelerator(recipe, out)
    meta, resume_state = prepare_run_dir(out, recipe, resume, overwrite, accelerator, progress)
    torch.manual_seed(recipe.seed)
    heads = tuple(STAGE_HEADS[s] for s in recipe.train.stages if s in STAGE_HEADS)
    model = build_model(recipe.model, recipe.data.max_text_length, heads)
    if meta is not None:
        model.load_state_dict(read_weights(out / "checkpoint"), strict=False)
    model.to(accelerator.device)
    if recipe.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    context = _TrainingData.load(model, dataset, recipe, feature_cache_dir(cache_dir, dataset), out / FROZEN_DIR,
                                 progress)
    if meta is None:
        start_run_dir(out, recipe, accelerator)  # only now: a run that could not be set up leaves nothing behind
    done = list(meta.get("stages_done", [])) if meta else []
    log = RunLog(out, accelerator, recipe)
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
                "mixed_precision": accelerator.mixed_precision,
            }, training_state)

        last = run_stage(stage, accelerator, recipe.seed, recipe.train, log, save, progress, state)
        results.update({f"{name}/{k}": v for k, v in last.items()})
        done.append(name)
    context.close(accelerator.is_main_process)
    log.close()
    return TrainResult(out / "checkpoint", 1, results, context.skipped.counts())


class _TrainingData:
    """The frozen inputs of every stage, computed once: vision tokens (feature cache), texts,
    frozen query outputs and resized images (on disk under the run directory)."""

    def __init__(self, model: UniFashion, recipe: Recipe, dataset: Dataset, items: dict[str, list[Item]],
                 tokens: dict[str, Rows], skipped: SkipLog, scratch: Path, flipped: Rows | None = None) -> None:
        self.model, self.recipe, self.dataset = model, recipe, dataset
        self.items, self.tokens, self.skipped = items, tokens, skipped
        self.flipped = flipped  # the training images mirrored (``data.image_flip``), row for row
        self.scratch = scratch
        self._train_queries: dict[str, Rows] = {}

    @classmethod
    def load(cls, model: UniFashion, dataset: Dataset, recipe: Recipe, cache_dir: Path | None, scratch: Path,
             progress: Progress) -> "_TrainingData":
        items, tokens, skipped = {}, {}, SkipLog()
        limits = {"train": None, "val": recipe.train.eval_max_items}
        for split, limit in limits.items():
            kept, split_tokens, split_skipped = cached_tokens(  # the trunk's maps when the top trains
                model.vision, dataset, dataset.split(split)[:limit], cache_dir, progress,
                num_workers=recipe.train.num_workers, num_top=recipe.model.vision.trainable_blocks)
            items[split], tokens[split] = kept, split_tokens
            skipped.entries += split_skipped.entries
        if len(items["train"]) < 2:
            raise UserError(f"{dataset.root} has fewer than 2 usable training images; nothing to train on.")
        flipped = None
        if recipe.data.image_flip > 0 and "retrieval" in recipe.train.stages:
            mirrored, flipped, _ = cached_tokens(model.vision, dataset, items["train"], cache_dir, progress,
                                                 num_workers=recipe.train.num_workers,
                                                 num_top=recipe.model.vision.trainable_blocks, flipped=True)
            if len(mirrored) != len(items["train"]):  # an image that became unreadable in between
                raise UserError(f"{len(items['train']) - len(mirrored)} training images of {dataset.root} could "
                                "be read once but not a second time (for data.image_flip); check the files.")
        return cls(model, recipe, dataset, items, tokens, skipped, scratch, flipped)

    def texts(self, split: str) -> list[str]:
        return [item.text(self.recipe.data.caption_field) for item in self.items[split]]

    def build_stage(self, name: str) -> stage_lib.Stage:
        model, recipe = self.model, self.recipe
        if name == "retrieval":
            return stage_lib.retrieval_stage(model, recipe, self.tokens["train"], self.items["train"],
                                             self.tokens["val"], self.texts("val"), self.flipped)
        if name == "caption":
            style = recipe.model.captioner.style
            return stage_lib.caption_stage(
                model, recipe, self.train_queries("image"),
                [item.caption_target(style) for item in self.items["train"]], self.val_queries("image"),
                [item.caption_target(style) for item in self.items["val"]])
        g = recipe.model.generator
        needed = {source: g.standardize_queries or getattr(g.query_mix, source) > 0 for source in QUERY_SOURCES}
        tryon_needed = {source: getattr(g.tryon.query_mix, source) > 0 for source in QUERY_SOURCES}
        queries = {source: self.train_queries(source) for source in QUERY_SOURCES
                   if needed[source] or (g.tryon.fraction > 0 and tryon_needed[source])}
        tryon = self.tryon_data({s: q for s, q in queries.items() if tryon_needed[s]}) if g.tryon.fraction > 0 else None
        val_pixels = self.val_pixels()
        return stage_lib.generate_stage(
            model, recipe, {s: q for s, q in queries.items() if needed[s]}, self.train_pixels(),
            len(self.items["train"]), (self.val_queries("text"), val_pixels) if len(val_pixels) else None, tryon)

    def tryon_data(self, queries: dict[str, Rows]) -> stage_lib.TryOnData | None:
        """The training items with person + mask extras as try-on examples (None when there are
        none), their inputs loaded per batch; ``queries``: (N, Q, H) rows per source, all items
        (those of the try-on items are read into memory)."""
        rows = [row for row, item in enumerate(self.items["train"]) if has_tryon(item)]
        if not rows:
            return None
        items, size = [self.items["train"][row] for row in rows], self.recipe.model.generator.tryon_resolution
        return stage_lib.TryOnData({source: q[rows] for source, q in queries.items()},
                                   lambda positions: stack_tryon([load_tryon(self.dataset, items[p], size)
                                                                  for p in positions]))

    def train_queries(self, source: str) -> Rows:
        """Frozen Q-Former query outputs (N, Q, H) of the training items (``source`` as in
        :meth:`val_queries`), computed once into shards under the run directory."""
        if source not in self._train_queries:
            qformer = self.model.qformer
            piece = rows_per_piece(qformer.num_query_tokens * qformer.hidden_size * 4, EMBED_BATCH)  # float32 rows
            tokens, texts = self.tokens["train"], self.texts("train")
            self._train_queries[source] = compute_rows(
                self.scratch / source, len(texts), piece,
                lambda rows: self.model.source_queries(
                    source, self.model.vision_top(tokens.select(range(rows.start, rows.stop))), texts[rows]))
        return self._train_queries[source]

    def val_queries(self, source: str) -> torch.Tensor:
        """Frozen Q-Former query outputs (N, Q, H) of the validation items: ``source`` is "image"
        (image mode), "text" (text only) or "multimodal" (image + caption)."""
        return self.model.source_queries(source, self.model.vision_top(self.tokens["val"]), self.texts("val"))

    def train_pixels(self) -> Field:
        """Training item ``i``'s image at the generator's resolution, in [-1, 1]: (3, R, R).

        The images are decoded and resized once, into uint8 shards under the run directory (a
        generate stage reads each image many times), and turned into pixels when read.
        """
        paths = [self.dataset.image_path(item) for item in self.items["train"]]
        size = self.recipe.model.generator.resolution
        rows = compute_rows(self.scratch / "images", len(paths), rows_per_piece(3 * size * size, 1),
                            lambda rows: torch.from_numpy(rgb_images(paths[rows], size)))
        return lambda index: pixel_values_of(rows[index].numpy())

    def val_pixels(self) -> torch.Tensor:
        """The validation images the generate stage's evaluation uses (the first 64, or as many as
        ``train.eval_fid_items``), (n, 3, R, R) in [-1, 1]."""
        count = min(len(self.items["val"]), max(64, self.recipe.train.eval_fid_items))
        paths = [self.dataset.image_path(item) for item in self.items["val"][:count]]
        return pixel_values(paths, self.recipe.model.generator.resolution)

    def close(self, main: bool) -> None:
        """Remove the frozen query outputs (every process is done with them)."""
        barrier()
        if main:
            shutil.rmtree(self.scratch, ignore_errors=True)
