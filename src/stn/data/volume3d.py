"""The 3D transformer's data (Appendix A.3): an MNIST digit extruded into a volume, then turned and moved at random.

Volumes are [N, 1, D, H, W] with x along W, y along H and z (depth) along D; turning and moving is one 3D affine warp
of the extruded volume (stn.transformers.Affine3DTransform), so it follows the project's corner convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stn.runtime import ALIGN_CORNERS
from stn.transformers import Affine3DTransform, warp


def extrude(digits: Tensor, side: int, thickness: int) -> Tensor:
    """Digits [N, 28, 28] -> float volumes [N, 1, side, side, side]: the digit at the centre of every depth slice
    in the middle `thickness` slices (a digit-shaped slab), zero elsewhere."""
    count, height, width = digits.shape
    if max(height, width, thickness) > side:
        raise ValueError(f"a {height}x{width} digit {thickness} slices thick does not fit a {side}^3 volume")
    volume = torch.zeros(count, 1, side, side, side, dtype=torch.float32, device=digits.device)
    top, left, front = (side - height) // 2, (side - width) // 2, (side - thickness) // 2
    slab = digits.float()[:, None, None].expand(-1, 1, thickness, -1, -1)
    volume[:, :, front : front + thickness, top : top + height, left : left + width] = slab
    return volume


def rotation(angles_deg: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] (x, y, z order) of angles [N, 3] about the x, y and z axes, applied x first."""
    cos, sin = torch.cos(torch.deg2rad(angles_deg)), torch.sin(torch.deg2rad(angles_deg))
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(*rows: Tensor) -> Tensor:
        return torch.stack(rows, 1).view(-1, 3, 3)

    about_x = matrix(one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0])
    about_y = matrix(cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1])
    about_z = matrix(cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one)
    return about_z @ about_y @ about_x


def place(volumes: Tensor, angles_deg: Tensor, offsets_vox: Tensor) -> Tensor:
    """Turn each volume about its centre by angles [N, 3] (degrees about x, y, z) and move it by offsets [N, 3]
    (voxels along x, y, z): the target voxel p samples the source at R^T (p - t) (normalised coordinates)."""
    side = volumes.shape[-1]
    half = (side - 1) / 2 if ALIGN_CORNERS else side / 2  # voxels per normalised unit
    inverse = rotation(angles_deg.float()).transpose(1, 2)
    shift = -(inverse @ (offsets_vox.float() / half)[..., None])
    theta = torch.cat([inverse, shift], 2).flatten(1)
    return warp(volumes, Affine3DTransform(), theta)


def sample_placements(count: int, max_angle_deg: float, max_offset_vox: float, generator: torch.Generator):
    """Uniform angles in [-max, max] about each axis and uniform offsets in [-max, max] voxels along each axis."""
    angles = (torch.rand(count, 3, generator=generator) * 2 - 1) * max_angle_deg
    offsets = (torch.rand(count, 3, generator=generator) * 2 - 1) * max_offset_vox
    return angles, offsets
