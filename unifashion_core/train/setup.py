"""What both training phases share: the run directory, accelerate, and the typed result."""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from unifashion_core.checkpoint import load_training_state, read_meta
from unifashion_core.config import Recipe, dump_recipe
from unifashion_core.errors import UserError
from unifashion_core.fileio import check_output_dir, restore_interrupted, write_text_atomic
from unifashion_core.progress import NullProgress, Progress


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        checkpoint: the final checkpoint directory (``RUN/checkpoint``).
        phase: 1 or 2.
        metrics: the last logged and validation metrics, keyed ``stage/name``.
        skipped: counts of skipped images and triplets by ``kind:reason``.
        terms: phase 2: the loss terms that trained (``cir``, ``itg``, ``q2i``).
        init_checkpoint: phase 2: the phase-1 checkpoint it started from.
    """

    checkpoint: Path
    phase: int
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    terms: tuple[str, ...] = ()
    init_checkpoint: Path | None = None


def build_accelerator(recipe: Recipe, out: Path) -> Accelerator:
    """Accelerate set up from the recipe for the run directory ``out``.

    A GPU where there is one. ``train.mixed_precision: bf16`` autocasts on a GPU, and on a CPU
    whose instructions do bf16 natively (AVX512-BF16 or AMX, see ``cpu_has_native_bf16``); on
    another CPU, where bf16 is emulated and slower than float32, the run stays float32 (the
    precision used is ``accelerator.mixed_precision``, recorded in every checkpoint's meta).
    fp16 autocast is for GPUs only. Under ``accelerate launch`` each process
    gets its device; DDP may leave parameters unused in a step (ITM every n-th step), and the
    learning-rate schedule counts optimiser steps (``split_batches``: the loop shards batches).

    Raises:
        UserError: more processes on this machine than GPUs, or a tracker that is not installed.
    """
    import os

    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    from unifashion_core.train.runlog import check_tracker

    cuda = torch.cuda.is_available()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cuda and local_processes > torch.cuda.device_count():
        raise UserError(f"{local_processes} processes on this machine but only {torch.cuda.device_count()} GPUs; "
                        f"launch at most {torch.cuda.device_count()} processes per machine (--num_processes).")
    check_tracker(recipe.train.log_with)
    precision = training_precision(recipe.train.mixed_precision, cuda)
    shared = AcceleratorState._shared_state  # one per process: a second run in it may need another precision
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()  # the process group (PartialState) stays
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=recipe.train.grad_accum_steps, cpu=not cuda,
        log_with=None if recipe.train.log_with == "none" else recipe.train.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tracking")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def training_precision(requested: str, cuda: bool) -> str:
    """The autocast precision a run uses: ``requested`` on a GPU; on a CPU, ``bf16`` only where the
    CPU does bf16 natively, else ``no`` (float32)."""
    if cuda or requested == "no":
        return requested
    return "bf16" if requested == "bf16" and cpu_has_native_bf16() else "no"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX-BF16), read from the
    Linux CPU flags; False elsewhere. oneDNN runs bf16 matmuls natively there (measured on the
    demo: 1.7x faster Q-Former and LLM steps than float32 on a 2-core AMD EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prepare_run_dir(
    out: Path, recipe: Recipe, resume: bool, overwrite: bool, accelerator: Accelerator,
    progress: Progress = NullProgress(),
) -> tuple[dict | None, dict | None]:
    """Check the run directory: (None, None) for a fresh run, else the (meta, training state) to
    resume from. Nothing is written: ``start_run_dir`` does that once the run is set up. Every
    process checks, and none goes on before all have checked.

    ``resume`` into a run that stopped before its first checkpoint (or was never started) starts
    it from step 0 and says so; a run of another recipe is refused either way.
    """
    if resume and (out / "config.yaml").is_file():
        saved = (out / "config.yaml").read_text(encoding="utf-8")
        if saved != dump_recipe(recipe):
            raise UserError(f"--resume: the recipe differs from the one {out} was trained with "
                            f"(see {out / 'config.yaml'}).")
    if accelerator.is_main_process:
        restore_interrupted(out / "checkpoint")
    accelerator.wait_for_everyone()
    if resume and (out / "checkpoint").is_dir():
        meta: dict[str, Any] = read_meta(out / "checkpoint")
        return meta, load_training_state(out / "checkpoint")
    if resume:
        progress.log(f"--resume: {out} holds no checkpoint yet (the run stopped before its first save); "
                     "starting it from step 0.")
        overwrite = overwrite or (out / "config.yaml").is_file()  # our own run's leftovers
    check_output_dir(out, overwrite)
    accelerator.wait_for_everyone()  # no process writes before every one has checked
    return None, None


def start_run_dir(out: Path, recipe: Recipe, accelerator: Accelerator) -> None:
    """Begin a fresh run in ``out`` (the main process writes): the resolved recipe as config.yaml,
    no old metrics.jsonl or curves.png."""
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        (out / "curves.png").unlink(missing_ok=True)
        write_text_atomic(out / "config.yaml", dump_recipe(recipe))
    accelerator.wait_for_everyone()
