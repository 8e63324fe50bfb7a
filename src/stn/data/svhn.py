"""SVHN multi-digit sequences (Table 2): the 64px and 128px sets built from SVHN "format 1".

Official archives (downloaded, size + sha256 verified) or an offline folder -> digitStruct.mat parsed once (cached
as JSON) -> per image the union box of its digit boxes, expanded (x1.3, Goodfellow et al. 2013; doubled again for
the 128px set), cropped and resized -> one stored, checksummed HDF5 file per config (stn.data.store) -> uint8
tensors for the trainer, with per-sample random crops drawn on the device (54 of 64, 110 of 128) and the centre
crop at test.

Labels: 5 positions, digits 0-9 (the file's label 10 is the digit 0), the null class 10 after the last digit.
Splits: train = train + extra minus a seeded validation set; test = every test image [appendix].
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

import stn
from stn.atomic import write_atomic as write_text_atomic
from stn.data.download import (
    Remote,
    extract_tar,
    fetch_and_extract,
    file_digests,
    refuse_partial_folder,
    urls_under,
    verify_file,
)
from stn.data.photo_sets import (
    PhotoSetConfig,
    config_values,
    open_rgb,
    source_folder,
    validation_order,
    warn_if_incomplete,
    write_stored,
)
from stn.data.splits import SPLIT_NAMES, Splits, split_tensors
from stn.data.store import ensure_stored, read_matching, stored_meta
from stn.data.transforms import RESAMPLE, CropAugmented, default_workers, map_images

log = logging.getLogger(__name__)

# Bump when a code change alters the stored data for an unchanged config (it is part of the file-name hash).
BUILD_VERSION = 1
SOURCE_CODE = {"train": 0, "extra": 1, "test": 2}  # stored per image ("source" array)
NULL_CLASS = 10
FIELDS = ("label", "left", "top", "width", "height")
# Format-1 archives: sizes and sha256 as published in huggingface/datasets, datasets/svhn/dataset_infos.json
# ("full_numbers" -> "download_checksums"; commit 040102f100964a33fd334e2695f1c493fa6b92db). The train and test
# sha256 are published again in mindee/doctr, doctr/datasets/svhn.py (commit 16afdef734186d1e596069251be318d920142c63).
SVHN_PUBLISHED_IN = "huggingface/datasets datasets/svhn/dataset_infos.json (full_numbers download_checksums)"
SVHN_ARCHIVES: dict[str, tuple[int, str]] = {
    "train": (404141560, "4b17bb33b6cd8f963493168f80143da956f28ec406cc12f8e5745a9f91a51898"),
    "test": (276555967, "57ac9ceb530e4aa85b55d991be8fc49c695b3d71c6f6a88afea86549efde7fb5"),
    "extra": (1955489752, "e857e27d1e65bd1e7d3959b094061777f6506bbc39889a0df3bba6a729d60f9c"),
}
OFFICIAL_COUNTS = {"train": 33402, "extra": 202353, "test": 13068}  # images per split (same source)
BORDERS = ("clip", "pad")
REQUIRED_KEYS = ("name", "root", "image_size", "crop_size", "box_expand", "box_scale", "border", "val_size", "seed")


class SvhnNotFoundError(FileNotFoundError):
    """SVHN is neither in the data folder, nor in the offline source folder, nor downloadable; or nothing is usable."""


# ---------------------------------------------------------------- digitStruct.mat


@dataclass(frozen=True)
class DigitRecord:
    """One digitStruct entry: image file name, digit labels (0-9) and boxes (left, top, width, height) in pixels."""

    name: str
    labels: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]

    @property
    def image_id(self) -> int:
        """The number of '<n>.png' (-1 for another name)."""
        stem = Path(self.name).stem
        return int(stem) if stem.isdigit() else -1


def _values(file: h5py.File, dataset: h5py.Dataset) -> list[float]:
    """A digitStruct field: stored directly for a single digit, as object references for several (the quirk)."""
    data = dataset[()]
    if h5py.check_dtype(ref=dataset.dtype) is not None:
        return [float(np.asarray(file[ref][()]).item()) for ref in np.asarray(data).ravel()]
    return [float(value) for value in np.asarray(data).ravel()]


def _parse_entry(file: h5py.File, name_ref: h5py.Reference, box_ref: h5py.Reference, index: int) -> DigitRecord:
    name = "".join(map(chr, np.asarray(file[name_ref][()]).ravel()))
    group = file[box_ref]
    fields = {key: _values(file, group[key]) for key in FIELDS}
    lengths = {len(values) for values in fields.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"entry {index} ({name}): fields of different lengths {lengths}")
    labels = []
    for value in fields["label"]:
        if value != round(value) or not 1 <= value <= 10:
            raise ValueError(f"entry {index} ({name}): label {value} is not one of 1-10")
        labels.append(int(value) % 10)  # the file stores the digit 0 as 10
    boxes = zip(fields["left"], fields["top"], fields["width"], fields["height"], strict=True)
    return DigitRecord(name, tuple(labels), tuple(tuple(b) for b in boxes))


def _parse_range(job: tuple[str, int, int]) -> list[DigitRecord]:
    """Entries [start, stop) of a digitStruct.mat (None: to the end)."""
    path, start, stop = job
    with h5py.File(path, "r") as file:
        name_refs = np.asarray(file["digitStruct/name"][()]).ravel()
        box_refs = np.asarray(file["digitStruct/bbox"][()]).ravel()
        if len(name_refs) != len(box_refs):
            raise ValueError(f"{len(name_refs)} names but {len(box_refs)} bbox entries")
        return [_parse_entry(file, name_refs[i], box_refs[i], i) for i in range(start, min(stop, len(name_refs)))]


def parse_digit_struct(path: str | os.PathLike, progress: bool = False, workers: int = 1) -> list[DigitRecord]:
    """Read a digitStruct.mat (MATLAB v7.3 = HDF5) with h5py: one DigitRecord per entry, in file order.

    h5py resolves the object references one by one (about 1-3 ms per image), so large files are parsed in
    `workers` processes, in ranges of entries.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            total = int(np.prod(file["digitStruct/name"].shape))
        step = 500
        jobs = [(str(path), start, start + step) for start in range(0, total, step)]
        records = []
        for part in map_images(_parse_range, jobs, workers, f"parsing {path}", progress, 4, f"{step} entries"):
            records += part
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a readable SVHN digitStruct.mat ({type(error).__name__}: {error}). Replace it with the "
            f"original from the format-1 archive (delete the extracted folder to extract it again)."
        ) from error
    return records


