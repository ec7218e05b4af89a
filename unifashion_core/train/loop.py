"""The one training loop (accelerate), shared by every stage; exact resume from a checkpoint."""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from unifashion_core.progress import Progress
from unifashion_core.train.optim import build_optimizer, build_scheduler
from unifashion_core.train.stages import Stage

SaveFn = Callable[[dict[str, Any], dict[str, Any]], None]


def batch_indices(seed: int, num_examples: int, batch_size: int, micro_step: int) -> torch.Tensor:
    """Example indices of one micro-batch, a pure function of (seed, micro_step).

    Each epoch is a seeded permutation (drop-last), so the data position is just the step
    number and resuming needs no sampler state.
    """
    batch_size = min(batch_size, num_examples)
    per_epoch = num_examples // batch_size
    epoch, position = divmod(micro_step, per_epoch)
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return permutation[position * batch_size : (position + 1) * batch_size]


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def run_stage(
    stage: Stage,
    accelerator: Accelerator,
    seed: int,
    train_cfg: Any,
    metrics: MetricsLog,
    save: SaveFn,
    progress: Progress,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train one stage for ``stage.optim.max_steps`` optimiser steps; return the last metrics.

    Checkpoints go through ``save(meta, training_state)`` every ``save_every`` steps and at the
    end; ``resume_state`` (from a checkpoint of this stage) restores optimiser, scheduler, RNG
    and step, so the continued run equals an uninterrupted one.

    With ``ema_decay`` > 0, evaluations and checkpoints use the moving average of the weights
    (diffusers' ``EMAModel``); the training state keeps the raw weights and the average.
    """
    cfg = stage.optim
    optimizer = build_optimizer(stage.params, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # each stage starts from the seed, not from what earlier stages drew
    step = 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        torch.set_rng_state(resume_state["torch_rng"])
        step = int(resume_state["step"])
    module, optimizer, scheduler = accelerator.prepare(stage.module, optimizer, scheduler)
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel  # diffusers is slow to import; only when used

        ema = EMAModel(stage.params, decay=cfg.ema_decay)
    if ema is not None and resume_state is not None:
        # the checkpoint's weights are the average; training continues from the raw ones
        ema.load_state_dict(resume_state["ema"])
        ema.to(accelerator.device)
        with torch.no_grad():
            for param, raw in zip(stage.params, resume_state["ema_raw_params"], strict=True):
                param.copy_(raw)
    module.train()
    accum = train_cfg.grad_accum_steps
    last: dict[str, float] = {}
    progress.start(f"train {stage.name}", cfg.max_steps)
    progress.advance(f"train {stage.name}", step)

    def training_state() -> dict[str, Any]:
        state = {
            "stage": stage.name,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
            state["ema_raw_params"] = [param.detach().clone() for param in stage.params]
        return state

    @contextmanager
    def averaged_weights() -> Iterator[None]:
        """The EMA weights in place of the raw ones for the duration of the block."""
        ema.store(stage.params)
        ema.copy_to(stage.params)
        try:
            yield
        finally:
            ema.restore(stage.params)

    swap = averaged_weights if ema is not None else nullcontext

    while step < cfg.max_steps:
        started = time.perf_counter()
        logs: dict[str, float] = {}
        for micro in range(accum):
            indices = batch_indices(seed, stage.num_examples, cfg.batch_size, step * accum + micro)
            with accelerator.accumulate(module), accelerator.autocast():
                loss, logs = stage.loss_fn(indices, generator, step)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(stage.params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if ema is not None and accelerator.sync_gradients:
                    ema.step(stage.params)
        if stage.after_step is not None:
            stage.after_step()
        step += 1
        seconds = time.perf_counter() - started
        last = {"loss": float(loss.detach()), **logs}
        progress.advance(f"train {stage.name}", 1, loss=last["loss"], ex_per_s=len(indices) * accum / seconds)
        if step % train_cfg.log_every == 0 or step == cfg.max_steps:
            metrics.write(
                {
                    "stage": stage.name,
                    "step": step,
                    "lr": scheduler.get_last_lr()[0],
                    "seconds_per_step": seconds,
                    **last,
                }
            )
        if stage.eval_fn is not None and (
            step == cfg.max_steps or (train_cfg.eval_every and step % train_cfg.eval_every == 0)
        ):
            with swap():
                evaluation = stage.eval_fn()
            metrics.write({"stage": stage.name, "step": step, **evaluation})
            progress.log(f"{stage.name} step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in evaluation.items()))
            last.update(evaluation)
        if step == cfg.max_steps or (train_cfg.save_every and step % train_cfg.save_every == 0):
            state = training_state()
            with swap():
                save({"stage": stage.name, "step": step, "stage_done": step == cfg.max_steps, "metrics": last}, state)
    if ema is not None:
        ema.copy_to(stage.params)  # later stages and the caller see the averaged weights
    return last
