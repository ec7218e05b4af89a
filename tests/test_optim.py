"""Learning-rate schedules (transformers' get_scheduler; torch's OneCycleLR) and their exact resume."""

import math

import pytest
import torch

from unifashion_core.config import OptimConfig
from unifashion_core.train.optim import build_optimizer, build_scheduler


def _lrs(cfg: OptimConfig, steps: int, state: dict | None = None) -> tuple[list[float], dict]:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], cfg)
    scheduler = build_scheduler(optimizer, cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_warm_up_linearly_then_follow_their_shape(schedule):
    cfg = OptimConfig(max_steps=20, lr=1.0, schedule=schedule, warmup_ratio=0.2)  # 4 warm-up steps
    lrs, _ = _lrs(cfg, 20)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    progress = [(step - 4) / 16 for step in range(4, 20)]
    expected = {"constant": [1.0] * 16, "linear": [1 - p for p in progress],
                "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in progress]}[schedule]
    assert lrs[4:] == pytest.approx(expected)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "onecycle"])
def test_a_resumed_schedule_continues_exactly(schedule):
    cfg = OptimConfig(max_steps=30, lr=1e-3, schedule=schedule, warmup_ratio=0.1)
    uninterrupted, _ = _lrs(cfg, 30)
    first, state = _lrs(cfg, 12)
    rest, _ = _lrs(cfg, 18, state)
    assert first + rest == pytest.approx(uninterrupted, rel=1e-12)


def test_onecycle_is_torch_onecycle():
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig(schedule="onecycle"))
    assert isinstance(build_scheduler(optimizer, OptimConfig(schedule="onecycle")),
                      torch.optim.lr_scheduler.OneCycleLR)


def test_adamw_is_torchs_fused_one_and_steps_as_the_per_tensor_loop():
    cfg = OptimConfig(lr=1e-2, weight_decay=0.05)
    weights = [torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(k))) for k in range(2)]
    bias = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([*weights, bias], cfg)
    assert optimizer.defaults["fused"]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in (*weights, bias)]
    loop = torch.optim.AdamW([{"params": twins[:2], "weight_decay": 0.05}, {"params": twins[2:], "weight_decay": 0.0}],
                             lr=1e-2, betas=cfg.betas, eps=cfg.eps, foreach=False)
    for step in range(3):
        for params, opt in (((*weights, bias), optimizer), (twins, loop)):
            loss = sum((p * (step + 1)).sin().sum() for p in params)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for mine, theirs in zip((*weights, bias), twins, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_logged_seconds_per_step_average_every_step_since_the_last_line():
    """A stage whose even steps are slow (as ITM every 2nd step is): each logged figure is the
    mean over its window, not the last step's time (which here would always be a fast one)."""
    import time

    from accelerate import Accelerator

    from unifashion_core.config import TrainConfig
    from unifashion_core.progress import NullProgress
    from unifashion_core.train.data import ExampleData
    from unifashion_core.train.loop import run_stage
    from unifashion_core.train.stages import Stage

    weight = torch.nn.Linear(2, 1)

    def loss_fn(batch, generator, step):
        if step % 2 == 0:
            time.sleep(0.05)
        return weight(batch.fields["x"]).square().mean(), {}

    class Log:
        def __init__(self):
            self.rows = []

        def write(self, row):
            self.rows.append(row)

        def draw(self):
            pass

    stage = Stage("toy", weight, list(weight.parameters()), OptimConfig(max_steps=6, batch_size=2),
                  ExampleData(4, {"x": lambda i: torch.full((2,), float(i))}), loss_fn)
    log = Log()
    run_stage(stage, Accelerator(cpu=True), 0, TrainConfig(log_every=2), log, lambda meta, state: None,
              NullProgress())
    seconds = [row["seconds_per_step"] for row in log.rows]
    assert len(seconds) == 3 and min(seconds) >= 0.025
