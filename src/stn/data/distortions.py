"""Distorted MNIST (PAPER.md §2): per-sample random parameters and their rendering, batched over images.

Every digit gets its own parameters, drawn for a whole split at once from one seeded torch.Generator (CPU or
CUDA), and is rendered with ONE warp of the project's own transformer (stn.transformers) from the 28x28 source
straight into the output canvas. A whole-pixel translation (TC: angle 0, scale 1, integer frame offsets) is an
exact copy, so it is rendered as the same batched paste that adds the clutter, with identical images. The same
code serves the stored sets and the per-epoch redraw on the device.

Geometry, in pixels (x right, y down; pixel centres at integers; ALIGN_CORNERS=True makes normalised -1/+1 the
centres of the corner pixels, so a half-width of (size - 1) / 2 pixels spans one normalised unit):
- similarity (R, RTS, TC): the digit is rotated by `angle_deg` (positive = counter-clockwise on screen), scaled
  by `scale` about the centre of its 28x28 frame, and that centre lands `offset_px` (x, y) from the canvas centre.
  Placement 'frame': the digit turns inside its own `frame_px` square frame (what leaves the frame is cut, as an
  image rotation that keeps the image size does), and the scaled, unturned frame lies inside the canvas.
- projective (P): the digit is scaled by `scale` about the centre, then the homography used by the warp maps each
  OUTPUT corner (the corner pixel centre c_k) to the point of the scaled image displaced by `corner_offsets_px[k]`
  (output pixels): the output corner k shows what sat at c_k + delta_k after scaling. Corners in the order
  (-1,-1), (+1,-1), (-1,+1), (+1,+1), i.e. top-left, top-right, bottom-left, bottom-right. `corner_move`
  'per_axis': each coordinate of delta_k ~ N(0, corner_std_px); 'diagonal': delta_k lies on corner k's diagonal
  (outward positive) with length ~ N(0, corner_std_px), i.e. +-N/sqrt(2) per axis; 'any_direction': delta_k has
  length ~ N(0, corner_std_px) in a uniformly random direction (std corner_std_px/sqrt(2) per axis, like the
  diagonal, but free to turn and shear the corners). With `convex_only`, draws whose
  displaced corners are not a convex quadrilateral are redrawn (they would fold the image).
- tps (E): grid_size x grid_size control points g_k (row-major, y outer) and offsets delta_k =
  `control_offsets_px[k]`, read as `elastic_direction` 'backward': output point g_k shows the scaled digit at
  g_k + delta_k (the control grid of stn.transformers.TPSTransform), or 'forward': the digit's point at g_k is
  sent to g_k + delta_k, a TPS fitted through the moved points. `elastic_grid` 'canvas' spreads g_k over the canvas,
  'digit' over the scaled digit's 28x28 frame; `elastic_offsets` 'output' takes delta_k in output pixels, 'digit'
  in the digit's own pixels (scaled with it).
- clutter (TC): `clutter_count` patches of `clutter_size`^2 pixels, cropped at `clutter_crop_xy` (top-left, source
  pixels) from pool digit `clutter_source`, pasted at `clutter_paste_xy` (top-left, canvas pixels); added to the
  rendered digit (whole grey levels), then the sum is clamped to 255.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache

import torch
from torch import Tensor

from stn.transformers import AffineTransform, ProjectiveTransform, TPSTransform, Transform, warp
from stn.transformers.grids import target_points
from stn.transformers.sampler import sample

SOURCE_SIZE = 28  # MNIST digits
SOURCE_HALF = (SOURCE_SIZE - 1) / 2  # pixels per normalised unit of the source (ALIGN_CORNERS=True)
TRANSFORM_KEYS = {
    "similarity": {"angle_deg", "scale", "placement", "frame_px", "integer_offsets"},
    "projective": {"scale", "corner_std_px", "corner_move", "convex_only"},
    "tps": {"scale", "grid_size", "control_std_px", "elastic_direction", "elastic_grid", "elastic_offsets"},
}
CLUTTER_KEYS = {"clutter_count", "clutter_size"}
PLACEMENTS = ("centre", "ink", "frame")
CORNER_MOVES = ("per_axis", "diagonal", "any_direction")
ELASTIC_READINGS = {
    "elastic_direction": ("backward", "forward"),
    "elastic_grid": ("canvas", "digit"),
    "elastic_offsets": ("output", "digit"),
}
MAX_REDRAW_ROUNDS = 100  # convex_only: each round redraws the rejected corner sets (about 0.1% at 5 px)

Params = dict[str, Tensor]


@dataclass(frozen=True)
class DistortionSpec:
    """Everything that defines how a digit is distorted (the `distortion` block of configs/data/mnist_*.yaml)."""

    canvas: int
    transform: str
    angle_deg: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    placement: str = "centre"
    frame_px: int = SOURCE_SIZE
    integer_offsets: bool = False
    corner_std_px: float = 0.0
    corner_move: str = "per_axis"
    convex_only: bool = False
    grid_size: int = 4
    control_std_px: float = 0.0
    elastic_direction: str = "backward"
    elastic_grid: str = "canvas"
    elastic_offsets: str = "output"
    clutter_count: int = 0
    clutter_size: int = 6

    @classmethod
    def from_config(cls, canvas: int, distortion: Mapping) -> DistortionSpec:
        """Validate a config's `distortion` mapping (unknown or misplaced keys are errors, not ignored)."""
        values = dict(distortion)
        transform = values.pop("transform", None)
        if transform not in TRANSFORM_KEYS:
            raise ValueError(f"distortion.transform must be one of {sorted(TRANSFORM_KEYS)}, got {transform!r}")
        allowed = TRANSFORM_KEYS[transform] | CLUTTER_KEYS
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(
                f"distortion keys {sorted(unknown)} do not apply to transform {transform!r}; allowed: {sorted(allowed)}"
            )
        for field in fields(cls):  # one type per field, so 5 and 5.0 give the same file-name hash
            if field.name not in values or isinstance(field.default, bool | str):
                continue
            value = values[field.name]
            if isinstance(field.default, tuple):
                low, high = (float(v) for v in value)
                if low > high:
                    raise ValueError(f"distortion.{field.name} must be [low, high] with low <= high, got {value}")
                values[field.name] = (low, high)
            elif isinstance(field.default, int) and float(value) != int(value):
                raise ValueError(f"distortion.{field.name} must be a whole number, got {value}")
            else:
                values[field.name] = type(field.default)(value)
        spec = cls(canvas=int(canvas), transform=transform, **values)
        spec._check()
        return spec

    def _check(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"distortion.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.frame_px < SOURCE_SIZE:
            raise ValueError(f"distortion.frame_px must hold the {SOURCE_SIZE}px digit, got {self.frame_px}")
        if self.corner_move not in CORNER_MOVES:
            raise ValueError(f"distortion.corner_move must be one of {CORNER_MOVES}, got {self.corner_move!r}")
        for key, readings in ELASTIC_READINGS.items():
            if getattr(self, key) not in readings:
                raise ValueError(f"distortion.{key} must be one of {readings}, got {getattr(self, key)!r}")
        if self.scale[0] <= 0:
            raise ValueError(f"distortion.scale must be positive, got {self.scale}")
        if min(self.corner_std_px, self.control_std_px) < 0 or self.clutter_count < 0:
            raise ValueError("distortion std's and clutter_count must be non-negative")
        if not 1 <= self.clutter_size <= min(SOURCE_SIZE, self.canvas):
            raise ValueError(f"clutter_size must be in [1, {min(SOURCE_SIZE, self.canvas)}], got {self.clutter_size}")
        if self.grid_size < 2:
            raise ValueError(f"distortion.grid_size must be at least 2 (control points per side), got {self.grid_size}")
        if self.canvas < 2:
            raise ValueError(f"canvas must be at least 2 pixels, got {self.canvas}")

    def as_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists), for file attributes and the file-name hash."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @property
    def canvas_half(self) -> float:
        return (self.canvas - 1) / 2

    @property
    def regular_elastic_grid(self) -> bool:
        """The elastic warp's output control points are TPSTransform's regular grid over the canvas."""
        return self.elastic_direction == "backward" and self.elastic_grid == "canvas"

    @property
    def whole_pixel_translation(self) -> bool:
        """Every digit is only shifted by whole pixels with its frame inside the canvas: the warp is an exact copy."""
        no_turn_or_scale = self.angle_deg == (0.0, 0.0) and self.scale == (1.0, 1.0)
        return (
            self.transform == "similarity" and no_turn_or_scale and self.integer_offsets and self.placement == "frame"
        )


