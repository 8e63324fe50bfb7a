"""CUB-200-2011 (Table 3): the official archive or an offline folder -> one stored, resized uint8 set per input size.

Metadata: images.txt, image_class_labels.txt and train_test_split.txt (5,994 train / 5,794 test, 200 classes,
labels 0-based here). Each image is resized so that its shorter side is `image_size` (256 for the 224px
experiments, 512 for the 448px ones) and stored whole: the random 224/448 training crops range over the whole
resized image (a centre square would hide ~29% of the longer side, and for some images part of the bird), and the
test crop is its centre; both are taken on the device, with per-sample random draws (train_transform /
eval_transform).

Layout (simple, and one stackable uint8 array per split, which the trainer and its per-batch transforms need):
every image is stored landscape, a portrait one transposed, left-aligned on a canvas [3, image_size,
max_side + 1] with max_side = image_size * max_aspect (a longer side beyond it keeps its centre; counted in the
attrs); the last column holds the image's longer side (channels 0 and 1: high and low byte) and whether it was
transposed (channel 2), so that a batch of images carries what its crops need. Landscape storage pads at most
max_aspect - 1 of the shorter side, where padding both ways (a square canvas) would need twice that. At max_aspect
2 a set takes twice the memory of centre squares: 4.6 GB (cub224) and 18.6 GB (cub448) of uint8 for all 11,788.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

import stn
from stn.data.download import Remote, extract_tar, fetch_and_extract, refuse_partial_folder, verify_file
from stn.data.photo_sets import (
    PhotoSetConfig,
    config_values,
    open_rgb,
    source_folder,
    validation_order,
    warn_if_incomplete,
    write_stored,
)
from stn.data.splits import LabelledSplits, split_tensors
from stn.data.store import ensure_stored, read_matching, stored_meta
from stn.data.transforms import RESAMPLE, CropParams, apply_crops, default_workers, map_images

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # 2: whole resized images (landscape canvas), no centre square
FOLDER = "CUB_200_2011"
METADATA_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
OFFICIAL_COUNTS = {"train": 5994, "test": 5794, "classes": 200}
# The official archive (CaltechDATA; the old vision.caltech.edu address as a fallback). md5 as published in
# ContinualAI/avalanche, avalanche/benchmarks/datasets/cub200/cub200.py (tgz_md5; also TDeVries/cub2011_dataset,
# cub2011.py); size 1150585339 bytes as published in fastai/fastai, fastai/datasets.py (fastai v1 `_checks`).
CUB_ARCHIVE = Remote(
    urls=(
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz",
    ),
    filename="CUB_200_2011.tgz",
    size=1150585339,
    md5="97eceeb196236b17998738112f37df78",
    published_in="ContinualAI/avalanche cub200.py (md5), fastai/fastai datasets.py (size)",
)
REQUIRED_KEYS = ("name", "root", "image_size", "crop_size", "num_classes", "seed", "val_size")


class CubNotFoundError(FileNotFoundError):
    """CUB-200-2011 is neither in the data folder, nor in the offline source folder, nor downloadable; or unusable."""


# ---------------------------------------------------------------- metadata


@dataclass(frozen=True)
class CubMetadata:
    """The official lists, in images.txt order: id, relative path under images/, 0-based class, train flag."""

    folder: Path
    image_ids: np.ndarray  # int64 [N]
    paths: list[str]
    labels: np.ndarray  # int64 [N], 0-based
    is_train: np.ndarray  # bool [N]
    class_names: list[str]

    def present(self) -> np.ndarray:
        """bool [N]: the image file exists."""
        images = self.folder / "images"
        return np.array([(images / p).is_file() for p in self.paths], bool)


def _read_pairs(path: Path) -> dict[int, str]:
    """'<id> <value>' per line -> {id: value}; a clear error for a malformed or duplicated line."""
    pairs: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in pairs:
            raise ValueError(f"{path}:{number}: id {key} appears twice")
        pairs[key] = parts[1].strip()
    return pairs


def read_metadata(folder: str | os.PathLike) -> CubMetadata:
    """Read and cross-check images.txt, image_class_labels.txt and train_test_split.txt (and classes.txt if there)."""
    folder = Path(folder)
    missing = [name for name in METADATA_FILES if not (folder / name).is_file()]
    if missing:
        raise CubNotFoundError(f"{folder} lacks {missing}: not a CUB_200_2011 folder (expected {METADATA_FILES})")
    images, classes, split = (_read_pairs(folder / name) for name in METADATA_FILES)
    if not (images.keys() == classes.keys() == split.keys()):
        raise ValueError(f"{folder}: the three lists {METADATA_FILES} do not list the same image ids")
    ids = sorted(images)
    labels = np.array([int(classes[i]) for i in ids], np.int64) - 1  # the lists count classes from 1
    flags = {split[i] for i in ids}
    if not flags <= {"0", "1"}:
        raise ValueError(f"{folder / 'train_test_split.txt'}: flags must be 0 or 1, got {sorted(flags)}")
    if labels.min() < 0:
        raise ValueError(f"{folder / 'image_class_labels.txt'}: class ids must start at 1")
    names = _read_pairs(folder / "classes.txt") if (folder / "classes.txt").is_file() else {}
    class_names = [names.get(c + 1, str(c + 1)) for c in range(int(labels.max()) + 1)]
    metadata = CubMetadata(
        folder=folder,
        image_ids=np.array(ids, np.int64),
        paths=[images[i] for i in ids],
        labels=labels,
        is_train=np.array([split[i] == "1" for i in ids], bool),
        class_names=class_names,
    )
    counts = {
        "train": int(metadata.is_train.sum()),
        "test": int((~metadata.is_train).sum()),
        "classes": len(class_names),
    }
    if counts != OFFICIAL_COUNTS:
        log.warning("CUB metadata in %s: %s, the official lists have %s", folder, counts, OFFICIAL_COUNTS)
    return metadata


# ---------------------------------------------------------------- config and raw data


@dataclass(frozen=True, kw_only=True)
class CubConfig(PhotoSetConfig):
    """A validated configs/data/cub*.yaml."""

    STORE = "cub_resized"
    cub_source: Path | None
    download_urls: tuple[str, ...]
    max_aspect: float
    num_classes: int
    flip: bool
    allow_missing: bool

    @classmethod
    def from_cfg(cls, data_cfg: DictConfig | Mapping) -> CubConfig:
        values = config_values(data_cfg, REQUIRED_KEYS, "CUB", "configs/data/cub224.yaml")
        image_size = values["common"]["image_size"]
        max_aspect = float(values.get("max_aspect", 2.0))
        if not 1 <= max_aspect <= 255 * 256 / image_size:  # the longer side must fit two bytes (see the layout)
            raise ValueError(f"data.max_aspect must be a ratio >= 1 (longer / shorter side), got {max_aspect}")
        urls = values.get("download_urls") or CUB_ARCHIVE.urls
        return cls(
            **values["common"],
            cub_source=source_folder(values.get("cub_source")),
            download_urls=tuple(str(u) for u in ([urls] if isinstance(urls, str) else urls)),
            max_aspect=max_aspect,
            num_classes=int(values["num_classes"]),
            flip=bool(values.get("flip", True)),
            allow_missing=bool(values.get("allow_missing", True)),
        )

    def generation(self) -> dict:
        """Everything that defines the stored data besides the seed (hashed into the file name)."""
        return {
            "build_version": BUILD_VERSION,
            "image_size": self.image_size,
            "resize": "shorter side to image_size, whole image stored landscape (see the module's layout)",
            "max_side": self.max_side,
            "interpolation": self.resample,
            "val_size": self.val_size,
            "allow_missing": self.allow_missing,
        }

    @property
    def max_side(self) -> int:
        """The longest longer side stored (a longer one keeps its centre)."""
        return int(self.image_size * self.max_aspect)


def _source_hint() -> str:
    return (
        f"Offline: set data.cub_source (env CUB_SOURCE) to a folder holding {CUB_ARCHIVE.filename} or the "
        f"extracted {FOLDER}/ folder (images.txt, image_class_labels.txt, train_test_split.txt, images/)."
    )


def find_folder(cfg: CubConfig, progress: bool = True) -> Path:
    """The CUB_200_2011 folder, found, extracted or downloaded (in this order): cub_source itself or
    cub_source/CUB_200_2011, root/CUB_200_2011, cub_source/CUB_200_2011.tgz (verified, extracted into root), and,
    without cub_source, root/CUB_200_2011.tgz or a download (verified, extracted into root)."""
    remote = replace(CUB_ARCHIVE, urls=cfg.download_urls)
    sources = [] if cfg.cub_source is None else [cfg.cub_source, cfg.cub_source / FOLDER]
    for folder in [*sources, cfg.root / FOLDER]:
        if (folder / "images.txt").is_file():
            return folder
    refuse_partial_folder(cfg.root / FOLDER, "images.txt")
    if cfg.cub_source is not None:
        archive = cfg.cub_source / remote.filename
        if archive.is_file():
            verify_file(archive, remote, _source_hint(), in_source=True)
            extract_tar(archive, cfg.root)
            return _extracted(cfg, archive)
        raise CubNotFoundError(
            f"cub_source={str(cfg.cub_source)!r} holds neither images.txt, {FOLDER}/images.txt nor "
            f"{remote.filename}. Point data.cub_source (env CUB_SOURCE) at the folder holding them, or set it to "
            f"null to download {remote.urls[0]} into {cfg.root}."
        )
    archive = cfg.root / remote.filename
    fetch_and_extract(remote, archive, cfg.root, timeout=cfg.timeout, progress=progress, hint=_source_hint())
    return _extracted(cfg, archive)


def _extracted(cfg: CubConfig, archive: Path) -> Path:
    folder = cfg.root / FOLDER
    if not (folder / "images.txt").is_file():
        raise CubNotFoundError(f"{archive} did not hold {FOLDER}/images.txt: is it the CUB-200-2011 archive?")
    return folder


def usable(cfg: CubConfig, metadata: CubMetadata) -> np.ndarray:
    """bool [N]: the images to use. Missing files are counted and reported (a warning when allow_missing, an error
    otherwise); an error when a split has none left."""
    present = metadata.present()
    missing = int((~present).sum())
    if missing:
        first = ", ".join(p for p, ok in zip(metadata.paths, present, strict=True) if not ok)[:300]
        counts = {s: int((~present & (metadata.is_train == (s == "train"))).sum()) for s in ("train", "test")}
        text = (
            f"CUB: {missing} of the {len(present)} images listed in {metadata.folder / 'images.txt'} are missing "
            f"under {metadata.folder / 'images'} (train {counts['train']}, test {counts['test']}; e.g. {first} ...)"
        )
        if not cfg.allow_missing:
            raise CubNotFoundError(
                f"{text}. Provide the complete dataset, or set data.allow_missing=true to use the images present."
            )
        log.warning("%s; using the %d present", text, int(present.sum()))
    for split, flag in (("train", True), ("test", False)):
        if not (present & (metadata.is_train == flag)).any():
            raise CubNotFoundError(
                f"CUB: no {split} image of {metadata.folder / 'images.txt'} exists under {metadata.folder / 'images'}:"
                f" nothing usable is left. Extract the complete {CUB_ARCHIVE.filename} there. {_source_hint()}"
            )
    return present


# ---------------------------------------------------------------- resizing and storing


def resize_shorter(image: Image.Image, size: int, resample: str) -> np.ndarray:
    """Resize so that the shorter side is `size` (the longer one int(size * long / short), as torchvision's
    Resize): the whole image, uint8 [3, H, W]."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = image.resize((new_w, new_h), RESAMPLE[resample])
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def to_canvas(image: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    """A resized image [3, H, W] (shorter side S) on its landscape canvas [3, S, max_side + 1] (see the module's
    layout); and whether its longer side was cut to max_side."""
    portrait = image.shape[1] > image.shape[2]
    landscape = image.transpose(0, 2, 1) if portrait else image
    long = landscape.shape[2]
    cut = long > max_side
    if cut:  # keep the centre, as torchvision's CenterCrop would
        start = int(round((long - max_side) / 2.0))
        landscape, long = landscape[:, :, start : start + max_side], max_side
    canvas = np.zeros((3, landscape.shape[1], max_side + 1), np.uint8)
    canvas[:, :, :long] = landscape
    canvas[:, 0, -1] = long >> 8, long & 255, portrait
    return canvas, cut


class _ResizeJob(NamedTuple):
    path: str
    size: int
    resample: str
    max_side: int


def _resize_job(job: _ResizeJob) -> tuple[np.ndarray, tuple[int, int], bool]:
    rgb = open_rgb(job.path)
    canvas, cut = to_canvas(resize_shorter(rgb, job.size, job.resample), job.max_side)
    return canvas, rgb.size, cut


def build_dataset(cfg: CubConfig, progress: bool = True) -> Path:
    """Resize every usable image of `cfg`'s CUB folder and store the splits atomically at cfg.path."""
    folder = find_folder(cfg, progress)
    metadata = read_metadata(folder)
    if len(metadata.class_names) != cfg.num_classes:
        raise ValueError(f"{folder} has {len(metadata.class_names)} classes, data.num_classes is {cfg.num_classes}")
    present = usable(cfg, metadata)
    train_all = np.flatnonzero(present & metadata.is_train)
    if cfg.val_size >= len(train_all):
        raise ValueError(f"data.val_size={cfg.val_size} leaves no training images (only {len(train_all)} present)")
    order = validation_order(cfg.seed, len(train_all)).numpy()
    parts = {
        "train": np.sort(train_all[order[cfg.val_size :]]),
        "val": np.sort(train_all[order[: cfg.val_size]]),
        "test": np.flatnonzero(present & ~metadata.is_train),
    }
    arrays: dict[str, np.ndarray] = {}
    workers = default_workers(cfg.workers)
    cut = 0
    for part, index in parts.items():
        jobs = [
            _ResizeJob(str(folder / "images" / metadata.paths[i]), cfg.image_size, cfg.resample, cfg.max_side)
            for i in index
        ]
        images = np.zeros((len(index), 3, cfg.image_size, cfg.max_side + 1), np.uint8)
        sizes = np.zeros((len(index), 2), np.int32)
        results = map_images(_resize_job, jobs, workers, f"{cfg.name} {part}", progress)
        for k, (image, size, was_cut) in enumerate(results):
            images[k], sizes[k] = image, size
            cut += was_cut
        arrays[f"{part}/images"] = images
        arrays[f"{part}/labels"] = metadata.labels[index]
        arrays[f"{part}/image_id"] = metadata.image_ids[index]
        arrays[f"{part}/original_size"] = sizes
    listed = {"train": int(metadata.is_train.sum()), "test": int((~metadata.is_train).sum())}
    attrs = {
        "name": cfg.name,
        "seed": cfg.seed,
        "generation": cfg.generation(),
        "source": {
            "folder": str(folder.resolve()),
            "listed": listed,
            "missing": {s: listed[s] - int((present & (metadata.is_train == (s == "train"))).sum()) for s in listed},
            "official_counts": OFFICIAL_COUNTS,
        },
        "archive": {"size": CUB_ARCHIVE.size, "md5": CUB_ARCHIVE.md5},
        "class_names": metadata.class_names,
        "sizes": {part: len(index) for part, index in parts.items()},
        "longer_side_cut": cut,  # images more elongated than max_aspect: their longer side keeps its centre
        "stn_version": stn.__version__,
    }
    return write_stored(cfg, arrays, attrs, "CUB")


def ensure_dataset(cfg: CubConfig, progress: bool = True) -> Path:
    """The stored file of `cfg`, built first if it does not exist (an existing file is left untouched)."""
    return ensure_stored(cfg, lambda: build_dataset(cfg, progress))


# ---------------------------------------------------------------- on-device augmentation


def canvas_layout(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per stored image (uint8 [N, 3, S, max_side + 1], see the module's layout): its longer side and whether it
    was transposed."""
    corner = images[:, :, 0, -1].long()
    return corner[:, 0] * 256 + corner[:, 1], corner[:, 2].bool()


def whole_image_crops(
    images: Tensor,
    size: int,
    generator: torch.Generator | None = None,
    *,
    flip_prob: float = 0.0,
    center: bool = False,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, CropParams]:
    """A size x size crop of every stored whole image, at its own uniform random position within it (or its centre,
    offsets as torchvision's CenterCrop), in the image's own orientation, mirrored left-right with probability
    flip_prob; on the images' device (`generator` there too, or None). params are in the stored (landscape) frame."""
    n, _, short, _ = images.shape
    long, portrait = canvas_layout(images)
    if size > short:  # the longer side is never shorter
        raise ValueError(f"crop {size}x{size} is larger than the stored images (shorter side {short})")
    device = images.device
    if center:
        top = torch.full((n,), int(round((short - size) / 2.0)), device=device)
        left = ((long - size) / 2.0).round().long()  # round half to even, as Python's round
    else:
        top = torch.randint(0, short - size + 1, (n,), generator=generator, device=device)
        left = (torch.rand(n, generator=generator, device=device) * (long - size + 1)).long()
    flip = torch.zeros(n, dtype=torch.bool, device=device)
    if flip_prob > 0:
        flip = torch.rand(n, generator=generator, device=device) < flip_prob
    params = CropParams(top, left, flip)
    crops = apply_crops(images, CropParams(top, left, torch.zeros_like(flip)), size)
    crops = torch.where(portrait[:, None, None, None], crops.transpose(-1, -2), crops)  # back to the image's frame
    crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    return (crops, params) if return_params else crops


def random_crop_flip(images: Tensor, size: int, generator: torch.Generator | None = None, flip: bool = True) -> Tensor:
    """Per image a size x size crop at its own uniform random position within the whole stored image, mirrored
    left-right with probability 1/2 (drawn per image), on the images' device ([appendix]: random 224 crop +
    horizontal flip)."""
    return whole_image_crops(images, size, generator, flip_prob=0.5 if flip else 0.0)


def center_crops(images: Tensor, size: int) -> Tensor:
    """The centre size x size crop of every stored whole image ([open] test protocol: one centre crop)."""
    return whole_image_crops(images, size, center=True)


# ---------------------------------------------------------------- what the trainer consumes


@dataclass
class CubSplits(LabelledSplits):
    """uint8 images [N, 3, S, max_side + 1] (CPU; S = image_size; whole images, see the module's layout) and int64
    labels [N] (0-based) of each split."""

    num_classes: int
    crop_size: int
    flip: bool
    meta: dict

    def train_transform(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random crop_size crops (+ per-image random flips), on the images' device."""
        return random_crop_flip(images, self.crop_size, generator, self.flip)

    def eval_transform(self, images: Tensor) -> Tensor:
        """The centre crop_size crop of each whole image ([open] test protocol: one centre crop)."""
        return center_crops(images, self.crop_size)


def prepare(data_cfg: DictConfig | Mapping, progress: bool = True) -> None:
    """Build (or find) the stored set of a data config without loading it."""
    ensure_dataset(CubConfig.from_cfg(data_cfg), progress)


def load_splits(data_cfg: DictConfig | Mapping, progress: bool = True) -> CubSplits:
    """Load the stored set of a CUB data config, building it first if it is missing."""
    cfg = CubConfig.from_cfg(data_cfg)
    path = ensure_dataset(cfg, progress)
    arrays, attrs = read_matching(cfg)
    missing = {split: count for split, count in attrs["source"]["missing"].items() if count}
    warn_if_incomplete(path, "CUB", missing, "images missing", "Table 3")
    meta = stored_meta(
        cfg,
        attrs,
        missing=missing,
        source=attrs["source"],
        sizes=attrs["sizes"],
        longer_side_cut=attrs["longer_side_cut"],
        crop_size=cfg.crop_size,
    )
    return CubSplits(
        **split_tensors(arrays),
        num_classes=cfg.num_classes,
        crop_size=cfg.crop_size,
        flip=cfg.flip,
        meta=meta,
    )
