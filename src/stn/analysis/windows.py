"""What each input transformer's window holds, and how large it draws it, per input channel.

A transformer can fail without its loss saying so: its window may settle on blank canvas, or draw the digits so
small that the classifier after it cannot read them (MNIST addition's 2xST-FCN TPS, seed 1). This reads both off a
trained run, on its stored test set, per transformer and input channel (MNIST addition: one digit per channel):

    share = sum over output samples of (sample * the input area it stands for) / the channel's ink
    zoom  = sqrt(sum of the output samples / the same sum weighted by area)

the input area of a sample being the warp's local Jacobian (finite differences of its sampling grid) in input
pixels. share 1: the whole digit lies inside the window (up to the bilinear interpolation; a folding warp counts
its folds twice), 0: none of it. zoom: the ink-weighted output pixels per input pixel along each axis, 1 for the
identity, 0.5 for a digit drawn at half its size. The share is the mean over the test images, the zoom the ratio of
the sums over them.

    python -m stn.results windows --runs DIR [--runs DIR ...] [--title TEXT] [--note TEXT] [--out FILE]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn.checkpoint import load_model
from stn.data import load_splits
from stn.results.compare import arm_of
from stn.results.tables import display_name
from stn.runtime import ALIGN_CORNERS
from stn.transformers import SpatialTransformer

BATCH = 1000


def input_transformers(model: nn.Module) -> list[SpatialTransformer]:
    """The transformers that warp a model's input: Table 1's one, or MNIST addition's several ([] for a plain net)."""
    several = getattr(model, "transformers", None)
    if several is not None:
        return list(several)
    one = getattr(model, "transformer", None)
    return [one] if isinstance(one, SpatialTransformer) else []


def source_area(grid: Tensor, in_size: tuple[int, int]) -> Tensor:
    """[B, H', W']: the input area (in pixels) each output sample of a sampling grid [B, H', W', 2] stands for."""
    d_width, d_height = torch.gradient(grid, dim=(2, 1))  # d(x, y) per output step along its width, its height
    jacobian = (d_width[..., 0] * d_height[..., 1] - d_width[..., 1] * d_height[..., 0]).abs()
    height, width = in_size
    # normalised [-1, 1] coordinates span (size - 1) pixels between the first and last pixel centres with aligned
    # corners, the whole size without
    pixels = (height - 1) * (width - 1) if ALIGN_CORNERS else height * width
    return jacobian * pixels / 4


@torch.no_grad()
def window_ink(transformer: SpatialTransformer, x: Tensor) -> tuple[Tensor, Tensor]:
    """([B, C], [B, C]): each image's channel ink (x: float [B, C, H, W]) inside the transformer's window, in input
    pixels, and as the window draws it, in output pixels."""
    out, theta = transformer(x, return_theta=True)
    grid = transformer.transform.grid(theta, tuple(out.shape[-2:]))
    inside = (out * source_area(grid, tuple(x.shape[-2:]))[:, None]).sum((2, 3))
    return inside, out.sum((2, 3))


def read_windows(record: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """([transformers, channels], same): a finished run's window share and zoom of each input channel over its
    stored test images (or the budget's test_subset of them)."""
    limit = record["config"]["budget"].get("test_subset")
    images, _ = load_splits(record["config"]["data"]).split("test")
    images = images[:limit]
    model = load_model(Path(record["path"]).parent).eval()
    transformers = input_transformers(model)
    shares, inside, drawn = (torch.zeros(len(transformers), images.shape[1], dtype=torch.float64) for _ in range(3))
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH].float().div(255)
        ink = x.sum((2, 3)).double().clamp_min(torch.finfo(torch.float32).tiny)
        for index, transformer in enumerate(transformers):
            held, shown = (reading.double() for reading in window_ink(transformer, x))
            shares[index] += (held / ink).sum(0)
            inside[index] += held.sum(0)
            drawn[index] += shown.sum(0)
    return shares / len(images), (drawn / inside).sqrt()


def _warps_its_input(record: Mapping[str, Any]) -> bool:
    net = (record.get("config") or {}).get("model", {}).get("net", {})
    return record.get("status") == "finished" and net.get("transform") is not None


def render_windows(records: Iterable[Mapping[str, Any]], title: str, note: str | None = None) -> str:
    """A markdown table, one row per run: each transformer's window share and zoom of each input channel."""
    rows = []
    for record in records:
        if _warps_its_input(record):
            key = (arm_of(record), record["column"], record["model"], record["seed"])
            rows.append((key, record["test_error"], *read_windows(record)))
    if not rows:
        raise FileNotFoundError("no finished run with a spatial transformer on its input among the runs")
    most = max(len(shares) for _, _, shares, _ in rows)
    lines = [f"**{title}**", ""] + ([note, ""] if note else [])
    lines += [
        "| Arm | Column | Model | Seed | Test error % | "
        + " | ".join(f"Transformer {index + 1}: share (zoom) per channel" for index in range(most))
        + " |",
        "|---|---|---|---:|---:|" + "---|" * most,
    ]
    for (arm, column, model, seed), error, shares, zooms in sorted(rows, key=lambda row: row[0]):
        cells = [
            " / ".join(f"{share:.2f} (x{zoom:.2f})" for share, zoom in zip(channel_shares, channel_zooms, strict=True))
            for channel_shares, channel_zooms in zip(shares.tolist(), zooms.tolist(), strict=True)
        ]
        cells += ["—"] * (most - len(cells))
        lines.append(f"| `{arm}` | {column} | {display_name(model)} | {seed} | {error:.2f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
