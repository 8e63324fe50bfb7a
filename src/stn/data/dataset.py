"""Distorted MNIST splits: config -> stored HDF5 file (generated once, seeded) -> tensors for the trainer."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

import stn
from stn.data.distortions import DistortionSpec, generate
from stn.data.mnist import MNIST_MD5, SPLIT_SIZES, MnistArrays, load_mnist
from stn.data.splits import LabelledSplits, split_tensors
from stn.data.store import ensure_stored, read_matching, stored_meta, write_atomic

log = logging.getLogger(__name__)

# Bump when a code change alters the generated data for an unchanged config: it is part of the file-name hash,
# so old files are never reused by mistake.
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
# Independent random streams derived from the one config seed.
STREAMS = {"train": 0, "val": 1, "test": 2, "val_split": 3, "redraw": 4}
VAL_SPLITS = ("last", "random")
REQUIRED_KEYS = ("name", "variant", "input_shape", "num_classes", "root", "seed", "val_size", "distortion")


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream `keys` of `seed` (numpy SeedSequence: streams are independent)."""
    high, low = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


@dataclass(frozen=True)
class DataConfig:
    """A validated configs/data/mnist_*.yaml."""

    name: str
    variant: str
    num_classes: int
    root: Path
    mnist_source: Path | None
    seed: int
    redraw_train: bool
    val_size: int
    val_split: str
    spec: DistortionSpec

    @classmethod
    def from_cfg(cls, data_cfg: DictConfig | Mapping) -> DataConfig:
        values = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
        missing = [key for key in REQUIRED_KEYS if values.get(key) is None]
        if missing:
            raise ValueError(f"data config lacks {missing} (see configs/data/mnist_rts.yaml for the schema)")
        shape = [int(v) for v in values["input_shape"]]
        if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
            raise ValueError(f"distorted MNIST needs input_shape [1, S, S] (square, grey), got {shape}")
        seed, val_size = int(values["seed"]), int(values["val_size"])
        if seed < 0:
            raise ValueError(f"data.seed must be a non-negative integer, got {seed}")
        if not 0 <= val_size < SPLIT_SIZES["train"]:
            raise ValueError(f"data.val_size must be in [0, {SPLIT_SIZES['train']}), got {val_size}")
        val_split = values.get("val_split", "last")
        if val_split not in VAL_SPLITS:
            raise ValueError(f"data.val_split must be one of {VAL_SPLITS}, got {val_split!r}")
        source = values.get("mnist_source")
        return cls(
            name=str(values["name"]),
            variant=str(values["variant"]),
            num_classes=int(values["num_classes"]),
            root=Path(values["root"]),
            mnist_source=None if source in (None, "") else Path(source),
            seed=seed,
            redraw_train=bool(values.get("redraw_train", False)),
            val_size=val_size,
            val_split=val_split,
            spec=DistortionSpec.from_config(shape[1], values["distortion"]),
        )

    def generation(self) -> dict:
        """Everything that defines the stored data besides the seed (hashed into the file name)."""
        return {
            "generator_version": GENERATOR_VERSION,
            "variant": self.variant,
            "val_size": self.val_size,
            "val_split": self.val_split,
            "distortion": self.spec.as_dict(),
        }

    @property
    def path(self) -> Path:
        """root/distorted_mnist/mnist_<variant>_seed<seed>_<hash of the generation params>.h5"""
        blob = json.dumps(self.generation(), sort_keys=True).encode()
        short_hash = hashlib.sha256(blob).hexdigest()[:8]
        return self.root / "distorted_mnist" / f"mnist_{self.variant.lower()}_seed{self.seed}_{short_hash}.h5"


@dataclass
class MnistSplits(LabelledSplits):
    """Images (uint8 [N, 1, S, S], CPU) and int64 labels of the three splits (stn.data.splits.Splits)."""

    num_classes: int
    meta: dict
    # redraw(epoch_seed, device) -> fresh uint8 train images [N_train, 1, S, S] on `device`, same digit order as
    # train_y; None unless data_cfg.redraw_train is true.
    redraw: Callable[[int, torch.device], Tensor] | None = None


def train_val_indices(cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """Indices into the MNIST training set of the train and validation splits (each in MNIST order)."""
    total = SPLIT_SIZES["train"]
    if cfg.val_split == "last":
        order = torch.arange(total)
    else:
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, STREAMS["val_split"]))
        order = torch.randperm(total, generator=generator)
    cut = total - cfg.val_size
    return order[:cut].sort().values, order[cut:].sort().values


def _split_sources(cfg: DataConfig, mnist: MnistArrays) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """split -> (source digits, their labels, their indices in the MNIST set they come from)."""
    train_index, val_index = train_val_indices(cfg)
    test_index = torch.arange(SPLIT_SIZES["test"])
    return {
        "train": (mnist.train_images[train_index], mnist.train_labels[train_index], train_index),
        "val": (mnist.train_images[val_index], mnist.train_labels[val_index], val_index),
        "test": (mnist.test_images, mnist.test_labels, test_index),
    }


