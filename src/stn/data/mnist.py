"""Real MNIST (md5-verified .gz files, read through torchvision), from the internet or from an offline folder of the
four .gz files."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import MNIST
from torchvision.datasets.utils import check_integrity

from stn.atomic import atomic_path, folder_lock
from stn.data.download import DownloadError, Remote, download, urls_under

log = logging.getLogger(__name__)

MNIST_MD5 = dict(MNIST.resources)  # official file name -> md5, as torchvision verifies them
MNIST_FILES = tuple(MNIST_MD5)
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
# The extracted files: a 16-byte header + 28x28 bytes per image, an 8-byte header + 1 byte per label.
EXTRACTED_SIZES = {
    name: (16 + 784 * count if "images" in name else 8 + count)
    for name, count in zip(MNIST_FILES, (60_000, 60_000, 10_000, 10_000), strict=True)
}


class MnistNotFoundError(FileNotFoundError):
    """MNIST is neither in the data folder, nor in the offline source folder, nor downloadable."""


@dataclass(frozen=True)
class MnistArrays:
    """The raw digits: uint8 [N, 28, 28] images and int64 [N] labels of the official train and test sets."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def raw_folder(root: str | os.PathLike) -> Path:
    """Where torchvision keeps the .gz files and their extracted copies under `root`."""
    return Path(root) / "MNIST" / "raw"


def _expected_files_text() -> str:
    return ", ".join(MNIST_FILES)


def find_source_folder(source: str | os.PathLike) -> Path:
    """The folder holding the four .gz files: `source` itself or `source`/MNIST/raw."""
    source = Path(source)
    for candidate in (source, raw_folder(source)):
        if all((candidate / name).is_file() for name in MNIST_FILES):
            return candidate
    raise MnistNotFoundError(
        f"mnist_source={str(source)!r} does not hold the four MNIST files ({_expected_files_text()}), "
        f"neither directly nor under MNIST/raw/. Point data.mnist_source (env MNIST_SOURCE) at the folder "
        f"holding them, or set it to null to download them."
    )


def copy_from_source(source: str | os.PathLike, root: str | os.PathLike) -> None:
    """Copy the four .gz files from a (possibly read-only) folder into root/MNIST/raw, verifying their md5.

    Copies, not links: torchvision extracts next to each .gz, and the copy keeps working if the source moves.
    """
    source_folder = find_source_folder(source)
    target_folder = raw_folder(root)
    target_folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        target = target_folder / name
        if check_integrity(str(target), md5):
            continue
        if not check_integrity(str(source_folder / name), md5):
            raise MnistNotFoundError(
                f"{source_folder / name} does not have the official md5 {md5}; "
                f"replace it with the original MNIST file (see https://ossci-datasets.s3.amazonaws.com/mnist/)."
            )
        with atomic_path(target) as partial:
            shutil.copyfile(source_folder / name, partial)


def first_reason(error: DownloadError) -> str:
    """The download error's summary line with the first mirror's reason (the summary alone ends in a colon)."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    return " ".join(lines[:2])


def _download_missing(root: Path) -> None:
    """Download (md5-verified, atomically) the .gz files root/MNIST/raw lacks, from torchvision's mirrors."""
    raw = raw_folder(root)
    for name, md5 in MNIST_MD5.items():
        if check_integrity(str(raw / name), md5):
            continue
        remote = Remote(urls_under(MNIST.mirrors, name), name, md5=md5, published_in="torchvision's MNIST.resources")
        try:
            download(remote, raw / name)
        except DownloadError as error:
            raise MnistNotFoundError(
                f"MNIST is not in {raw} (expected {_expected_files_text()}) and could not be downloaded "
                f"({first_reason(error)}). Offline: set data.mnist_source (env MNIST_SOURCE) to a "
                f"folder holding the four official .gz files, or copy them into {raw}; online: allow network "
                f"access and they are downloaded (md5-verified)."
            ) from error


def _extract(root: Path) -> None:
    """Extract each (verified) .gz beside it, atomically, where the extracted file is missing or has another size
    (a damaged or half-written one is replaced: the .gz is the reference)."""
    raw = raw_folder(root)
    for name in MNIST_FILES:
        target = raw / name.removesuffix(".gz")
        if target.is_file() and target.stat().st_size == EXTRACTED_SIZES[name]:
            continue
        if target.exists():
            log.warning("%s is not the size of %s extracted: extracting it again", target, name)
        with atomic_path(target) as partial, gzip.open(raw / name) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out)


def _load_split(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    split = "train" if train else "test"
    try:
        dataset = MNIST(str(root), train=train, download=False)
    except (RuntimeError, ValueError, OSError) as error:
        raise MnistNotFoundError(
            f"the extracted MNIST {split} files in {raw_folder(root)} cannot be read ({error}): delete the extracted "
            f"(non-.gz) files there and run again; they are extracted afresh from the verified .gz files."
        ) from error
    if len(dataset.targets) != SPLIT_SIZES[split]:
        raise MnistNotFoundError(
            f"MNIST {split} set in {raw_folder(root)} has {len(dataset.targets)} images, expected "
            f"{SPLIT_SIZES[split]}: delete the extracted (non-.gz) files there and run again."
        )
    return dataset.data, dataset.targets.to(torch.int64)


def load_mnist(root: str | os.PathLike, source: str | os.PathLike | None = None) -> MnistArrays:
    """Load MNIST under `root` (downloading it, or copying it from `source` first when given), holding the data
    folder's lock: two commands preparing it at once never read each other's half-written files."""
    root = Path(root)
    with folder_lock(root):
        if source is not None:
            copy_from_source(source, root)
        _download_missing(root)
        _extract(root)
        train_images, train_labels = _load_split(root, train=True)
        test_images, test_labels = _load_split(root, train=False)
    return MnistArrays(train_images, train_labels, test_images, test_labels)
