"""MNIST addition (Appendix A.1): two MNIST digits, each in its own channel, each distorted independently by a Table 1
recipe (configs/data/mnist_addition.yaml reuses mnist_rts's `distortion` block); the label is their sum (19 classes).

Config -> stored HDF5 file (generated once, seeded, sha256-checked) -> tensors for the trainer, as dataset.py does
for one digit. The pairs of one split are fixed (the trainer's redraw hook keeps each example's label); with
redraw_train every epoch draws fresh distortions of both channels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from stn.data.dataset import (
    STREAMS,
    DataConfig,
    MnistSplits,
    derived_seed,
    params_arrays,
    store_mnist_set,
    train_val_indices,
)
from stn.data.distortions import generate
from stn.data.mnist import load_mnist
from stn.data.splits import SPLIT_NAMES, split_tensors
from stn.data.store import ensure_stored, read_matching, stored_meta

log = logging.getLogger(__name__)

# Bump when a code change alters the generated data for an unchanged config (it is part of the file-name hash).
GENERATOR_VERSION = 1
CHANNELS = 2  # [paper] two digits, one per input channel
PAIRINGS = ("shuffled", "random")
PAIR_STREAM = 5  # the pairing's random stream (dataset.STREAMS holds 0-4)


@dataclass(frozen=True)
class AdditionConfig:
    """A validated configs/data/mnist_addition.yaml: `digit` is the one-digit config each channel is drawn with."""

    digit: DataConfig
    pairing: str

    @classmethod
    def from_cfg(cls, data_cfg: DictConfig | Mapping) -> AdditionConfig:
        values = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
        shape = [int(v) for v in values.get("input_shape") or []]
        if len(shape) != 3 or shape[0] != CHANNELS or int(values.get("num_classes", 0)) != 19:
            raise ValueError(f"MNIST addition needs input_shape [2, S, S] and num_classes 19, got {shape}")
        pairing = values.get("pairing", "shuffled")
        if pairing not in PAIRINGS:
            raise ValueError(f"data.pairing must be one of {PAIRINGS}, got {pairing!r}")
        digit = DataConfig.from_cfg({**values, "input_shape": [1, *shape[1:]], "num_classes": 10})
        return cls(digit=digit, pairing=pairing)

    @property
    def seed(self) -> int:
        return self.digit.seed

    def generation(self) -> dict:
        """Everything that defines the stored data besides the seed (hashed into the file name)."""
        return {**self.digit.generation(), "addition_version": GENERATOR_VERSION, "pairing": self.pairing}

    @property
    def path(self) -> Path:
        """root/distorted_mnist/mnist_addition_seed<seed>_<hash of the generation params>.h5"""
        short_hash = hashlib.sha256(json.dumps(self.generation(), sort_keys=True).encode()).hexdigest()[:8]
        return self.digit.root / "distorted_mnist" / f"mnist_addition_seed{self.seed}_{short_hash}.h5"


def draw_pairs(count: int, pairing: str, generator: torch.Generator) -> Tensor:
    """[count, 2] indices into a split's `count` digits: channel 0 takes every digit once in order; channel 1 a seeded
    permutation of them (shuffled) or uniform draws with replacement (random). Either way the two are independent."""
    first = torch.arange(count)
    if pairing == "shuffled":
        second = torch.randperm(count, generator=generator)
    else:
        second = torch.randint(count, (count,), generator=generator)
    return torch.stack([first, second], 1)


def render_pairs(
    cfg: AdditionConfig, digits: Tensor, pairs: Tensor, seeds: tuple[int, int], device: torch.device, progress=None
) -> tuple[Tensor, dict[str, Tensor]]:
    """uint8 images [N, 2, S, S]: channel c is digits[pairs[:, c]] distorted with a generator seeded by seeds[c] (two
    independent streams, so the channels are distorted independently), and the parameters as '<c>/<name>'."""
    digits, channels, params = digits.to(device), [], {}
    for channel, seed in enumerate(seeds):
        generator = torch.Generator(device=device).manual_seed(seed)
        index = pairs[:, channel].to(device)
        # clutter (none in RTS) would come from other digits of the split: pool_index names each sample's own digit
        images, drawn = generate(cfg.digit.spec, digits[index], generator, digits, index, progress=progress)
        channels.append(images)
        params.update({f"{channel}/{key}": value for key, value in drawn.items()})
    return torch.cat(channels, 1), params


def _split_digits(cfg: AdditionConfig) -> dict[str, tuple[Tensor, Tensor]]:
    """split -> (source digits, labels) as dataset.py splits MNIST (the same held-out validation digits)."""
    mnist = load_mnist(cfg.digit.root, cfg.digit.mnist_source)
    train_index, val_index = train_val_indices(cfg.digit)
    return {
        "train": (mnist.train_images[train_index], mnist.train_labels[train_index]),
        "val": (mnist.train_images[val_index], mnist.train_labels[val_index]),
        "test": (mnist.test_images, mnist.test_labels),
    }


def generate_dataset(cfg: AdditionConfig, progress: bool = True) -> Path:
    """Generate all three splits on the CPU (bit-reproducible) and store them atomically at cfg.path."""
    sources = _split_digits(cfg)
    arrays: dict[str, np.ndarray] = {}
    total = CHANNELS * sum(len(labels) for _, labels in sources.values())
    with tqdm(total=total, desc=f"mnist_addition seed {cfg.seed}", unit="img", disable=not progress) as bar:
        for split, (digits, labels) in sources.items():
            stream = STREAMS[split]
            pair_generator = torch.Generator().manual_seed(derived_seed(cfg.seed, stream, PAIR_STREAM))
            pairs = draw_pairs(len(digits), cfg.pairing, pair_generator)
            seeds = (derived_seed(cfg.seed, stream, 0), derived_seed(cfg.seed, stream, 1))
            images, params = render_pairs(cfg, digits, pairs, seeds, torch.device("cpu"), bar)
            arrays[f"{split}/images"] = images.numpy()
            arrays[f"{split}/labels"] = labels[pairs].sum(1).numpy()
            arrays[f"{split}/digit_labels"] = labels[pairs].numpy()
            arrays[f"{split}/pairs"] = pairs.numpy()
            arrays.update(params_arrays(split, params))
    return store_mnist_set(cfg.path, arrays, cfg.digit.name, cfg.digit.variant, cfg.seed, cfg.generation())


class PairRedraw:
    """Fresh training distortions of the same pairs (both channels, independently), drawn on the device from
    (config seed, epoch seed): the trainer's redraw hook."""

    def __init__(self, cfg: AdditionConfig, digits: Tensor, pairs: Tensor) -> None:
        self.cfg, self.digits, self.pairs = cfg, digits, pairs
        self._on_device: dict[torch.device, Tensor] = {}

    def __call__(self, epoch_seed: int, device: torch.device | str) -> Tensor:
        return self.draw(epoch_seed, device)[0]

    def draw(self, epoch_seed: int, device: torch.device | str) -> tuple[Tensor, dict[str, Tensor]]:
        device = torch.device(device)
        if device not in self._on_device:  # moved once, not every epoch
            self._on_device[device] = self.digits.to(device)
        seeds = tuple(derived_seed(self.cfg.seed, STREAMS["redraw"], epoch_seed, channel) for channel in range(2))
        return render_pairs(self.cfg, self._on_device[device], self.pairs, seeds, device)


