"""Image transforms the datasets share: resampling filters and a process pool for building stored sets, and the
per-sample random crops (+ flips) and centre crops drawn on the device while training."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

# ---------------------------------------------------------------- parallel image work while building a stored set


def map_images(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    desc: str,
    progress: bool,
    min_items: int = 64,
    unit: str = "img",
) -> Iterable[Any]:
    """function(item) for every item, in order; in `workers` processes when workers > 1 and len(items) >= min_items."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress)
    if workers <= 1 or len(items) < min_items:
        for item in items:
            yield function(item)
            bar.update()
    else:
        # fork where there is one (as torch's DataLoader workers; the workers only use PIL, h5py and numpy): spawn
        # would re-import the caller's __main__, which fails from a notebook or stdin
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        chunksize = max(1, min(64, len(items) // (4 * workers)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(function, items, chunksize=chunksize):
                yield result
                bar.update()
    bar.close()


def default_workers(workers: int | None) -> int:
    return max(1, min(os.cpu_count() or 1, 8)) if workers is None else max(1, int(workers))


# ---------------------------------------------------------------- on-device crops


class CropParams(NamedTuple):
    top: Tensor  # int64 [N]
    left: Tensor  # int64 [N]
    flip: Tensor  # bool [N]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def apply_crops(images: Tensor, params: CropParams, size: int | Sequence[int]) -> Tensor:
    """images[n, :, top:top+h, left:left+w] per sample (mirrored left-right where flip), as one gather."""
    height, width = _pair(size)
    device = images.device
    rows = params.top[:, None] + torch.arange(height, device=device)
    steps = torch.arange(width, device=device)
    cols = params.left[:, None] + torch.where(params.flip[:, None], width - 1 - steps, steps)
    index = torch.arange(images.shape[0], device=device)[:, None, None]
    return images[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_crops(
    images: Tensor,
    size: int | Sequence[int],
    generator: torch.Generator | None = None,
    *,
    flip_prob: float = 0.0,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, CropParams]:
    """A size x size crop of every image at its own uniform random position (and a left-right flip with
    probability flip_prob), drawn on the images' device: `generator` must live there too (or be None)."""
    n, _, h, w = images.shape
    height, width = _pair(size)
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the images ({h}x{w})")
    device = images.device
    top = torch.randint(0, h - height + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - width + 1, (n,), generator=generator, device=device)
    if flip_prob > 0:
        flip = torch.rand(n, generator=generator, device=device) < flip_prob
    else:
        flip = torch.zeros(n, dtype=torch.bool, device=device)
    params = CropParams(top, left, flip)
    crops = apply_crops(images, params, (height, width))
    return (crops, params) if return_params else crops


def center_crop(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """The central size x size crop of every image (offsets as torchvision's CenterCrop)."""
    h, w = images.shape[-2:]
    height, width = _pair(size)
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the images ({h}x{w})")
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return images[..., top : top + height, left : left + width]


class CropAugmented:
    """The Splits hooks of datasets stored a little larger than the model's input (SVHN, CUB): random crop_size
    crops (+ left-right flips with probability flip_prob) while training, the centre crop at evaluation."""

    crop_size: int
    flip_prob: float = 0.0

    def train_transform(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random crop_size crops, one position (and flip) per image, on the images' device."""
        return random_crops(images, self.crop_size, generator, flip_prob=self.flip_prob)

    def eval_transform(self, images: Tensor) -> Tensor:
        """The centre crop_size crop ([open] test protocol: one centre crop)."""
        return center_crop(images, self.crop_size)