def generate_dataset(cfg: DataConfig, progress: bool = True) -> Path:
    """Generate all three splits on the CPU (bit-reproducible) and store them atomically at cfg.path."""
    mnist = load_mnist(cfg.root, cfg.mnist_source)
    sources = _split_sources(cfg, mnist)
    pool = sources["train"][0]  # clutter comes from the training digits, for every split
    arrays: dict[str, np.ndarray] = {}
    total = sum(len(labels) for _, labels, _ in sources.values())
    with tqdm(total=total, desc=f"{cfg.name} seed {cfg.seed}", unit="img", disable=not progress) as bar:
        for split, (digits, labels, index) in sources.items():
            generator = torch.Generator().manual_seed(derived_seed(cfg.seed, STREAMS[split]))
            pool_index = torch.arange(len(pool)) if split == "train" else None
            images, params = generate(cfg.spec, digits, generator, pool, pool_index, progress=bar)
            arrays[f"{split}/images"] = images.numpy()
            arrays[f"{split}/labels"] = labels.numpy()
            arrays[f"{split}/source_index"] = index.numpy()
            arrays.update(params_arrays(split, params))
    return store_mnist_set(cfg.path, arrays, cfg.name, cfg.variant, cfg.seed, cfg.generation())


def params_arrays(split: str, params: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """A split's per-image distortion parameters, as stored: "<split>/params/<name>"."""
    return {f"{split}/params/{key}": value.numpy() for key, value in params.items()}


def store_mnist_set(
    path: Path, arrays: Mapping[str, np.ndarray], name: str, variant: str, seed: int, generation: dict
) -> Path:
    """Store a set generated from MNIST atomically at `path`, with the attributes that identify it; return `path`."""
    attrs = {
        "name": name,
        "variant": variant,
        "seed": seed,
        "generation": generation,
        "mnist_md5": MNIST_MD5,
        "stn_version": stn.__version__,
    }
    write_atomic(path, arrays, attrs)
    return path


def ensure_dataset(cfg: DataConfig, progress: bool = True) -> Path:
    """The stored file for `cfg`, generated first if it does not exist (an existing file is left untouched)."""
    return ensure_stored(cfg, lambda: generate_dataset(cfg, progress))


def read_dataset(cfg: DataConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify the stored file of `cfg` (it must exist)."""
    return read_matching(cfg)


class Redraw:
    """Fresh training distortions of the same digits, drawn on the device from (config seed, epoch seed)."""

    def __init__(self, cfg: DataConfig, digits: Tensor) -> None:
        self.spec, self.seed, self.digits = cfg.spec, cfg.seed, digits
        self._on_device: dict[torch.device, Tensor] = {}

    def __call__(self, epoch_seed: int, device: torch.device | str) -> Tensor:
        return self.draw(epoch_seed, device)[0]

    def draw(self, epoch_seed: int, device: torch.device | str) -> tuple[Tensor, dict[str, Tensor]]:
        """The epoch's images and the distortion parameters they were drawn with (stn.data.distortions.generate)."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = self.digits.to(device)
        digits = self._on_device[device]
        generator = torch.Generator(device=device).manual_seed(derived_seed(self.seed, STREAMS["redraw"], epoch_seed))
        pool_index = torch.arange(len(digits), device=device)
        return generate(self.spec, digits, generator, pool=digits, pool_index=pool_index)


def prepare(data_cfg: DictConfig | Mapping) -> None:
    """Generate (or find) the stored file of a data config, and check MNIST itself is at hand when it redraws."""
    cfg = DataConfig.from_cfg(data_cfg)
    if not cfg.path.exists():
        log.info("sweep: generating %s once for all its jobs into %s", cfg.name, cfg.path)
    ensure_dataset(cfg)
    if cfg.redraw_train:
        load_mnist(cfg.root, cfg.mnist_source)


def load_splits(data_cfg: DictConfig | Mapping) -> MnistSplits:
    """Load the stored splits of a data config, generating the HDF5 file first if it is missing."""
    cfg = DataConfig.from_cfg(data_cfg)
    ensure_dataset(cfg)
    arrays, attrs = read_dataset(cfg)
    redraw = None
    if cfg.redraw_train:
        mnist = load_mnist(cfg.root, cfg.mnist_source)
        redraw = Redraw(cfg, mnist.train_images[torch.from_numpy(arrays["train/source_index"])])
    meta = stored_meta(
        cfg,
        attrs,
        variant=cfg.variant,
        mnist_md5=attrs["mnist_md5"],
        redraw_train=cfg.redraw_train,
        sizes={split: len(arrays[f"{split}/labels"]) for split in SPLITS},
    )
    return MnistSplits(**split_tensors(arrays), num_classes=cfg.num_classes, redraw=redraw, meta=meta)


def stored_params(arrays: Mapping[str, np.ndarray], split: str) -> dict[str, Tensor]:
    """The per-sample distortion parameters of one split of a stored file, as tensors."""
    prefix = f"{split}/params/"
    return {key[len(prefix) :]: torch.from_numpy(value) for key, value in arrays.items() if key.startswith(prefix)}