@lru_cache(maxsize=8)
def _transform(kind: str, grid_size: int) -> Transform:
    """One transform object per family (the TPS one caches its interpolation matrices)."""
    if kind == "similarity":
        return AffineTransform()
    if kind == "projective":
        return ProjectiveTransform()
    return TPSTransform(grid_size)


def unit_grid(n: int, device: torch.device | str = "cpu") -> Tensor:
    """[n*n, 2] float64 (x, y) points of a regular n x n grid over [-1, 1]^2, row-major with y outer."""
    coords = torch.linspace(-1.0, 1.0, n, dtype=torch.float64, device=device)
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


# ---------------------------------------------------------------- parameters -> theta (float64 math, float32 out)


def _rotation_inverse(angle_deg: Tensor) -> Tensor:
    """[N, 2, 2] inverse of the on-screen counter-clockwise rotation (y down): maps output offsets to source."""
    angle = torch.deg2rad(angle_deg.double())
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def similarity_theta(spec: DistortionSpec, params: Params) -> Tensor:
    """Affine theta [N, 6] mapping canvas (target) coordinates to the source digit's."""
    scale = params["scale"].double()
    inverse = _rotation_inverse(params["angle_deg"]) / (scale * SOURCE_HALF)[:, None, None]
    matrix = inverse * spec.canvas_half
    translation = -(inverse @ params["offset_px"].double()[:, :, None])
    return torch.cat([matrix, translation], dim=2).reshape(-1, 6).float()


