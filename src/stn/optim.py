"""The optimiser (parameter groups: loc nets at their own lr), the lr schedules and one optimisation step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from stn.precision import autocast
from stn.stream import Targets
from stn.tasks import Classification, Task
from stn.transformers import SpatialTransformer

SCHEDULES = ("step", "cosine")
CLASSIFICATION = Classification()  # Table 1's task, the default of the benchmarks that reuse train_step


def lr_factor(optim: DictConfig, iterations: int) -> Callable[[int], float]:
    """The lr multiplier after `step` optimiser steps: a linear warm-up over the first optim.lr_warmup of the
    budget, then either the step schedule (x lr_gamma at each milestone) or a cosine decay to zero. Milestones and
    warm-up are fractions of the budget, so shorter budgets keep the schedule's shape."""
    kind = optim.get("lr_schedule", "step")
    if kind not in SCHEDULES:
        raise ValueError(f"optim.lr_schedule must be one of {SCHEDULES}, got {kind!r}")
    warmup_fraction = float(optim.get("lr_warmup", 0.0))
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"optim.lr_warmup must be a fraction of the budget in [0, 1), got {warmup_fraction}")
    fractions = list(optim.get("lr_milestones") or [])
    if any(not 0 < f <= 1 for f in fractions) or fractions != sorted(fractions):
        raise ValueError(f"optim.lr_milestones must be increasing fractions of the budget in (0, 1], got {fractions}")
    warmup = round(warmup_fraction * iterations)
    milestones = [round(f * iterations) for f in fractions]
    gamma = float(optim.get("lr_gamma", 0.1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    return factor


def build_optimizer(
    model: nn.Module, optim: DictConfig, iterations: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser (loc nets at loc_lr_mult x the base lr) and its lr schedule (see lr_factor)."""
    # By id, once each: transformers may share one loc net (CUB's NxST models).
    loc = {id(p): p for m in model.modules() if isinstance(m, SpatialTransformer) for p in m.localisation_parameters()}
    loc_params, loc_ids = list(loc.values()), set(loc)
    groups = [{"params": [p for p in model.parameters() if id(p) not in loc_ids], "lr_mult": 1.0}]
    if loc_params:
        groups.append({"params": loc_params, "lr_mult": float(optim.loc_lr_mult)})
    optimizer = instantiate(optim.optimizer)(groups)
    for group in optimizer.param_groups:
        group["lr"] *= group["lr_mult"]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim, iterations))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: Tensor,
    y: Targets,
    precision: str,
    task: Task = CLASSIFICATION,
) -> Tensor:
    """One optimisation step on a batch; returns the (float32) loss."""
    with autocast(x.device, precision):
        output = model(x)
    loss = task.loss(output, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss
