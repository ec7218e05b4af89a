"""The one training loop (accelerate), shared by every stage; exact resume from a checkpoint.

One process or many: with ``accelerate launch --num_processes N`` every process builds the same
model, reads its own rows of every global batch (``data.stream_batches``), and accelerate's DDP
averages the gradients, so the optimiser steps are those of one process with N times the batch.
Training logs are averaged over the processes; validation runs on the main process, which alone
writes metrics, curves and checkpoints.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from unifashion_core.errors import UserError
from unifashion_core.progress import Progress
from unifashion_core.train.data import Batch, batch_shard, stream_batches
from unifashion_core.train.optim import build_optimizer, build_scheduler
from unifashion_core.train.runlog import RunLog
from unifashion_core.train.stages import Stage

SaveFn = Callable[[dict[str, Any], dict[str, Any]], None]


class _StageModule(nn.Module):
    """A stage's loss as a module's forward, so that accelerate's DDP wrapper sees every micro-batch
    pass (its gradient hooks are armed by ``forward``)."""

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.trained = stage.module
        self.loss_fn = stage.loss_fn

    def forward(self, batch: Batch, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch, generator, step)


def run_stage(
    stage: Stage,
    accelerator: Accelerator,
    seed: int,
    train_cfg: Any,
    log: RunLog,
    save: SaveFn,
    progress: Progress,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train one stage for ``stage.optim.max_steps`` optimiser steps; return the last metrics.

    Checkpoints go through ``save(meta, training_state)`` (main process only) every
    ``save_every`` steps and at the end; ``resume_state`` (from a checkpoint of this stage)
    restores optimiser, scheduler, RNG and step, so the continued run equals an uninterrupted one.

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
        _check_same_processes(resume_state, accelerator)
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        torch.set_rng_state(resume_state["torch_rng"])
        step = int(resume_state["step"])
    module, optimizer, scheduler = accelerator.prepare(_StageModule(stage), optimizer, scheduler)
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel  # diffusers is slow to import; only when used

        ema = EMAModel(stage.params, decay=cfg.ema_decay, foreach=True)  # one op over all tensors
    if ema is not None and resume_state is not None:
        # the checkpoint's weights are the average; training continues from the raw ones
        ema.load_state_dict(resume_state["ema"])
        ema.to(accelerator.device)
        with torch.no_grad():
            for param, raw in zip(stage.params, resume_state["ema_raw_params"], strict=True):
                param.copy_(raw)
    module.train()
    accum = train_cfg.grad_accum_steps
    shard = batch_shard(cfg.batch_size, stage.num_examples, accelerator.process_index, accelerator.num_processes)
    batches = stream_batches(stage.data, seed, shard, step * accum, cfg.max_steps * accum, train_cfg.num_workers,
                             accelerator.device)
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
            "num_processes": accelerator.num_processes,
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

    window_seconds, window_steps = 0.0, 0  # training time since the last log line (no evaluation, no saving)
    while step < cfg.max_steps:
        started = time.perf_counter()
        logs: dict[str, float] = {}
        for _ in range(accum):
            batch = next(batches)
            with accelerator.accumulate(module), accelerator.autocast():
                loss, logs = module(batch, generator, step)
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
        window_seconds, window_steps = window_seconds + seconds, window_steps + 1
        last = _mean_over_processes(accelerator, {"loss": float(loss.detach()), **logs})
        progress.advance(f"train {stage.name}", 1, loss=last["loss"], ex_per_s=shard.size * accum / seconds)
        if step % train_cfg.log_every == 0 or step == cfg.max_steps:
            # the mean over every step since the last line: steps differ (ITM every loss.itm_every)
            log.write({"stage": stage.name, "step": step, "lr": scheduler.get_last_lr()[0],
                       "seconds_per_step": window_seconds / window_steps, **last})
            window_seconds, window_steps = 0.0, 0
        if stage.eval_fn is not None and (
            step == cfg.max_steps or (train_cfg.eval_every and step % train_cfg.eval_every == 0)
        ):
            with swap():
                evaluation = _evaluate_on_main(accelerator, stage.eval_fn)
            log.write({"stage": stage.name, "step": step, **evaluation})
            log.draw()
            progress.log(f"{stage.name} step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in evaluation.items()))
            last.update(evaluation)
        if step == cfg.max_steps or (train_cfg.save_every and step % train_cfg.save_every == 0):
            if accelerator.is_main_process:
                state = training_state()
                with swap():
                    save({"stage": stage.name, "step": step, "stage_done": step == cfg.max_steps, "metrics": last,
                          "num_processes": accelerator.num_processes, "batch_size": cfg.batch_size,
                          "global_batch_size": shard.size * accum}, state)
            accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(stage.params)  # later stages and the caller see the averaged weights
    if stage.eval_fn is None:  # otherwise drawn after the last evaluation
        log.draw()
    return last


def _check_same_processes(resume_state: dict[str, Any], accelerator: Accelerator) -> None:
    """Refuse to resume with another number of processes: the global batch, and so every later
    batch, would differ from the run's (checkpoints from before data parallelism had one)."""
    saved = int(resume_state.get("num_processes", 1))
    if saved != accelerator.num_processes:
        raise UserError(f"--resume: the run was trained with {saved} process(es), this is {accelerator.num_processes}; "
                        f"resume with the same --num_processes.")


def _mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each logged value averaged over the processes (the values themselves in one process)."""
    if accelerator.num_processes == 1:
        return values
    reduced = accelerator.reduce(torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device),
                                 reduction="mean")
    return dict(zip(values, reduced.tolist(), strict=True))


def _evaluate_on_main(accelerator: Accelerator, eval_fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Validation metrics computed by the main process and handed to every process."""
    results = [eval_fn() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(results)
    return results[0]