def _source_points(spec: DistortionSpec, scale: Tensor, offsets_px: Tensor, n: int) -> Tensor:
    """Normalised source (x, y) [N, n*n, 2] that output grid point g_k shows: (g_k + offset_k) / scale."""
    grid = unit_grid(n, offsets_px.device) * spec.canvas_half  # output pixels from the centre
    return (grid + offsets_px.double()) / (scale.double() * SOURCE_HALF)[:, None, None]


def projective_theta(spec: DistortionSpec, params: Params) -> Tensor:
    """Projective theta [N, 8] (h33 = 1) mapping the 4 output corners to their displaced source points."""
    target = unit_grid(2, params["scale"].device).expand(len(params["scale"]), -1, -1)
    source = _source_points(spec, params["scale"], params["corner_offsets_px"], 2)
    x, y = target[..., 0], target[..., 1]
    sx, sy = source[..., 0], source[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # Two linear equations per correspondence, from sx = (h11 x + h12 y + h13) / (h31 x + h32 y + 1), same for sy.
    rows_x = torch.stack([x, y, one, zero, zero, zero, -x * sx, -y * sx], -1)
    rows_y = torch.stack([zero, zero, zero, x, y, one, -x * sy, -y * sy], -1)
    system = torch.cat([rows_x, rows_y], dim=1)  # [N, 8, 8]
    return torch.linalg.solve(system, torch.cat([sx, sy], dim=1)).float()


def homography_denominators(theta: Tensor) -> Tensor:
    """[N, 4] denominators h31 x + h32 y + 1 of projective thetas at the 4 output corners."""
    return theta[:, 6:8] @ unit_grid(2, theta.device).to(theta.dtype).T + 1


def tps_theta(spec: DistortionSpec, params: Params) -> Tensor:
    """TPS theta [N, 2 * grid_size^2]: the source (x, y) of each regular output control point, flattened."""
    if not spec.regular_elastic_grid:
        raise ValueError("tps_theta needs the regular output control grid (elastic backward over the canvas)")
    source = elastic_points(spec, params)[1]
    return source.reshape(len(source), -1).float()


def elastic_points(spec: DistortionSpec, params: Params) -> tuple[Tensor, Tensor]:
    """Normalised float64 (output, source) points [N, K, 2] through which the elastic TPS passes (any reading)."""
    scale = params["scale"].double()[:, None, None]
    half = spec.canvas_half if spec.elastic_grid == "canvas" else SOURCE_HALF * scale
    grid = (unit_grid(spec.grid_size, scale.device) * half).expand(len(scale), -1, -1)  # output px from the centre
    offsets = params["control_offsets_px"].double() * (1.0 if spec.elastic_offsets == "output" else scale)
    output, source = (grid, grid + offsets) if spec.elastic_direction == "backward" else (grid + offsets, grid)
    return output / spec.canvas_half, source / (scale * SOURCE_HALF)


def fitted_tps_grid(output: Tensor, source: Tensor, size: int) -> Tensor:
    """Sampling grid [N, size, size, 2] of the TPS through output -> source points ([N, K, 2], normalised), per
    sample, for control points that are not TPSTransform's fixed grid.

    The system is solved in float64; the spline is evaluated over the canvas in float32 (1e-4 px off, far below
    a grey level) as few passes as possible: this runs for every training epoch under redraw.
    """
    n, k = output.shape[:2]
    affine = torch.cat([torch.ones_like(output[..., :1]), output], -1)  # [N, K, 3]
    squared = (output[:, :, None] - output[:, None]).square().sum(-1)
    system = torch.cat(
        [torch.cat([torch.xlogy(squared, squared), affine], 2), torch.cat([affine.mT, output.new_zeros(n, 3, 3)], 2)], 1
    )
    coefficients = torch.linalg.solve(system, torch.cat([source, source.new_zeros(n, 3, 2)], 1)).float()
    points = target_points((size, size), output.device, torch.float32)[:2].T  # [H*W, 2]
    control = output.float()
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one matmul per image (much faster than broadcasting differences)
    rows = torch.cat([points, points.square().sum(1, keepdim=True), torch.ones_like(points[:, :1])], 1)  # [H*W, 4]
    cols = torch.cat([-2 * control, torch.ones_like(control[..., :1]), control.square().sum(2, keepdim=True)], 2)
    squared = (rows @ cols.mT).clamp_(min=torch.finfo(torch.float32).tiny)  # [N, H*W, K]
    grid = (squared * squared.log()) @ coefficients[:, :k]
    grid += coefficients[:, k : k + 1] + points @ coefficients[:, k + 1 :]
    return grid.view(n, size, size, 2)


THETA = {"similarity": similarity_theta, "projective": projective_theta, "tps": tps_theta}


# ---------------------------------------------------------------- placement (where the digit may go)


def _ink_points(digits: Tensor) -> tuple[Tensor, Tensor]:
    """Points that bound the ink ([N, P, 2] px from the frame centre) and which of them count ([N, P]).

    A linear function over a row of pixels peaks at the row's ends, so the leftmost and rightmost ink pixel of each
    row bound the rotated, scaled ink exactly.
    """
    device = digits.device
    inked = (digits > 0).view(torch.uint8)
    cols = torch.arange(SOURCE_SIZE, device=device, dtype=torch.uint8)
    left = inked.argmax(-1)  # first ink pixel of each row (argmax returns the first maximum)
    right = (inked * cols).amax(-1)
    valid = inked.amax(-1).bool()
    blank = ~valid.any(1, keepdim=True)  # a blank image is placed by its frame
    left, right, valid = left.masked_fill(blank, 0), right.masked_fill(blank, SOURCE_SIZE - 1), valid | blank
    rows = torch.arange(SOURCE_SIZE, device=device).expand_as(left)
    xs = torch.cat([left, right], 1).double()
    ys = torch.cat([rows, rows], 1).double()
    return torch.stack([xs, ys], -1) - SOURCE_HALF, valid.repeat(1, 2)


def digit_extent(spec: DistortionSpec, digits: Tensor, angle_deg: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Per-axis min and max ([N, 2] each, canvas px from the digit's frame centre) of the rotated, scaled digit.

    'ink' adds the bilinear footprint (one source pixel around each ink pixel centre, rotated and scaled), so
    every non-zero output pixel lies within the extent; 'frame' bounds the pixel centres of the scaled, unturned
    frame_px frame (the digit turns inside it).
    """
    if spec.placement == "frame":
        half = (scale.double() * (spec.frame_px - 1) / 2)[:, None].expand(-1, 2)
        return -half, half
    points, valid = _ink_points(digits)
    angle = torch.deg2rad(angle_deg.double())[:, None]
    cos, sin, s = angle.cos(), angle.sin(), scale.double()[:, None]
    moved = torch.stack(
        [s * (cos * points[..., 0] + sin * points[..., 1]), s * (cos * points[..., 1] - sin * points[..., 0])], -1
    )  # forward of _rotation_inverse
    big = torch.tensor(float("inf"), dtype=moved.dtype, device=moved.device)
    low = torch.where(valid[..., None], moved, big).amin(1)
    high = torch.where(valid[..., None], moved, -big).amax(1)
    footprint = s * (cos.abs() + sin.abs())
    return low - footprint, high + footprint


def placement_range(spec: DistortionSpec, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Allowed offsets [N, 2] (min, max; px from the canvas centre) that keep the extent inside the canvas.

    'frame': the frame's pixel centres lie on canvas pixels. 'ink': the footprint is open, so it may reach the
    centre of the pixel just outside the canvas (where it is 0): every pixel the digit touches is a canvas pixel.
    """
    border = 1.0 if spec.placement == "ink" else 0.0
    first, last = -low - spec.canvas_half - border, spec.canvas_half + border - high
    if (last < first).any():
        worst = (high - low).max().item()
        raise ValueError(
            f"a digit spans {worst:.1f} px but the canvas has {spec.canvas} px: enlarge input_shape or lower "
            f"distortion.scale"
        )
    return first, last


def _offsets(spec: DistortionSpec, digits: Tensor, angle: Tensor, scale: Tensor, uniform: Tensor) -> Tensor:
    """Offsets uniform over the allowed range; with integer_offsets, uniform over whole-pixel positions."""
    first, last = placement_range(spec, *digit_extent(spec, digits, angle, scale))
    if not spec.integer_offsets:
        return first + uniform * (last - first)
    # Whole pixels: the frame's top-left pixel lands on a canvas pixel, so a pure translation copies exactly.
    shift = spec.canvas_half - SOURCE_HALF
    low, high = torch.ceil(first + shift), torch.floor(last + shift)
    count = high - low + 1
    if (count < 1).any():
        raise ValueError(f"no whole-pixel position keeps every digit inside the {spec.canvas}px canvas")
    return low + torch.minimum(torch.floor(uniform * count), count - 1) - shift


# ---------------------------------------------------------------- sampling


def _uniform(bounds: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    low, high = bounds
    draw = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return low + (high - low) * draw


def _normal(std: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return std * torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def _integers(high: int | Tensor, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, high, shape, generator=generator, device=generator.device)


def sample_params(
    spec: DistortionSpec,
    digits: Tensor,
    generator: torch.Generator,
    pool_size: int = 0,
    pool_index: Tensor | None = None,
) -> Params:
    """Draw every sample's parameters for digits [N, 28, 28] uint8 (on the generator's device).

    Clutter comes from a pool of `pool_size` digits; `pool_index` [N] (each digit's own index in the pool, or
    None when the digits are not in it) makes every patch come from ANOTHER digit. Parameters are float32
    (integer positions int64): rendering uses exactly what is stored.
    """
    n = len(digits)
    params: Params = {"scale": _uniform(spec.scale, (n,), generator).float()}
    if spec.transform == "similarity":
        params["angle_deg"] = _uniform(spec.angle_deg, (n,), generator).float()
        if spec.placement == "centre":
            params["offset_px"] = torch.zeros(n, 2, device=digits.device)
        else:
            uniform = _uniform((0.0, 1.0), (n, 2), generator)
            params["offset_px"] = _offsets(spec, digits, params["angle_deg"], params["scale"], uniform).float()
    elif spec.transform == "projective":
        params["corner_offsets_px"] = _corner_offsets(spec, params["scale"], generator)
    else:
        params["control_offsets_px"] = _normal(spec.control_std_px, (n, spec.grid_size**2, 2), generator)
    if spec.clutter_count:
        params.update(_clutter_params(spec, n, generator, pool_size, pool_index))
    return params


def _corner_offsets(spec: DistortionSpec, scale: Tensor, generator: torch.Generator) -> Tensor:
    """N(0, corner_std_px) corner displacements [N, 4, 2]; with convex_only, folding draws are redrawn.

    A draw folds when the displaced corners are not a convex quadrilateral: the homography's denominator then
    crosses 0 inside the canvas (it is 1 at the centre), and the digit is smeared through infinity. Requiring
    it to stay above the sampler's min_denominator at the corners (it is linear, so everywhere) keeps every
    image an exact, unclamped homography.
    """
    offsets = _draw_corner_offsets(spec, len(scale), generator)
    if not spec.convex_only:
        return offsets
    floor = _transform("projective", spec.grid_size).min_denominator
    for _ in range(MAX_REDRAW_ROUNDS):
        theta = projective_theta(spec, {"scale": scale, "corner_offsets_px": offsets})
        folded = (homography_denominators(theta) <= floor).any(1)
        if not folded.any():
            return offsets
        offsets[folded] = _draw_corner_offsets(spec, int(folded.sum()), generator)
    raise ValueError(f"corner_std_px={spec.corner_std_px} folds nearly every draw; use a smaller value")


def _draw_corner_offsets(spec: DistortionSpec, n: int, generator: torch.Generator) -> Tensor:
    """[n, 4, 2] corner displacements: N(0, corner_std_px) per coordinate, or that length along each corner's
    diagonal or in a random direction."""
    if spec.corner_move == "per_axis":
        return _normal(spec.corner_std_px, (n, 4, 2), generator)
    length = _normal(spec.corner_std_px, (n, 4, 1), generator)
    if spec.corner_move == "diagonal":
        return length * unit_grid(2, generator.device).float() / 2**0.5  # unit vectors from the centre to each corner
    angle = _uniform((0.0, 2 * torch.pi), (n, 4), generator)
    return length * torch.stack([angle.cos(), angle.sin()], -1).float()


def _clutter_params(
    spec: DistortionSpec, n: int, generator: torch.Generator, pool_size: int, pool_index: Tensor | None
) -> Params:
    shape = (n, spec.clutter_count)
    others = pool_size - (pool_index is not None)
    if others < 1:
        raise ValueError(f"clutter needs a pool of other digits, got pool_size={pool_size}")
    source = _integers(others, shape, generator)
    if pool_index is not None:  # skip the digit itself: draw among the pool_size - 1 others
        source = (pool_index[:, None].to(source.device) + 1 + source) % pool_size
    return {
        "clutter_source": source,
        "clutter_crop_xy": _integers(SOURCE_SIZE - spec.clutter_size + 1, (*shape, 2), generator),
        "clutter_paste_xy": _integers(spec.canvas - spec.clutter_size + 1, (*shape, 2), generator),
    }


# ---------------------------------------------------------------- rendering


def _crop(sources: Tensor, index: Tensor, crop_xy: Tensor, size: int) -> Tensor:
    """Patches [n, k, size, size] of sources[index] ([M, 28, 28]; index [n, k]) at crop_xy (top-left, [n, k, 2])."""
    start = index * SOURCE_SIZE**2 + crop_xy[..., 1] * SOURCE_SIZE + crop_xy[..., 0]
    row_starts = (start[..., None] + torch.arange(size, device=index.device) * SOURCE_SIZE).flatten()
    runs = sources.reshape(-1).unfold(0, size, 1)  # every run of `size` pixels, as a view: gathered a row at a time
    return runs.index_select(0, row_starts).view(*index.shape, size, size)


def _paste(image: Tensor, patches: Tensor, paste_xy: Tensor) -> Tensor:
    """Add patches [n, k, h, w] to integer-valued images [n, 1, S, S] (any dtype) in place, at paste_xy [n, k, 2]
    (top-left x, y, canvas px); returns `image`.

    Every term is a whole number, so the sums are exact in any order (CUDA's atomic adds included).
    """
    n, side = len(image), image.shape[-1]
    rows, cols = patches.shape[-2:]
    within_canvas = torch.arange(rows, device=image.device)[:, None] * side + torch.arange(cols, device=image.device)
    target = (paste_xy[..., 1:] * side + paste_xy[..., :1] + within_canvas.flatten()).flatten(1)  # [n, k*h*w]
    image.view(n, -1).scatter_add_(1, target, patches.flatten(1).to(image.dtype))  # one row per image
    return image


def warp_digits(spec: DistortionSpec, digits: Tensor, params: Params) -> Tensor:
    """Digits [n, 28, 28] uint8 warped into the canvas -> float [n, 1, S, S], rounded to whole grey levels."""
    if spec.transform == "tps" and not spec.regular_elastic_grid:
        grid = fitted_tps_grid(*elastic_points(spec, params), spec.canvas)
        return sample(digits[:, None].float(), grid).round_()
    theta = THETA[spec.transform](spec, params)
    image = warp(digits[:, None].float(), _transform(spec.transform, spec.grid_size), theta, (spec.canvas,) * 2)
    if spec.transform == "similarity" and spec.placement == "frame":
        image *= _inside_frame(spec, params)
    return image.round_()  # whole grey levels, as a stored digit: the clutter then adds exactly


def _inside_frame(spec: DistortionSpec, params: Params) -> Tensor:
    """[n, 1, S, S] 1 where a canvas pixel centre lies inside the digit's scaled frame: what the turn moved out of
    the frame is cut."""
    pixel = torch.arange(spec.canvas, device=params["scale"].device, dtype=torch.float64) - spec.canvas_half
    half = (params["scale"].double() * spec.frame_px / 2)[:, None]
    offset = params["offset_px"].double()
    inside_x = (pixel - offset[:, :1]).abs() <= half  # [n, S]
    inside_y = (pixel - offset[:, 1:]).abs() <= half
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]


def paste_digits(spec: DistortionSpec, digits: Tensor, params: Params) -> Tensor:
    """What warp_digits gives for a whole-pixel translation (an exact copy), as one batched paste."""
    if not spec.whole_pixel_translation:
        raise ValueError("paste_digits needs a whole-pixel translation: angle 0, scale 1, integer frame offsets")
    # int16 holds the digit plus every clutter patch (at most 255 each) and converts to uint8 fast.
    image = torch.zeros(len(digits), 1, spec.canvas, spec.canvas, dtype=torch.int16, device=digits.device)
    top_left = (params["offset_px"] + (spec.canvas_half - SOURCE_HALF)).round().long()  # whole pixels
    return _paste(image, digits[:, None], top_left[:, None])


def render(spec: DistortionSpec, digits: Tensor, params: Params, pool: Tensor | None = None) -> Tensor:
    """Render digits [n, 28, 28] uint8 with their parameters -> uint8 [n, 1, S, S] (pool: clutter sources)."""
    image = (paste_digits if spec.whole_pixel_translation else warp_digits)(spec, digits, params)
    if spec.clutter_count:
        if pool is None:
            raise ValueError("this distortion has clutter: pass the pool of digits the patches come from")
        patches = _crop(pool, params["clutter_source"], params["clutter_crop_xy"], spec.clutter_size)
        _paste(image, patches, params["clutter_paste_xy"])
    return image.clamp_(0, 255).to(torch.uint8)


def chunk_size(spec: DistortionSpec, device: torch.device) -> int:
    """Images rendered per call: small on CPU (buffers stay in cache), large on GPU (fills the device).

    A paste holds an int64 target index per pasted pixel (8 KB per TC image, more than its canvas), so on the CPU
    it works in half as many images as a warp (measured on TC: 512 at a time ~12% faster than 1024).
    """
    if device.type == "cuda":
        return 8192
    return 512 if spec.whole_pixel_translation else 1024


def generate(
    spec: DistortionSpec,
    digits: Tensor,
    generator: torch.Generator,
    pool: Tensor | None = None,
    pool_index: Tensor | None = None,
    progress=None,
) -> tuple[Tensor, Params]:
    """Sample parameters for, and render, a whole set of digits on the generator's device.

    Returns uint8 images [N, 1, S, S] and the parameters. `progress` (e.g. a tqdm bar) is advanced per chunk.
    Rendering is per sample, so the chunking does not change the result.
    """
    device = generator.device
    digits = digits.to(device)
    pool = None if pool is None else pool.to(device)
    params = sample_params(spec, digits, generator, 0 if pool is None else len(pool), pool_index)
    images = torch.empty(len(digits), 1, spec.canvas, spec.canvas, dtype=torch.uint8, device=device)
    step = chunk_size(spec, device)
    for start in range(0, len(digits), step):
        part = slice(start, start + step)
        images[part] = render(spec, digits[part], {k: v[part] for k, v in params.items()}, pool)
        if progress is not None:
            progress.update(len(images[part]))
    return images, params