def load_annotations(
    mat_path: str | os.PathLike, cache_dir: str | os.PathLike, progress: bool = True, workers: int = 1
) -> tuple[list[DigitRecord], str]:
    """parse_digit_struct() and the mat file's sha256; the parse is cached as JSON in `cache_dir` under that sha256
    (parsed once, written atomically)."""
    mat_path = Path(mat_path)
    digest = file_digests(mat_path, md5=False)["sha256"]
    cache = Path(cache_dir) / f"digitStruct-{digest[:16]}.json"
    if cache.is_file():
        try:
            content = json.loads(cache.read_text())
            if content.get("digit_struct_sha256") == digest and content.get("version") == 1:
                records = [DigitRecord(n, tuple(ls), tuple(tuple(b) for b in bs)) for n, ls, bs in content["records"]]
                return records, digest
        except (ValueError, KeyError, TypeError):
            pass
        log.warning("%s is unreadable; parsing %s again", cache, mat_path)
    records = parse_digit_struct(mat_path, progress, workers)
    content = {
        "version": 1,
        "digit_struct": str(mat_path),
        "digit_struct_sha256": digest,
        "records": [[r.name, list(r.labels), [list(b) for b in r.boxes]] for r in records],
    }
    write_text_atomic(cache, json.dumps(content, separators=(",", ":")))
    return records, digest


# ---------------------------------------------------------------- crop geometry