def prepare(data_cfg: DictConfig | Mapping) -> None:
    """Generate (or find) the stored file of a data config."""
    cfg = AdditionConfig.from_cfg(data_cfg)
    if not cfg.path.exists():
        log.info("sweep: generating %s once for all its jobs into %s", cfg.digit.name, cfg.path)
    ensure_stored(cfg, lambda: generate_dataset(cfg))


def load_splits(data_cfg: DictConfig | Mapping) -> MnistSplits:
    """Load the stored splits (images [N, 2, S, S], sums as labels), generating the HDF5 file first if missing."""
    cfg = AdditionConfig.from_cfg(data_cfg)
    ensure_stored(cfg, lambda: generate_dataset(cfg))
    arrays, attrs = read_matching(cfg)
    redraw = None
    if cfg.digit.redraw_train:
        train_digits = _split_digits(cfg)["train"][0]
        redraw = PairRedraw(cfg, train_digits, torch.from_numpy(arrays["train/pairs"]))
    meta = stored_meta(
        cfg,
        attrs,
        variant=cfg.digit.variant,
        mnist_md5=attrs["mnist_md5"],
        redraw_train=cfg.digit.redraw_train,
        pairing=cfg.pairing,
        sizes={split: len(arrays[f"{split}/labels"]) for split in SPLIT_NAMES},
    )
    return MnistSplits(**split_tensors(arrays), num_classes=19, redraw=redraw, meta=meta)
