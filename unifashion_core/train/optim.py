"""Optimisers and learning-rate schedules from a recipe's OptimConfig."""

import torch

from unifashion_core.config import OptimConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas, eps and weight decay (no decay on biases/norms).

    torch's fused implementation where every parameter is a float tensor on a CPU or a GPU: one
    kernel over all tensors instead of a dozen ops per tensor (the per-tensor loop is torch's CPU
    default, and took ~7 % of a demo training step).
    """
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


# recipe schedule -> transformers' scheduler name (each with a linear warm-up of warmup_ratio)
TRANSFORMERS_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule over ``cfg.max_steps`` steps.

    ``constant``, ``linear`` and ``cosine`` (each after a linear warm-up over ``warmup_ratio`` of the
    steps) are ``transformers.get_scheduler``'s. ``onecycle`` (BLIP-2's Q-Former schedule) is
    torch's ``OneCycleLR``: transformers has no one-cycle schedule. Both kinds save and restore
    their position through ``state_dict``, so a resumed run continues exactly.
    """
    from transformers import get_scheduler

    total = max(cfg.max_steps, 1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total + 1,
            pct_start=max(cfg.warmup_ratio, 1.0 / total), cycle_momentum=False,
        )
    warmup = int(round(cfg.warmup_ratio * total))
    return get_scheduler(TRANSFORMERS_SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=warmup,
                         num_training_steps=total)
