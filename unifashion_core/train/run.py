"""`unifashion train`: set up data, model and accelerate, then run the phase's stages in order.

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` and
``checkpoint/`` (replaced atomically at every save; see checkpoint.py).
"""

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from unifashion_core import workspace
from unifashion_core.config import QUERY_SOURCES, Recipe, dump_recipe
from unifashion_core.data.images import ImageError, image_to_array, open_image
from unifashion_core.data.manifest import Dataset, Item, SkipLog, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import check_output_dir, write_text_atomic
from unifashion_core.models.unifashion import UniFashion, build_model
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.train import stages as stage_lib
from unifashion_core.train.checkpoint import load_training_state, read_meta, save_checkpoint
from unifashion_core.train.features import image_tokens
from unifashion_core.train.loop import MetricsLog, run_stage

STAGE_HEADS = {"caption": "caption", "generate": "generate"}


def cache_dir_for(dataset: Dataset) -> Path:
    """Where frozen-feature caches for a dataset live (inside the workspace)."""
    return workspace.workspace_dir() / "cache" / dataset.manifest_hash[:16]


def run_training(
    recipe: Recipe,
    phase: int = 1,
    data: str | Path | None = None,
    init_checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Train ``recipe`` and return ``{"checkpoint": path, "metrics": {...}}``."""
    if phase == 2:
        from unifashion_core.train.phase2 import run_phase2

        return run_phase2(recipe, init_checkpoint, data, out, resume, overwrite, progress)
    dataset = load_dataset(workspace.resolve("data", data or recipe.data.path or None))
    out = Path(out) if out else workspace.default_output(f"runs/{recipe.name}")
    meta, resume_state = prepare_run_dir(out, recipe, resume, overwrite)
    torch.manual_seed(recipe.seed)
    heads = tuple(STAGE_HEADS[s] for s in recipe.train.stages if s in STAGE_HEADS)
    model = build_model(recipe, heads)
    if meta is not None:
        state = load_file(str(out / "checkpoint" / "model.safetensors"))
        model.load_state_dict(state, strict=False)
    accelerator = build_accelerator(recipe)
    model.to(accelerator.device)
    context = _TrainingData.load(model, dataset, recipe, progress)
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
            save_checkpoint(out / "checkpoint", model, {
                **stage_meta, "phase": 1, "stages_done": finished,
                "heads": [STAGE_HEADS[s] for s in finished if s in STAGE_HEADS],
                "metrics": {**results, **{f"{name}/{k}": v for k, v in stage_meta["metrics"].items()}},
                "manifest_sha256": dataset.manifest_hash, "seed": recipe.seed,
                "skipped_images": context.skipped.counts(),
            }, training_state)

        last = run_stage(stage, accelerator, recipe.seed, recipe.train, metrics_log, save, progress, state)
        results.update({f"{name}/{k}": v for k, v in last.items()})
        done.append(name)
    workspace.remember("checkpoint", out / "checkpoint")
    workspace.remember("data", dataset.root)
    return {"checkpoint": str(out / "checkpoint"), "metrics": results,
            "skipped_images": context.skipped.counts()}


def build_accelerator(recipe: Recipe) -> Accelerator:
    """Accelerate set up from the recipe (mixed precision and a GPU only where there is one)."""
    return Accelerator(
        mixed_precision=recipe.train.mixed_precision if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=recipe.train.grad_accum_steps, cpu=not torch.cuda.is_available(),
    )


def prepare_run_dir(out: Path, recipe: Recipe, resume: bool, overwrite: bool) -> tuple[dict | None, dict | None]:
    """A fresh run directory (config.yaml written), or the (meta, training state) to resume from."""
    if not resume:
        check_output_dir(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        write_text_atomic(out / "config.yaml", dump_recipe(recipe))
        return None, None
    if not (out / "checkpoint").is_dir():
        raise UserError(f"--resume: {out} holds no checkpoint to resume from.")
    saved = (out / "config.yaml").read_text(encoding="utf-8") if (out / "config.yaml").is_file() else ""
    if saved != dump_recipe(recipe):
        raise UserError(f"--resume: the recipe differs from the one {out} was trained with "
                        f"(see {out / 'config.yaml'}).")
    meta = read_meta(out / "checkpoint")
    return meta, load_training_state(out / "checkpoint")


class _TrainingData:
    """The frozen inputs of every stage, computed once: vision tokens, texts, pixels."""

    def __init__(self, model: UniFashion, recipe: Recipe, dataset: Dataset, items: dict[str, list[Item]],
                 tokens: dict[str, torch.Tensor], skipped: SkipLog) -> None:
        self.model, self.recipe, self.dataset = model, recipe, dataset
        self.items, self.tokens, self.skipped = items, tokens, skipped

    @classmethod
    def load(cls, model: UniFashion, dataset: Dataset, recipe: Recipe, progress: Progress) -> "_TrainingData":
        items, tokens, skipped = {}, {}, SkipLog()
        limits = {"train": None, "val": recipe.train.eval_max_items}
        for split, limit in limits.items():
            kept, split_tokens, split_skipped = image_tokens(
                model.vision, dataset, dataset.split(split)[:limit], cache_dir_for(dataset), progress)
            items[split], tokens[split] = kept, split_tokens.to(model.qformer.query_tokens.device)
            skipped.entries += split_skipped.entries
        if len(items["train"]) < 2:
            raise UserError(f"{dataset.root} has fewer than 2 usable training images; nothing to train on.")
        return cls(model, recipe, dataset, items, tokens, skipped)

    def texts(self, split: str) -> list[str]:
        field = self.recipe.data.caption_field
        return [getattr(item, field) or item.caption for item in self.items[split]]

    def build_stage(self, name: str) -> stage_lib.Stage:
        model, recipe = self.model, self.recipe
        if name == "retrieval":
            return stage_lib.retrieval_stage(model, recipe, self.tokens["train"], self.texts("train"),
                                             self.tokens["val"], self.texts("val"))
        if name == "caption":
            style = recipe.model.captioner.style
            return stage_lib.caption_stage(
                model, recipe, self.queries("train", "image"),
                stage_lib.caption_targets(self.items["train"], style), self.queries("val", "image"),
                stage_lib.caption_targets(self.items["val"], style))
        pixels, val_pixels = self.pixels("train"), self.pixels("val")
        g = recipe.model.generator
        queries = {source: self.queries("train", source) for source in QUERY_SOURCES
                   if g.standardize_queries or getattr(g.query_mix, source) > 0}
        return stage_lib.generate_stage(
            model, recipe, queries, pixels, (self.queries("val", "text"), val_pixels) if len(val_pixels) else None)

    @torch.no_grad()
    def queries(self, split: str, source: str, batch_size: int = 64) -> torch.Tensor:
        """Frozen Q-Former query outputs (N, Q, H) of a split's images and/or captions: ``source``
        is "image" (image mode), "text" (text only) or "multimodal" (image + caption)."""
        self.model.qformer.eval()
        return self.model.source_queries(source, self.tokens[split], self.texts(split), batch_size)

    def pixels(self, split: str) -> torch.Tensor:
        """Training images at the generator's resolution, in [-1, 1]: (N, 3, R, R)."""
        return pixel_values(self.dataset, self.items[split], self.recipe.model.generator.resolution)


def pixel_values(dataset: Dataset, items: list[Item], size: int) -> torch.Tensor:
    """Images of ``items`` resized to ``size``, in [-1, 1]: (N, 3, size, size)."""
    arrays = []
    for item in items:
        try:
            arrays.append(torch.from_numpy(image_to_array(open_image(dataset.image_path(item)), size)))
        except ImageError as exc:  # readable at feature time, gone now: keep shapes aligned
            raise UserError(f"image {item.image} became unreadable during training ({exc}).") from exc
    return torch.stack(arrays) * 2 - 1 if arrays else torch.empty(0)
