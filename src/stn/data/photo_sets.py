"""What the datasets built from folders of photos (SVHN, CUB) share: the keys every such config has and the stored
file's name (PhotoSetConfig), the seeded validation split, the photos' reading, writing the built set, and the
warning for a set built from incomplete data."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from stn.data.dataset import STREAMS, derived_seed
from stn.data.store import write_atomic
from stn.data.transforms import RESAMPLE

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PhotoSetConfig:
    """The keys every photo-set config has (read and checked by config_values); a dataset's config adds its own,
    names the folder its stored files go in (STORE) and says what defines them (generation)."""

    STORE: ClassVar[str]
    name: str
    root: Path
    image_size: int
    crop_size: int
    resample: str
    val_size: int
    seed: int
    workers: int | None = None
    timeout: float = 60.0

    def generation(self) -> dict:
        """Everything that defines the stored data besides the seed (hashed into the file name)."""
        raise NotImplementedError

    @property
    def path(self) -> Path:
        """root/<STORE>/<name>_seed<seed>_<hash of the generation params>.h5"""
        blob = json.dumps(self.generation(), sort_keys=True).encode()
        return self.root / self.STORE / f"{self.name}_seed{self.seed}_{hashlib.sha256(blob).hexdigest()[:8]}.h5"


def config_values(
    data_cfg: DictConfig | Mapping, required: tuple[str, ...], dataset: str, schema: str
) -> dict[str, Any]:
    """A data config as a plain dict, with the keys every photo set has checked. The common ones are returned under
    their PhotoSetConfig names in "common"; the dataset's own keys are read from the rest."""
    values = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise ValueError(f"{dataset} data config lacks {missing} (see {schema} for the schema)")
    image_size, crop_size = int(values["image_size"]), int(values["crop_size"])
    if not 0 < crop_size <= image_size:
        raise ValueError(f"data.crop_size must be in (0, image_size={image_size}], got {crop_size}")
    resample = values.get("interpolation", "bilinear")
    if resample not in RESAMPLE:
        raise ValueError(f"data.interpolation must be one of {tuple(RESAMPLE)}, got {resample!r}")
    seed, val_size = int(values["seed"]), int(values["val_size"])
    if seed < 0 or val_size < 0:
        raise ValueError(f"data.seed and data.val_size must be non-negative, got {seed} and {val_size}")
    workers = values.get("workers")
    values["common"] = {
        "name": str(values["name"]),
        "root": Path(values["root"]),
        "image_size": image_size,
        "crop_size": crop_size,
        "resample": resample,
        "val_size": val_size,
        "seed": seed,
        "workers": None if workers is None else int(workers),
        "timeout": float(values.get("download_timeout", 60.0)),
    }
    return values


def source_folder(value: str | None) -> Path | None:
    """An offline source folder setting: unset or empty means none."""
    return None if value in (None, "") else Path(value)


def validation_order(seed: int, count: int) -> Tensor:
    """A seeded permutation of the `count` training candidates: the first val_size of it are held out."""
    generator = torch.Generator().manual_seed(derived_seed(seed, STREAMS["val_split"]))
    return torch.randperm(count, generator=generator)


def open_rgb(path: str) -> Image.Image:
    """A photo as RGB (a few CUB images are greyscale)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def write_stored(cfg: Any, arrays: Mapping[str, Any], attrs: Mapping[str, Any], dataset: str) -> Path:
    """Write a built set atomically at cfg.path (see stn.data.store) and say so."""
    write_atomic(cfg.path, arrays, attrs)
    log.info("%s %s: stored %s (%s)", dataset, cfg.name, cfg.path, attrs["sizes"])
    return cfg.path


def warn_if_incomplete(path: Path, dataset: str, lacking: Mapping[str, Any], what: str, table: str) -> None:
    """Warn when a stored set was built from an incomplete copy of its dataset (`lacking`: per split, `what`)."""
    if lacking:
        log.warning(
            "%s was built from an incomplete %s (%s per split: %s): fine for tests, not for %s. Delete it and run "
            "again with the complete data.",
            path,
            dataset,
            what,
            dict(lacking),
            table,
        )
