"""What trained Table 1 transformers learned: how much of each test digit's known distortion their warp undoes.

The distorted-MNIST test sets store every digit's distortion (rotation, scale, placement: stn.data.distortions), so
a trained transformer's warp can be read against it. The warp's least-squares affine fit over its output (exact for
the affine family) gives its rotation, its zoom and the input point it centres on; regressed over the test set on the
digit's own angle, log scale and offset, a slope of 1 means that part of the distortion is undone in full, 0 not at
all ("undone" below). A column without that distortion (R has no scale or offset) shows "—".

    python -m stn.results learned --runs DIR [--runs DIR ...] [--title TEXT] [--out FILE]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn.analysis.windows import input_transformers
from stn.checkpoint import load_model
from stn.data import load_splits
from stn.data.dataset import DataConfig, read_dataset
from stn.results.compare import arm_of
from stn.results.tables import display_name
from stn.runtime import ALIGN_CORNERS
from stn.transformers import SpatialTransformer
from stn.transformers.grids import target_points

FIT_POINTS = 8  # output points per axis the affine fit uses (any warp family; exact for affine)
BATCH = 1000


@dataclass(frozen=True)
class Learned:
    """One run's transformer read against its test digits' distortions (None: the column has no such distortion)."""

    test_error: float  # % on the stored test set, recomputed here from the checkpoint
    rotation_undone: float | None
    scale_undone: float | None
    translation_undone: float | None
    mean_zoom: float  # output pixels per input pixel (>1: the transformer zooms in)


def affine_fit(grid: Tensor) -> Tensor:
    """[B, 2, 3]: the affine map from normalised target (x, y) to source (x, y) that best fits a sampling grid
    [B, H, W, 2] in least squares."""
    height, width = grid.shape[1:3]
    points = target_points((height, width), grid.device, torch.float64)  # [3, H*W]
    return (grid.flatten(1, 2).double().transpose(1, 2) @ torch.linalg.pinv(points)).float()


def slope(measured: Tensor, truth: Tensor) -> float | None:
    """Least-squares slope of `measured` on `truth`; None when `truth` does not vary (the column lacks it)."""
    truth, measured = truth.double().flatten(), measured.double().flatten()
    spread = truth - truth.mean()
    variance = (spread * spread).mean()
    if variance < 1e-12:
        return None
    return float((spread * (measured - measured.mean())).mean() / variance)


def _input_transformer(model: nn.Module) -> SpatialTransformer:
    transformers = input_transformers(model)
    if len(transformers) != 1:
        raise ValueError(f"{type(model).__name__} has {len(transformers)} transformers on its input, not one")
    return transformers[0]


@torch.no_grad()
def read_transformer(model: nn.Module, images: Tensor, labels: Tensor, params: Mapping[str, Tensor]) -> Learned:
    """Read a Table 1 model's input transformer against the distortion `params` of `images` (uint8 [N, (1,) H, W])."""
    transformer = _input_transformer(model)
    model.eval()
    wrong, maps = [], []
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH].float().div(255)
        x = x if x.dim() == 4 else x[:, None]
        _, theta = transformer(x, return_theta=True)
        maps.append(affine_fit(transformer.transform.grid(theta, (FIT_POINTS, FIT_POINTS))))
        wrong.append(model(x).argmax(1) != labels[start : start + BATCH])
    fit, size = torch.cat(maps), images.shape[-1]
    linear = fit[:, :, :2]
    # Rotation of the closest similarity; in image coordinates (y down) undoing a digit turned by a (counter-
    # clockwise on screen) samples the input turned by -a here.
    rotation = torch.rad2deg(torch.atan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1]))
    zoom = torch.linalg.det(linear.double()).abs().rsqrt()
    centre_px = fit[:, :, 2] * ((size - 1) / 2 if ALIGN_CORNERS else size / 2)  # input point the output centres on

    def undone(measured: Tensor, key: str, sign: float, of=lambda v: v) -> float | None:
        value = None if key not in params else slope(measured, of(params[key].double()))
        return None if value is None else sign * value

    return Learned(
        test_error=100 * torch.cat(wrong).double().mean().item(),
        rotation_undone=undone(rotation, "angle_deg", -1.0),
        scale_undone=undone(zoom.log(), "scale", -1.0, torch.log),
        translation_undone=undone(centre_px, "offset_px", 1.0),
        mean_zoom=zoom.mean().item(),
    )


def read_run(record: Mapping[str, Any]) -> Learned:
    """Read a finished Table 1 run (a result.json record with its `path`) against the test digits it was scored on
    (its stored test set, or the budget's test_subset of it)."""
    data_cfg, limit = record["config"]["data"], record["config"]["budget"].get("test_subset")
    splits = load_splits(data_cfg)  # verifies (or regenerates) the stored set the run was tested on
    arrays, _ = read_dataset(DataConfig.from_cfg(data_cfg))
    prefix = "test/params/"
    params = {key[len(prefix) :]: torch.from_numpy(v[:limit]) for key, v in arrays.items() if key.startswith(prefix)}
    images, labels = splits.split("test")
    return read_transformer(load_model(Path(record["path"]).parent), images[:limit], labels[:limit], params)


def _has_input_transformer(record: Mapping[str, Any]) -> bool:
    net = (record.get("config") or {}).get("model", {}).get("net", {})
    return record.get("status") == "finished" and net.get("transform") is not None and "classifier" in net


def _mean_std(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    mean = sum(known) / len(known)
    if len(known) == 1:
        return f"{mean:.2f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1))
    return f"{mean:.2f} ± {std:.2f}"


def render_learned(records: Iterable[Mapping[str, Any]], title: str, note: str | None = None) -> str:
    """A markdown table, one row per (arm, column, model): mean ± std over seeds of each reading."""
    rows: dict[tuple[str, str, str], list[Learned]] = {}
    for record in records:
        if _has_input_transformer(record):
            key = (arm_of(record), record["column"], record["model"])
            rows.setdefault(key, []).append(read_run(record))
    if not rows:
        raise FileNotFoundError("no finished Table 1 run with a spatial transformer on its input among the runs")
    lines = [f"**{title}**", ""]
    if note:
        lines += [note, ""]
    lines += [
        "| Arm | Column | Model | n | Test error % | Rotation undone | Scale undone | Translation undone | Mean zoom |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (arm, column, model), found in sorted(rows.items()):
        readings = [[getattr(learned, field) for learned in found] for field in Learned.__dataclass_fields__]
        cells = " | ".join(_mean_std(values) for values in readings)
        lines.append(f"| `{arm}` | {column} | {display_name(model)} | {len(found)} | {cells} |")
    return "\n".join(lines) + "\n"
