"""A data module of synthetic digits for the trainer's tests (data.loader=synthetic): no download, no files, so the
trainer is tested on any clone. Each class is a fixed random pattern plus noise, learnable in a few steps; with
data.redraw_train=true every epoch after the first redraws the training noise (same examples, same order)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from stn.data.splits import LabelledSplits

SIZES = {"train": 256, "val": 64, "test": 64}


def draw(labels: Tensor, shape: tuple[int, ...], seed: int, noise_seed: int, device: torch.device | str = "cpu"):
    """uint8 images [N, *shape]: the pattern of each label (from `seed`) plus noise (from `noise_seed`)."""
    patterns = torch.rand((int(labels.max()) + 1, *shape), generator=torch.Generator().manual_seed(seed))
    noise = torch.rand((len(labels), *shape), generator=torch.Generator().manual_seed(noise_seed))
    return ((0.7 * patterns[labels] + 0.3 * noise) * 255).to(torch.uint8).to(device)


def load_splits(data_cfg: Mapping) -> LabelledSplits:
    shape, classes, seed = tuple(data_cfg["input_shape"]), int(data_cfg["num_classes"]), int(data_cfg["seed"])
    generator = torch.Generator().manual_seed(seed)
    labels = {name: torch.randint(0, classes, (size,), generator=generator) for name, size in SIZES.items()}
    images = {name: draw(labels[name], shape, seed, seed * 10 + i) for i, name in enumerate(SIZES, start=1)}
    splits = LabelledSplits(*(t for name in SIZES for t in (images[name], labels[name])))
    splits.meta = {"synthetic": SIZES}
    if data_cfg.get("redraw_train"):
        splits.redraw = lambda epoch_seed, device: draw(labels["train"], shape, seed, epoch_seed, device)
    return splits


def prepare(data_cfg: Mapping) -> None:
    """Nothing is stored."""
