"""Grid generators T_theta(G): for every TARGET pixel, the normalised (x, y) SOURCE coordinate to sample.

Coordinates follow stn.runtime.ALIGN_CORNERS (see the comment there). Grids are computed in float32
(stn.runtime.GRID_DTYPE) even under autocast; float32 is a floor, not a cast-down: a float64 theta keeps a
float64 grid, which is what gradcheck needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn.runtime import ALIGN_CORNERS, GRID_DTYPE


def at_least_grid_dtype(tensor: Tensor) -> Tensor:
    """Cast half/bfloat16 (or integer) tensors up to GRID_DTYPE; leave float32/float64 as they are."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.to(GRID_DTYPE)


def _normalised_coords(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised centres of `size` pixels along one axis, exactly as F.affine_grid places them."""
    if size <= 1:  # a single pixel sits at the centre in both conventions (as in F.affine_grid)
        return torch.zeros(size, device=device, dtype=dtype)
    coords = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    return coords if ALIGN_CORNERS else coords * (size - 1) / size


def target_points(out_size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Homogeneous target coordinates of an H x W output as rows [x; y; 1], shape [3, H*W], pixels row-major."""
    height, width = out_size
    ys = _normalised_coords(height, device, dtype)
    xs = _normalised_coords(width, device, dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y, torch.ones_like(grid_x)]).reshape(3, -1)


def _apply_to_points(matrices: Tensor, points: Tensor) -> Tensor:
    """matrices [B, R, C] times points [C, N] -> [B, R, N], as one [B*R, C] @ [C, N] matmul.

    Every family is linear in the target points up to its last step; keeping x and y as rows of one matmul
    (instead of a batched [N, C] @ [B, C, R]) is several times faster forward and backward.
    """
    batch, rows, cols = matrices.shape
    return (matrices.reshape(batch * rows, cols) @ points).view(batch, rows, -1)


def _check_out_size(out_size: tuple[int, int]) -> tuple[int, int]:
    size = tuple(int(s) for s in out_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"out_size must be (height, width) with both >= 1, got {out_size!r}")
    return size  # type: ignore[return-value]


