"""`unifashion bench paper-speed`: the `paper` preset at its real sizes, timed (no quality figures).

The models are built by the same ``build_model`` as training, from a paper recipe plus overrides;
by default every pretrained source is ``random`` (EVA ViT-g/14 + BLIP-2 Q-Former, Llama-7B with
LoRA r=128, the Stable Diffusion v1 UNet with 9 input channels + VAE, all randomly initialised),
so no weights are needed. It times one optimiser step of each phase-1 stage through the stages'
own loss functions and optimisers, and the seconds per 512x384 image for 20-step DPM-Solver++
against 50-step PLMS (the paper: 3.15 s/image, A100, PLMS 50 steps). Meant for a GPU; a recipe
with tiny checkpoints runs it on a CPU. The report is rewritten after each measurement, so a run
cut short still reports what it measured. The recipe's GPU-scale keys apply as in training:
``train.mixed_precision=bf16`` (autocast) and ``train.gradient_checkpointing=true``; on a GPU
the report has each measurement's peak memory, so both can be compared in two runs.
"""

import functools
import platform
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch

from unifashion_core.config import Recipe, load_recipe
from unifashion_core.data.manifest import Item
from unifashion_core.evaluation.reports import BenchReport, markdown_table, write_report
from unifashion_core.models.unifashion import UniFashion, build_model
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.train import stages as stage_lib
from unifashion_core.train.data import Batch
from unifashion_core.train.optim import build_optimizer
from unifashion_core.train.setup import training_precision

MEASUREMENTS = ("retrieval", "caption", "generate", "sampling")
RANDOM_WEIGHTS = ("model.vision.weights=random", "model.qformer.weights=random", "model.captioner.llm=random",
                  "model.generator.unet=random", "model.generator.vae=random")
PAPER_SECONDS_PER_IMAGE = 3.15  # A100 80GB, PLMS 50 steps (paper, Limitations)
GENERATED_SIZE = (512, 384)  # height, width of the paper's try-on images
CAPTION = "a long-sleeve navy blue cotton shirt with a pointed collar and a buttoned front"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    _sync()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - started) / repeats


