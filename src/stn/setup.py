"""What a run trains on and with: its budget checked, its data on the device, its model placed for the device and
the training processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from stn import distributed
from stn.data import load_splits
from stn.distributed import World
from stn.precision import wants_channels_last
from stn.stream import Targets, select, to_device

BUDGET_COUNTS = ("iterations", "batch_size", "eval_every", "checkpoint_every", "log_every", "eval_batch_size")
BUDGET_SUBSETS = ("train_subset", "val_subset", "test_subset")
PANEL_IMAGES = 16  # validation images whose transformations the logger draws at each evaluation


def check_budget(budget: DictConfig, seed: int) -> None:
    """Clear errors for budgets that cannot run."""
    for key in BUDGET_COUNTS:
        value = budget.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"budget.{key} must be a positive integer, got {value!r}")
    for key in BUDGET_SUBSETS:
        value = budget.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"budget.{key} must be null (all examples) or a positive integer, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


@dataclass
class RunData:
    """A run's three splits on its device (cut to the budget's subsets), with the dataset's hooks."""

    train: tuple[Tensor, Targets]
    val: tuple[Tensor, Targets]
    test: tuple[Tensor, Targets]
    redraw: Callable[[int, torch.device], Tensor] | None  # fresh training distortions per epoch, if any
    train_transform: Callable[[Tensor, torch.Generator], Tensor] | None  # per-batch augmentation on the device
    eval_transform: Callable[[Tensor], Tensor]  # what the model sees of a stored image (e.g. a centre crop)
    meta: dict[str, Any]

    def panels(self) -> tuple[Tensor, Targets]:
        """The images (as the model sees them) whose transformations the logger draws at each evaluation: validation
        images, or test images when there is no validation split (CUB's official split); pictures only, nothing is
        selected on them."""
        images, targets = self.val if len(self.val[0]) else self.test
        return self.eval_transform(images[:PANEL_IMAGES]), select(targets, slice(PANEL_IMAGES))


def load_run_data(cfg: DictConfig, device: torch.device, world: World) -> RunData:
    with distributed.main_first(world):  # rank 0 builds the stored data once; the others then read it
        splits = load_splits(cfg.data)

    def subset(name: str, limit: int | None) -> tuple[Tensor, Targets]:
        images, targets = splits.split(name)
        return images[:limit].to(device), to_device(select(targets, slice(limit)), device)

    budget = cfg.budget
    data = RunData(
        train=subset("train", budget.train_subset),
        val=subset("val", budget.val_subset),
        test=subset("test", budget.test_subset),
        redraw=splits.redraw,
        train_transform=splits.train_transform,
        eval_transform=splits.eval_transform,
        meta=splits.meta,
    )
    if budget.batch_size > len(data.train[0]):
        raise ValueError(f"budget.batch_size={budget.batch_size} exceeds the {len(data.train[0])} training images")
    return data


def build_model(
    cfg: DictConfig, data: RunData, device: torch.device, precision: str, world: World
) -> tuple[nn.Module, nn.Module]:
    """The model (checked against what the data feeds it, on the device) and the module that trains it: wrapped in
    DDP with several processes, compiled with cfg.compile. Call after seeding: the initialisation draws from torch's
    global generator."""
    with distributed.main_first(world):  # rank 0 downloads pretrained weights (if any) into the cache first
        model: nn.Module = instantiate(cfg.model.net)
    expected = getattr(model, "input_shape", None)
    seen = tuple(data.eval_transform(data.train[0][:1]).shape[1:])  # what the model sees, after any crop
    if expected is not None and tuple(expected) != seen:
        raise ValueError(
            f"model {cfg.model.name} was built for inputs {list(expected)} but data {cfg.data.name} holds "
            f"{list(seen)}: fix data.input_shape or pick a model/data pair that fit"
        )
    if world.distributed and device.type == "cuda":  # batch statistics over the global batch, not each shard
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if wants_channels_last(device, precision):
        model.to(memory_format=torch.channels_last)
    step_model = model
    if world.distributed:  # averages the gradients of the shards; broadcasts rank 0's initial state
        device_ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model, torch.compile(step_model) if cfg.compile else step_model
