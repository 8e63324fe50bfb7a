"""The bilinear sampler (paper eq. 5, zero padding) and warp(), grid generation + sampling in one call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stn.runtime import ALIGN_CORNERS
from stn.transformers.grids import Transform, at_least_grid_dtype


def sample(input: Tensor, grid: Tensor) -> Tensor:
    """Bilinear sampling of input [B, C, H, W] at grid [B, H', W', 2] -> [B, C, H', W'] (or trilinear: volumes
    [B, C, D, H, W] at grid [B, D', H', W', 3] -> [B, C, D', H', W']).

    Corner convention: stn.runtime.ALIGN_CORNERS (its comment says why). Runs in float32 at least, with
    autocast off: both input and grid are cast up to one common float dtype (float64 stays float64).
    """
    spatial = input.dim() - 2
    if (
        spatial not in (2, 3)
        or grid.dim() != input.dim()
        or grid.shape[-1] != spatial
        or grid.shape[0] != input.shape[0]
    ):
        raise ValueError(
            f"sample expects input [B, C, H, W] and grid [B, H', W', 2] (or [B, C, D, H, W] and [B, D', H', W', 3]) "
            f"with the same B, got {tuple(input.shape)} and {tuple(grid.shape)}"
        )
    dtype = torch.promote_types(at_least_grid_dtype(input).dtype, at_least_grid_dtype(grid).dtype)
    with torch.autocast(device_type=input.device.type, enabled=False):
        return F.grid_sample(
            input.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS
        )


def warp(input: Tensor, transform: Transform, theta: Tensor, out_size: tuple[int, ...] | None = None) -> Tensor:
    """Warp each image of input [B, C, H, W] (or volume [B, C, D, H, W]) by its own theta [B, n_params]; out_size
    defaults to the input's (H, W) (or (D, H, W))."""
    size = tuple(input.shape[2:]) if out_size is None else out_size
    return sample(input, transform.grid(theta, size))
