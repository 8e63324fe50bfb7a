"""Scoring a model on a split: the task's % metric, sharded over the training processes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from stn import distributed
from stn.distributed import SINGLE, World
from stn.precision import autocast, to_input
from stn.stream import Targets, select
from stn.tasks import Task, metric_percent


def unchanged(images: Tensor) -> Tensor:
    """The eval transform of splits without one: the model sees the stored images."""
    return images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    batch_size: int,
    task: Task,
    precision: str = "fp32",
    transform: Callable[[Tensor], Tensor] = unchanged,
    world: World = SINGLE,
) -> float:
    """The task's % metric of `model` on uint8 images (seen through `transform`) already on the model's device;
    with several processes each scores its shard and the correct counts are summed."""
    was_training = model.training
    model.eval()
    total, part = len(images), distributed.shard(len(images), world)
    images, targets = images[part], select(targets, part)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        with autocast(images.device, precision):
            output = model(to_input(transform(images[batch])))
        correct += task.correct(output, select(targets, batch)).sum()
    model.train(was_training)
    return metric_percent(task.metric, distributed.sum_over_ranks(correct, world).item(), total)