class _Bench:
    """One model, one device; each method measures one thing."""

    def __init__(self, recipe: Recipe, model: UniFashion, batch_size: int) -> None:
        self.recipe, self.model, self.batch = recipe, model, batch_size
        self.device = model.device
        cuda = self.device.type == "cuda"
        self.bf16 = training_precision(recipe.train.mixed_precision, cuda) == "bf16"  # as training decides

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def step_seconds(self, stage: stage_lib.Stage, repeats: int = 4) -> float:
        optimizer = build_optimizer(stage.params, stage.optim)
        batch = Batch.read(stage.data, torch.arange(stage.num_examples))  # every example, one batch
        generator = torch.Generator().manual_seed(0)

        def step() -> None:
            with self.autocast():
                loss, _ = stage.loss_fn(batch, generator, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return timed(step, 2, repeats)

    def retrieval(self) -> dict[str, float]:
        """Phase 1a: Q-Former ITC + ITM on cached vision tokens, and the frozen ViT forward alone."""
        size = self.model.vision.image_size
        pixels = torch.randn(self.batch, 3, size, size, device=self.device)
        with self.autocast():
            tokens = self.model.image_tokens(pixels)
        vision = timed(lambda: self.model.image_tokens(pixels), 1, 3)
        stage = stage_lib.retrieval_stage(self.model, self.recipe, tokens, self._items(), tokens[:0], [])
        seconds = self.step_seconds(stage)
        return {"seconds_per_step": seconds, "pairs_per_s": self.batch / seconds, "vision_forward_s": vision,
                "trainable_parameters": sum(p.numel() for p in stage.params)}

    def _items(self) -> list[Item]:
        return [Item(id=str(n), image="", split="train", caption=CAPTION) for n in range(self.batch)]

    def _queries(self) -> torch.Tensor:
        qformer = self.model.qformer
        return torch.randn(self.batch, qformer.num_query_tokens, qformer.hidden_size, device=self.device)

    def caption(self) -> dict[str, float]:
        """Phase 1b ITG: adapter + LLM (+ LoRA) on frozen query outputs."""
        queries = self._queries()
        stage = stage_lib.caption_stage(self.model, self.recipe, queries, [CAPTION] * self.batch, queries[:0], [])
        seconds = self.step_seconds(stage)
        return {"seconds_per_step": seconds, "captions_per_s": self.batch / seconds,
                "trainable_parameters": sum(p.numel() for p in stage.params)}

    def generate(self) -> dict[str, float]:
        """Phase 1b q2I: VAE encode + UNet forward/backward at 512x384 on frozen query outputs."""
        height, width = GENERATED_SIZE
        pixels = torch.rand(self.batch, 3, height, width, device=self.device) * 2 - 1
        queries = {source: self._queries() for source in ("text", "image", "multimodal")}
        stage = stage_lib.generate_stage(self.model, self.recipe, queries, pixels.__getitem__, self.batch, None)
        seconds = self.step_seconds(stage, repeats=3)
        return {"seconds_per_step": seconds, "images_per_s": self.batch / seconds,
                "trainable_parameters": sum(p.numel() for p in stage.params)}

    def sampling(self) -> list[dict[str, Any]]:
        """Seconds per 512x384 inpainting image (VAE included), guidance 5, batch 1 and 8."""
        height, width = GENERATED_SIZE
        rows = []
        for batch in (1, 8):
            queries = self._queries()[:1].expand(batch, -1, -1)
            mask = torch.zeros(batch, 1, height, width, device=self.device)
            mask[:, :, height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1
            masked = (torch.rand(batch, 3, height, width, device=self.device) * 2 - 1) * (1 - mask)
            for sampler, steps in (("dpm++", 20), ("plms", 50)):
                calls: list[int] = []
                seconds = timed(functools.partial(self._sample, queries, sampler, steps, mask, masked, calls), 1, 2)
                rows.append({"sampler": sampler, "steps": steps, "batch": batch, "unet_calls": calls[-1],
                             "seconds_per_image": seconds / batch, "height": height, "width": width})
        return rows

    def _sample(self, queries: torch.Tensor, sampler: str, steps: int, mask: torch.Tensor, masked: torch.Tensor,
                calls: list[int]) -> None:
        with self.autocast():
            result = self.model.generator.sample(queries, steps, sampler, 5.0, 0, *GENERATED_SIZE, mask, masked)
        calls.append(result.num_unet_calls)


def bench_paper_speed(
    recipe: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path = "paper-speed",
    only: tuple[str, ...] = MEASUREMENTS,
    batch_size: int = 32,
    weights: Literal["random", "recipe"] = "random",
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Time the paper preset's training steps and sampling; write ``report.json`` / ``report.md``.

    Args:
        recipe: a paper-preset recipe (file or packaged name).
        overrides: ``key=value`` overrides applied after the weight overrides.
        out: report directory.
        only: which of ``MEASUREMENTS`` to run.
        batch_size: training-step batch (the paper's is 32).
        weights: ``random`` (every pretrained source random, real sizes) or ``recipe`` (as the recipe says).
        progress: progress events.
    """
    from unifashion_core.errors import UserError

    if unknown := sorted(set(only) - set(MEASUREMENTS)):
        raise UserError(f"unknown measurement {unknown[0]!r}; choose from {', '.join(MEASUREMENTS)}.")
    resolved = load_recipe(recipe, [*(RANDOM_WEIGHTS if weights == "random" else ()), *overrides])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    progress.log(f"building the {resolved.name} model ({weights} weights) on {device}")
    model = build_model(resolved.model, resolved.data.max_text_length).to(device)
    if resolved.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    bench = _Bench(resolved, model, batch_size)
    report: dict[str, Any] = {
        "bench": "paper-speed", "recipe": resolved.name, "weights": weights, "overrides": list(overrides),
        "protocol": f"{weights} weights at the recipe's sizes; training steps at batch {batch_size} through the "
        "stages' own losses and optimisers (bf16 autocast when the recipe says bf16, as training applies it); "
        "sampling 512x384 inpainting with guidance 5, VAE included; mean seconds after warm-up",
        "mixed_precision": training_precision(resolved.train.mixed_precision, device.type == "cuda"),
        "gradient_checkpointing": resolved.train.gradient_checkpointing,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "paper_seconds_per_image": PAPER_SECONDS_PER_IMAGE,
    }
    for name in only:
        progress.log(f"[paper-speed] {name}")
        started = time.perf_counter()
        try:
            report[name] = getattr(bench, name)()
        except Exception:  # report and go on: one failing stage must not hide the others' figures
            report[name] = {"error": traceback.format_exc(limit=3)}
        report.setdefault("wall_seconds", {})[name] = time.perf_counter() - started
        if device.type == "cuda":
            report.setdefault("peak_memory_gib", {})[name] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        result = write_report("paper-speed", out, report, _markdown(report))
    return result


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Paper-preset speed ({report['recipe']}, {report['weights']} weights)", "",
             f"- device: {report['device']}, torch {report['torch']}", f"- protocol: {report['protocol']}",
             f"- mixed precision: {report['mixed_precision']}, gradient checkpointing: "
             f"{report['gradient_checkpointing']}", ""]
    steps = [{"stage": name, **report[name]} for name in ("retrieval", "caption", "generate")
             if isinstance(report.get(name), dict) and "error" not in report[name]]
    if steps:
        lines.append(markdown_table(steps, ["stage", "seconds_per_step", "trainable_parameters"]))
    if isinstance(report.get("sampling"), list):
        lines.append(markdown_table(report["sampling"], ["sampler", "steps", "batch", "unet_calls",
                                                         "seconds_per_image"]))
        lines.append(f"Paper: {PAPER_SECONDS_PER_IMAGE} s/image (A100, PLMS 50 steps).")
    errors = [name for name in MEASUREMENTS if isinstance(report.get(name), dict) and "error" in report[name]]
    if errors:
        lines.append(f"Failed: {', '.join(errors)} (see report.json).")
    return "\n".join(lines) + "\n"