class Transform(nn.Module, ABC):
    """A parametrised family of transformations; `grid` maps theta [B, n_params] to a sampling grid."""

    n_params: int

    @abstractmethod
    def identity(self) -> Tensor:
        """The theta (float32, shape [n_params]) of the identity transformation."""

    @abstractmethod
    def _source_rows(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        """Source coordinates as rows [B, 2 (x; y), H*W] from a validated float32/float64 theta."""

    def grid(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        """Normalised source (x, y) of each target pixel, [B, H, W, 2], float32 (float64 if theta is)."""
        if theta.dim() != 2 or theta.shape[1] != self.n_params:
            raise ValueError(
                f"{type(self).__name__} expects theta of shape [batch, {self.n_params}], got {tuple(theta.shape)}"
            )
        out_size = _check_out_size(out_size)
        with torch.autocast(device_type=theta.device.type, enabled=False):
            rows = self._source_rows(at_least_grid_dtype(theta), out_size)
        return rows.transpose(1, 2).reshape(-1, *out_size, 2)

    def forward(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        return self.grid(theta, out_size)


class AffineTransform(Transform):
    """6 params, the row-major 2x3 matrix [a11 a12 tx; a21 a22 ty] exactly as F.affine_grid's theta."""

    n_params = 6

    def identity(self) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=GRID_DTYPE)

    def matrix(self, theta: Tensor) -> Tensor:
        """The [B, 2, 3] affine matrices of theta."""
        return theta.view(-1, 2, 3)

    def _source_rows(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        return _apply_to_points(self.matrix(theta), target_points(out_size, theta.device, theta.dtype))


class AttentionTransform(AffineTransform):
    """Isotropic scale + translation [[s, 0, tx], [0, s, ty]]; with `fixed_scale`, theta is [tx, ty] only."""

    def __init__(self, fixed_scale: float | None = None) -> None:
        super().__init__()
        if fixed_scale is not None and fixed_scale <= 0:
            raise ValueError(f"fixed_scale must be positive (or None to learn it), got {fixed_scale}")
        self.fixed_scale = fixed_scale
        self.n_params = 3 if fixed_scale is None else 2

    def identity(self) -> Tensor:
        if self.fixed_scale is None:
            return torch.tensor([1.0, 0.0, 0.0], dtype=GRID_DTYPE)
        return torch.zeros(2, dtype=GRID_DTYPE)

    def matrix(self, theta: Tensor) -> Tensor:
        if self.fixed_scale is None:
            scale, translation = theta[:, :1], theta[:, 1:]
        else:
            scale, translation = torch.full_like(theta[:, :1], self.fixed_scale), theta
        zero = torch.zeros_like(scale)
        rows = [scale, zero, translation[:, :1], zero, scale, translation[:, 1:]]
        return torch.cat(rows, dim=1).view(-1, 2, 3)

    def extra_repr(self) -> str:
        return f"fixed_scale={self.fixed_scale}"


class Affine3DTransform(Transform):
    """3D affine (Appendix A.3): 12 params, the row-major 3x4 matrix of F.affine_grid's 5-D theta, mapping each
    target voxel's normalised (x, y, z) to its source; grids are [B, D, H, W, 3] for volumes [B, C, D, H, W]."""

    n_params = 12

    def identity(self) -> Tensor:
        return torch.eye(3, 4, dtype=GRID_DTYPE).flatten()

    def matrix(self, theta: Tensor) -> Tensor:
        """The [B, 3, 4] affine matrices of theta."""
        return theta.view(-1, 3, 4)

    def grid(self, theta: Tensor, out_size: tuple[int, int, int]) -> Tensor:
        """Normalised source (x, y, z) of each target voxel, [B, D, H, W, 3], float32 (float64 if theta is)."""
        if theta.dim() != 2 or theta.shape[1] != self.n_params:
            raise ValueError(f"Affine3DTransform expects theta of shape [batch, 12], got {tuple(theta.shape)}")
        size = tuple(int(s) for s in out_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"out_size must be (depth, height, width) with all >= 1, got {out_size!r}")
        with torch.autocast(device_type=theta.device.type, enabled=False):
            matrix = self.matrix(at_least_grid_dtype(theta))
            return F.affine_grid(matrix, [len(theta), 1, *size], align_corners=ALIGN_CORNERS)

    def _source_rows(self, theta: Tensor, out_size: tuple[int, int, int]) -> Tensor:
        return self.grid(theta, out_size).flatten(1, 3).transpose(1, 2)


class ProjectiveTransform(Transform):
    """Plane projective: 8 params h11 h12 h13 h21 h22 h23 h31 h32 (h33 = 1).

    x' = (h11 x + h12 y + h13) / d, y' = (h21 x + h22 y + h23) / d, d = h31 x + h32 y + 1.
    |d| is kept >= `min_denominator` with its sign (d = 0 counts as positive), and the grid is bounded to
    [-clamp, clamp]. The default clamp of 3 changes nothing visible: with ALIGN_CORNERS and any side >= 2 pixels,
    a coordinate beyond +-3 lies more than one pixel outside the image, where zero padding samples exactly 0.
    So huge parameters and vanishing denominators give finite outputs and gradients.
    """

    n_params = 8

    def __init__(self, min_denominator: float = 1e-2, clamp: float = 3.0) -> None:
        super().__init__()
        if min_denominator <= 0 or clamp <= 0:
            raise ValueError(f"min_denominator and clamp must be positive, got {min_denominator} and {clamp}")
        self.min_denominator = min_denominator
        self.clamp = clamp

    def identity(self) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=GRID_DTYPE)

    def matrix(self, theta: Tensor) -> Tensor:
        """The [B, 3, 3] homographies of theta (h33 = 1)."""
        return torch.cat([theta, torch.ones_like(theta[:, :1])], dim=1).view(-1, 3, 3)

    def _source_rows(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        projected = _apply_to_points(self.matrix(theta), target_points(out_size, theta.device, theta.dtype))
        numerator, denominator = projected[:, :2], projected[:, 2:]
        magnitude = denominator.abs().clamp(min=self.min_denominator)
        reciprocal = torch.where(denominator >= 0, 1.0, -1.0) / magnitude  # 1/d with |d| >= eps, sign kept
        # Clamped points get zero gradient and the others have |numerator| <= clamp * max(|d|, eps), so the
        # backward pass stays finite too (as long as the numerator itself does not overflow: |h| below ~1e37).
        return (numerator * reciprocal).clamp(-self.clamp, self.clamp)

    def extra_repr(self) -> str:
        return f"min_denominator={self.min_denominator}, clamp={self.clamp}"


def tps_kernel(squared_distance: Tensor) -> Tensor:
    """TPS radial basis U(r) = r^2 log r^2, with U(0) = 0 (the limit of 0 * log 0)."""
    safe = squared_distance.clamp(min=torch.finfo(squared_distance.dtype).tiny)
    return torch.where(squared_distance > 0, squared_distance * safe.log(), torch.zeros_like(squared_distance))


class TPSTransform(Transform):
    """Thin-plate spline with grid_size x grid_size control points on a regular grid over [-1, 1]^2.

    The control grid is the TARGET side; theta is the SOURCE (x, y) of each control point, flattened
    [x0, y0, x1, y1, ...] in row-major order of the control grid (y outer, x inner). The TPS system
    [[K, P], [P^T, 0]] is inverted once in float64; since the spline is linear in theta, each output size
    reduces to one fixed [H*W, K] matrix (cached per size, device and dtype), so grid() is a single matmul.
    """

    def __init__(self, grid_size: int = 4) -> None:
        super().__init__()
        if int(grid_size) != grid_size or grid_size < 2:
            raise ValueError(f"TPS grid_size must be an integer >= 2 (n x n control points), got {grid_size!r}")
        self.grid_size = int(grid_size)
        self.n_params = 2 * self.grid_size**2
        coords = torch.linspace(-1.0, 1.0, self.grid_size, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.control_points = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # [K, 2], float64
        # Plain attributes, not buffers: derived from grid_size (nothing to save) and must stay float64 on the
        # CPU whatever .to()/.half() does to the module; per-device copies live in the cache.
        self._system_inverse = torch.linalg.inv(self._system(self.control_points))
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    def _features(self, points: Tensor) -> Tensor:
        """[U(|p - c_k|) for each control point k, 1, x, y] for points [N, 2] -> [N, K + 3]."""
        squared = (points[:, None, :] - self.control_points[None, :, :]).square().sum(-1)
        return torch.cat([tps_kernel(squared), torch.ones_like(points[:, :1]), points], dim=1)

    def _system(self, points: Tensor) -> Tensor:
        features = self._features(points)  # [K, K + 3] = [K | P]
        affine_part = features[:, -3:]
        zeros = torch.zeros(3, 3, dtype=points.dtype)
        return torch.cat([features, torch.cat([affine_part.T, zeros], dim=1)], dim=0)

    def identity(self) -> Tensor:
        return self.control_points.reshape(-1).to(GRID_DTYPE)

    def _precomputed(self, out_size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """(M^T [K, H*W], identity rows [2, H*W], control points [2K]) for one output size, device and dtype.

        M is the spline's interpolation matrix: target point p_i goes to sum_k M_ik source_k.
        """
        key = (*out_size, torch.device(device), dtype)
        if key not in self._cache:
            points = target_points(out_size, torch.device("cpu"), torch.float64)[:2].T
            matrix = self._features(points) @ self._system_inverse[:, : self.control_points.shape[0]]
            self._cache[key] = (
                matrix.T.to(device=device, dtype=dtype).contiguous(),
                target_points(out_size, device, dtype)[:2],  # bit-identical to the other families' identity grid
                self.control_points.reshape(-1).to(device=device, dtype=dtype),
            )
        return self._cache[key]

    def _source_rows(self, theta: Tensor, out_size: tuple[int, int]) -> Tensor:
        matrix_t, identity_rows, control = self._precomputed(out_size, theta.device, theta.dtype)
        # A TPS reproduces affine maps, so the identity map plus the spline of the control-point displacements is
        # the same spline; written this way the identity theta gives exactly the identity grid, free of the
        # matmul's float32 round-off.
        displacement = (theta - control).view(theta.shape[0], -1, 2).transpose(1, 2)  # [B, 2, K]
        return identity_rows + _apply_to_points(displacement, matrix_t)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}"


TRANSFORMS: dict[str, type[Transform]] = {
    "affine": AffineTransform,
    "attention": AttentionTransform,
    "projective": ProjectiveTransform,
    "tps": TPSTransform,
}


def make_transform(name: str, **kwargs: object) -> Transform:
    """Build a transform family by name: affine, attention, projective or tps."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; valid names: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](**kwargs)
