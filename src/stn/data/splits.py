"""The one interface between datasets and the trainer.

A data config names its module in `loader:` (configs/data/*.yaml); that module provides

    prepare(data_cfg) -> None       build (or find) the stored set once, e.g. before a sweep's jobs
    load_splits(data_cfg) -> Splits

and a Splits object (a subclass of Splits below) gives, per split "train" / "val" / "test", uint8 images
[N, C, H, W] on the CPU and their targets (what the data config's `task:` scores: a label tensor, or a tuple of
per-example tensors). Its optional hooks, declared on Splits with do-nothing defaults, augment on the device:
`redraw(epoch_seed, device)` returns fresh training images each epoch (same examples, same order), and
`train_transform(images, generator)` / `eval_transform(images)` map each batch (random crops and flips drawn from
`generator`, the centre crop at evaluation) to what the model sees.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from stn.atomic import folder_lock

SPLIT_NAMES = ("train", "val", "test")


class Splits:
    """What a dataset module's load_splits returns; subclasses provide `split` and `meta`, and override the hooks
    they need."""

    meta: dict  # what the result file records about the data (path, checksum, sizes ...)
    # fresh uint8 training images for each epoch after the first, or None: every epoch trains on the stored set
    redraw: Callable[[int, torch.device], Tensor] | None = None

    def split(self, name: str) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def train_transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A training batch as the model sees it (random draws from `generator` only): the stored images."""
        return images

    def eval_transform(self, images: Tensor) -> Tensor:
        """An evaluation batch as the model sees it: the stored images."""
        return images


@dataclass
class LabelledSplits(Splits):
    """Datasets whose targets are one label tensor: images <split>_x and labels <split>_y (subclasses add the
    rest of Splits)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; use one of {SPLIT_NAMES}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def split_tensors(arrays: Mapping, fields: Mapping[str, str] | None = None) -> dict[str, Tensor]:
    """A stored file's "<split>/<name>" arrays as the Splits fields "<split>_<field>" (fields: field -> name;
    default x = images, y = labels), as CPU tensors sharing the arrays' memory."""
    fields = fields or {"x": "images", "y": "labels"}
    return {f"{s}_{f}": torch.from_numpy(arrays[f"{s}/{name}"]) for s in SPLIT_NAMES for f, name in fields.items()}


def data_module(data_cfg: DictConfig | Mapping) -> ModuleType:
    """The module a data config's `loader:` names."""
    name = data_cfg.get("loader")
    if not name:
        raise ValueError(f"data config {data_cfg.get('name')!r} lacks `loader:` (the module that loads its splits)")
    return importlib.import_module(name)


def _lock(data_cfg: DictConfig | Mapping) -> AbstractContextManager:
    """The lock of the data folder (data.root) a config prepares its data in; none without one (its loader's config
    check then says what is missing)."""
    root = data_cfg.get("root")
    return nullcontext() if root is None else folder_lock(root)


def load_splits(data_cfg: DictConfig | Mapping) -> Splits:
    """The splits of any data config, built and stored first if missing (holding its data folder's lock)."""
    with _lock(data_cfg):
        return data_module(data_cfg).load_splits(data_cfg)


def prepare(data_cfg: DictConfig | Mapping) -> None:
    """Build (or find) the stored set of any data config without loading it (holding its data folder's lock)."""
    with _lock(data_cfg):
        data_module(data_cfg).prepare(data_cfg)