def sequence_box(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """The smallest box holding every digit box: [x0, y0, x1, y1] (pixel edges)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.array([b[:, 0].min(), b[:, 1].min(), (b[:, 0] + b[:, 2]).max(), (b[:, 1] + b[:, 3]).max()])


def crop_region(
    boxes: Sequence[Sequence[float]], expand: float, scale: float = 1.0, square: bool = False
) -> np.ndarray:
    """The crop [x0, y0, x1, y1]: the sequence box scaled by expand * scale in x and y about its centre.

    Goodfellow et al. 2013: expand = 1.3 ("expanded by 30% in both the x and the y direction"), scale = 1; the
    128px reconstruction doubles that box (scale = 2). square: make it square (side = the longer side) first.
    """
    x0, y0, x1, y1 = sequence_box(boxes)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * expand * scale, (y1 - y0) * expand * scale
    if square:
        w = h = max(w, h)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def crop_resize(
    image: Image.Image, region: Sequence[float], size: int, border: str, resample: str
) -> np.ndarray | None:
    """Crop `region` (float pixel edges) of an RGB image and resize it to size x size: uint8 [3, size, size].

    border 'clip': the region is cut to the image first (the crop is then stretched to the square);
    border 'pad': the region is kept and the part outside the image is black (zeros).
    None when nothing of the region is left (a degenerate box).
    """
    width, height = image.size
    x0, y0, x1, y1 = (float(v) for v in region)
    if border == "clip":
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    elif border != "pad":
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if not (x1 - x0 > 0 and y1 - y0 > 0) or x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None
    if border == "pad":
        left, top = math.ceil(max(0.0, -x0)), math.ceil(max(0.0, -y0))
        right, bottom = math.ceil(max(0.0, x1 - width)), math.ceil(max(0.0, y1 - height))
        if left or top or right or bottom:
            canvas = Image.new("RGB", (width + left + right, height + top + bottom), (0, 0, 0))
            canvas.paste(image, (left, top))
            image, x0, y0, x1, y1 = canvas, x0 + left, y0 + top, x1 + left, y1 + top
    out = image.resize((size, size), RESAMPLE[resample], box=(x0, y0, x1, y1))
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))


class _CropJob(NamedTuple):
    path: str
    region: tuple[float, float, float, float]
    size: int
    border: str
    resample: str


def _crop_job(job: _CropJob) -> tuple[np.ndarray | None, tuple[int, int]]:
    rgb = open_rgb(job.path)
    return crop_resize(rgb, job.region, job.size, job.border, job.resample), rgb.size


# ---------------------------------------------------------------- config and raw data


@dataclass(frozen=True, kw_only=True)
class SvhnConfig(PhotoSetConfig):
    """A validated configs/data/svhn*.yaml."""

    STORE = "svhn_crops"
    svhn_source: Path | None
    download_url: str
    box_expand: float
    box_scale: float
    square_box: bool
    border: str
    max_digits: int
    train_splits: tuple[str, ...]

    @classmethod
    def from_cfg(cls, data_cfg: DictConfig | Mapping) -> SvhnConfig:
        values = config_values(data_cfg, REQUIRED_KEYS, "SVHN", "configs/data/svhn64.yaml")
        if values["border"] not in BORDERS:
            raise ValueError(f"data.border must be one of {BORDERS}, got {values['border']!r}")
        train_splits = tuple(values.get("train_splits", ("train", "extra")))
        if not train_splits or any(s not in ("train", "extra") for s in train_splits):
            raise ValueError(f"data.train_splits must be a non-empty list of 'train' and 'extra', got {train_splits}")
        if float(values["box_expand"]) <= 0 or float(values["box_scale"]) <= 0:
            raise ValueError("data.box_expand and data.box_scale must be positive")
        return cls(
            **values["common"],
            svhn_source=source_folder(values.get("svhn_source")),
            download_url=str(values.get("download_url") or "http://ufldl.stanford.edu/housenumbers/"),
            box_expand=float(values["box_expand"]),
            box_scale=float(values["box_scale"]),
            square_box=bool(values.get("square_box", False)),
            border=str(values["border"]),
            max_digits=int(values.get("max_digits", 5)),
            train_splits=train_splits,
        )

    def generation(self) -> dict:
        """Everything that defines the stored data besides the seed (hashed into the file name)."""
        return {
            "build_version": BUILD_VERSION,
            "image_size": self.image_size,
            "box_expand": self.box_expand,
            "box_scale": self.box_scale,
            "square_box": self.square_box,
            "border": self.border,
            "interpolation": self.resample,
            "max_digits": self.max_digits,
            "train_splits": list(self.train_splits),
            "val_size": self.val_size,
        }

    @property
    def raw_dir(self) -> Path:
        """Downloaded archives and extracted split folders (root/SVHN/{train,test,extra}), and the parse cache."""
        return self.root / "SVHN"


def archive_remote(split: str, base_url: str) -> Remote:
    size, sha256 = SVHN_ARCHIVES[split]
    filename = f"{split}.tar.gz"
    return Remote(urls_under(base_url, filename), filename, size=size, sha256=sha256, published_in=SVHN_PUBLISHED_IN)


def _source_hint() -> str:
    return (
        "Offline: set data.svhn_source (env SVHN_SOURCE) to a folder holding train.tar.gz, test.tar.gz, "
        "extra.tar.gz or the extracted train/, test/, extra/ folders (each with its digitStruct.mat)."
    )


def split_folder(cfg: SvhnConfig, split: str, progress: bool = True) -> Path:
    """The folder holding <split>/digitStruct.mat and the images, found, extracted or downloaded (in this order):
    svhn_source/<split>/, root/SVHN/<split>/, svhn_source/<split>.tar.gz (verified, extracted into root/SVHN),
    and, without svhn_source, root/SVHN/<split>.tar.gz or a download (verified, extracted)."""
    remote = archive_remote(split, cfg.download_url)
    sources = [] if cfg.svhn_source is None else [cfg.svhn_source, cfg.svhn_source / "SVHN"]
    for base in [*sources, cfg.raw_dir]:
        if (base / split / "digitStruct.mat").is_file():
            return base / split
    refuse_partial_folder(cfg.raw_dir / split, "digitStruct.mat")
    for base in sources:
        archive = base / remote.filename
        if archive.is_file():
            verify_file(archive, remote, _source_hint(), in_source=True)
            extract_tar(archive, cfg.raw_dir)
            return _extracted(cfg, split, archive)
    if cfg.svhn_source is not None:
        raise SvhnNotFoundError(
            f"svhn_source={str(cfg.svhn_source)!r} holds neither {split}/digitStruct.mat nor {remote.filename} "
            f"(nor under SVHN/). Point data.svhn_source (env SVHN_SOURCE) at the folder holding them, or set it to "
            f"null to download {remote.urls[0]} into {cfg.raw_dir}."
        )
    archive = cfg.raw_dir / remote.filename
    fetch_and_extract(remote, archive, cfg.raw_dir, timeout=cfg.timeout, progress=progress, hint=_source_hint())
    return _extracted(cfg, split, archive)


def _extracted(cfg: SvhnConfig, split: str, archive: Path) -> Path:
    folder = cfg.raw_dir / split
    if not (folder / "digitStruct.mat").is_file():
        raise SvhnNotFoundError(f"{archive} did not hold {split}/digitStruct.mat: is it the SVHN format-1 archive?")
    return folder


@dataclass
class SplitRecords:
    """The usable records of one raw split, the folder they live in, and what was left out."""

    split: str
    folder: Path
    records: list[DigitRecord]
    digit_struct_sha256: str
    counts: dict[str, int]


def usable_records(cfg: SvhnConfig, split: str, progress: bool = True) -> SplitRecords:
    """The records of a raw split whose image exists; missing images are skipped with a logged count."""
    folder = split_folder(cfg, split, progress)
    mat = folder / "digitStruct.mat"
    records, digest = load_annotations(mat, cfg.raw_dir / "parsed", progress, default_workers(cfg.workers))
    present = [r for r in records if (folder / r.name).is_file()]
    missing = len(records) - len(present)
    if missing:
        log.warning(
            "SVHN %s: %d of the %d images listed in %s are missing on disk; skipped", split, missing, len(records), mat
        )
    if not present:
        raise SvhnNotFoundError(
            f"SVHN {split}: none of the {len(records)} images listed in {mat} exists in {folder}; nothing usable "
            f"is left. Extract the complete {split}.tar.gz there (or delete the folder to extract/download it again)."
        )
    counts = {"listed": len(records), "missing": missing, "present": len(present)}
    return SplitRecords(split, folder, present, digest, counts)


# ---------------------------------------------------------------- building the stored set


Item = tuple[str, Path, DigitRecord]  # (raw split, its folder, the record)


def _crop_all(cfg: SvhnConfig, items: list[Item], desc: str, progress: bool) -> tuple[dict, int]:
    """Crop and resize every item; returns the arrays of one stored split and the number of degenerate boxes dropped."""
    regions = [crop_region(r.boxes, cfg.box_expand, cfg.box_scale, cfg.square_box) for _, _, r in items]
    jobs = [
        _CropJob(str(folder / r.name), tuple(float(v) for v in region), cfg.image_size, cfg.border, cfg.resample)
        for (_, folder, r), region in zip(items, regions, strict=True)
    ]
    n, s, k = len(items), cfg.image_size, cfg.max_digits
    images = np.zeros((n, 3, s, s), np.uint8)
    keep = np.zeros(n, bool)
    sizes = np.zeros((n, 2), np.int32)
    for index, (crop, size) in enumerate(map_images(_crop_job, jobs, default_workers(cfg.workers), desc, progress)):
        sizes[index] = size
        if crop is not None:
            images[index], keep[index] = crop, True
    labels = np.full((n, k), NULL_CLASS, np.int64)
    boxes = np.full((n, k, 4), np.nan, np.float32)
    for index, (_, _, record) in enumerate(items):
        labels[index, : min(k, len(record.labels))] = record.labels[:k]
        boxes[index, : min(k, len(record.boxes))] = np.asarray(record.boxes, np.float32)[:k]
    arrays = {
        "images": images,
        "labels": labels,
        "lengths": np.array([len(r.labels) for _, _, r in items], np.int64),
        "digit_boxes": boxes,
        "crop_boxes": np.asarray(regions, np.float32).reshape(n, 4),
        "image_sizes": sizes,
        "source": np.array([SOURCE_CODE[split] for split, _, _ in items], np.int8),
        "image_id": np.array([r.image_id for _, _, r in items], np.int64),
    }
    dropped = int((~keep).sum())
    if dropped:
        log.warning("SVHN %s: %d images whose crop box lies outside the image were dropped", desc, dropped)
    return (arrays if keep.all() else {key: value[keep] for key, value in arrays.items()}), dropped


def build_dataset(cfg: SvhnConfig, progress: bool = True) -> Path:
    """Build the stored set of `cfg` from the raw SVHN splits and write it atomically at cfg.path."""
    raw = {split: usable_records(cfg, split, progress) for split in (*cfg.train_splits, "test")}
    too_long: dict[str, int] = {}
    pool: list[Item] = []
    for split in cfg.train_splits:
        records = raw[split].records
        long = [r for r in records if len(r.labels) > cfg.max_digits]
        too_long[split] = len(long)
        if long:
            log.warning(
                "SVHN %s: %d sequences longer than %d digits dropped from training (%s)",
                split,
                len(long),
                cfg.max_digits,
                ", ".join(r.name for r in long[:5]),
            )
        pool += [(split, raw[split].folder, r) for r in records if len(r.labels) <= cfg.max_digits]
    test = [("test", raw["test"].folder, r) for r in raw["test"].records]
    too_long["test"] = sum(len(r.labels) > cfg.max_digits for _, _, r in test)
    if too_long["test"]:
        log.warning(
            "SVHN test: %d sequences longer than %d digits kept (labels cut to %d, true length in 'lengths'): "
            "stn.tasks.sequence_correct counts them as errors",
            too_long["test"],
            cfg.max_digits,
            cfg.max_digits,
        )
    if cfg.val_size >= len(pool):
        raise ValueError(
            f"data.val_size={cfg.val_size} leaves no training images: only {len(pool)} usable images in "
            f"{'+'.join(cfg.train_splits)}. Lower data.val_size (or provide the complete SVHN)."
        )
    order = validation_order(cfg.seed, len(pool))
    val_index = set(order[: cfg.val_size].tolist())
    parts = {
        "train": [item for i, item in enumerate(pool) if i not in val_index],
        "val": [item for i, item in enumerate(pool) if i in val_index],
        "test": test,
    }
    arrays: dict[str, np.ndarray] = {}
    dropped = {}
    for part, items in parts.items():
        part_arrays, dropped[part] = _crop_all(cfg, items, f"{cfg.name} {part}", progress)
        arrays.update({f"{part}/{key}": value for key, value in part_arrays.items()})
    attrs = {
        "name": cfg.name,
        "seed": cfg.seed,
        "generation": cfg.generation(),
        "sources": {
            split: {
                "folder": str(r.folder.resolve()),
                "digit_struct_sha256": r.digit_struct_sha256,
                **r.counts,
                "official_count": OFFICIAL_COUNTS[split],
            }
            for split, r in raw.items()
        },
        "archives": {split: {"size": s, "sha256": h} for split, (s, h) in SVHN_ARCHIVES.items()},
        "longer_than_max_digits": too_long,
        "degenerate_dropped": dropped,
        "sizes": {part: int(len(arrays[f"{part}/labels"])) for part in parts},
        "stn_version": stn.__version__,
    }
    return write_stored(cfg, arrays, attrs, "SVHN")


def ensure_dataset(cfg: SvhnConfig, progress: bool = True) -> Path:
    """The stored file of `cfg`, built first if it does not exist (an existing file is left untouched)."""
    return ensure_stored(cfg, lambda: build_dataset(cfg, progress))


# ---------------------------------------------------------------- what the trainer consumes


@dataclass
class SvhnSplits(CropAugmented, Splits):
    """uint8 images [N, 3, S, S] (CPU), int64 labels [N, 5] (null class 10) and int64 lengths [N] of each split."""

    train_x: Tensor
    train_y: Tensor
    train_len: Tensor
    val_x: Tensor
    val_y: Tensor
    val_len: Tensor
    test_x: Tensor
    test_y: Tensor
    test_len: Tensor
    num_classes: int  # per position: 10 digits + the null class
    num_digits: int
    crop_size: int
    meta: dict

    def split(self, name: str) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Images and targets (labels, lengths) of one split (stn.data.splits.Splits)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; use one of {SPLIT_NAMES}")
        return getattr(self, f"{name}_x"), (getattr(self, f"{name}_y"), getattr(self, f"{name}_len"))


def prepare(data_cfg: DictConfig | Mapping, progress: bool = True) -> None:
    """Build (or find) the stored set of a data config without loading it."""
    ensure_dataset(SvhnConfig.from_cfg(data_cfg), progress)


def load_splits(data_cfg: DictConfig | Mapping, progress: bool = True) -> SvhnSplits:
    """Load the stored set of an SVHN data config, building it first if it is missing."""
    cfg = SvhnConfig.from_cfg(data_cfg)
    path = ensure_dataset(cfg, progress)
    arrays, attrs = read_matching(cfg)
    incomplete = {
        s: f"{v['present']} of {v['official_count']}"
        for s, v in attrs["sources"].items()
        if v["present"] < v["official_count"]
    }
    warn_if_incomplete(path, "SVHN", incomplete, "images present", "Table 2")
    meta = stored_meta(
        cfg,
        attrs,
        incomplete=incomplete,
        sources=attrs["sources"],
        longer_than_max_digits=attrs["longer_than_max_digits"],
        sizes=attrs["sizes"],
        crop_size=cfg.crop_size,
    )
    return SvhnSplits(
        **split_tensors(arrays, {"x": "images", "y": "labels", "len": "lengths"}),
        num_classes=NULL_CLASS + 1,
        num_digits=cfg.max_digits,
        crop_size=cfg.crop_size,
        meta=meta,
    )
