"""Pictures of what a spatial transformer does, as in the right of the paper's Table 1: the input, the predicted
sampling grid drawn on the input, the transformer's output and the predicted class; every spatial transformer of a
model that acts on the image is drawn (grey or RGB). A transformer deeper in the model warps conv feature maps, which
have no picture: it is drawn on the input through the transformers before it (ST-CNN Multi, Table 2), as its affine
map composed with theirs -- the part of the input its output covers (approximately: a feature map's frame is the
input's up to the convs' borders and the pools' rounding).

One drawing serves both the W&B image panels logged during training and the paper-style figure built from
trained runs (`python -m stn.figures table1 --runs runs/table1 --out results/figures/table1_transformations.png`).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from stn.atomic import write_atomic
from stn.checkpoint import load_model
from stn.data import load_splits
from stn.data.svhn import NULL_CLASS
from stn.models.normalize import Normalize
from stn.results.runs import load_local_results
from stn.results.tables import display_name
from stn.runtime import ALIGN_CORNERS
from stn.transformers import AffineTransform, SpatialTransformer, warp

GRID_LINES = 5  # grid lines drawn per direction, border included (the paper draws a coarse grid)
GRID_POINTS = 33  # points along each line, so bent (projective, TPS) grids are drawn smooth
CELL_INCHES = 1.0
# [open] The model drawn per Table 1 column (override with --model COLUMN=MODEL): as we read the paper's Table 1
# caption, its figure shows ST-CNN Aff on R and ST-CNN TPS on RTS and E; for P we take the projective family.
# Another finished ST run of the column stands in when that model was not run.
TABLE1_FIGURE_MODELS = {"R": "st_cnn_aff", "RTS": "st_cnn_tps", "P": "st_cnn_proj", "E": "st_cnn_tps"}
# The right of the paper's Table 2: what ST-CNN Single and Multi do to SVHN inputs, per column.
TABLE2_FIGURE_MODELS = ("st_cnn_single", "st_cnn_multi")
TABLE2_COLUMNS = ("64px", "128px")
# MNIST addition: what each of the two transformers of the 2xST-FCNs does to test pairs (drawn red = first digit's
# channel, green = second's), and the single ST-FCN Aff for comparison.
ADDITION_FIGURE_MODELS = ("st_fcn_aff", "2st_fcn_aff", "2st_fcn_proj", "2st_fcn_tps")


@dataclass(frozen=True)
class TransformationSamples:
    """A few images pushed through a model; grids/outputs are None for a model without a transformer on its input.
    Images are [.., H, W] (grey) or [.., H, W, 3] (RGB); T = the model's transformers that act on the image."""

    inputs: np.ndarray  # [K, H, W(, 3)] in [0, 1]
    labels: np.ndarray  # [K] (or [K, P] for sequences)
    predictions: np.ndarray  # as labels
    grids: np.ndarray | None  # [K, T, GRID_POINTS, GRID_POINTS, 2]: source (x, y) in input pixels
    outputs: np.ndarray | None  # [K, T, H', W'(, 3)] in [0, 1]
    # [K, T] bool: the transformer acts on a feature map and is drawn composed with the ones before it (its output:
    # the input seen through them all); None = none is
    composed: np.ndarray | None = None


@dataclass(frozen=True)
class TransformerCall:
    """What one spatial transformer of a model did on a forward pass."""

    name: str  # its name in model.named_modules()
    module: SpatialTransformer
    input: Tensor  # the image, or a feature map for a transformer deeper in the model
    output: Tensor
    theta: Tensor


@torch.no_grad()
def transformer_calls(model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[TransformerCall]]:
    """The model's output on float `inputs` (in eval mode) and what each of its SpatialTransformers did on that pass,
    found among all its modules (one at the input, several in parallel, or deeper ones on feature maps)."""
    transformers = [(name, m) for name, m in model.named_modules() if isinstance(m, SpatialTransformer)]
    seen: dict[str, Tensor] = {}

    def keep_input(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, args[0])

        return hook

    hooks = [module.register_forward_hook(keep_input(name)) for name, module in transformers]
    was_training = model.training
    model.eval()
    try:
        output = model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    try:
        calls = [
            TransformerCall(name, module, seen[name], *module(seen[name], return_theta=True))
            for name, module in transformers
            if name in seen
        ]
    finally:
        model.train(was_training)
    return output, calls


def to_pixels(coords: Tensor, size: int) -> Tensor:
    """Normalised [-1, 1] coordinates along an axis of `size` pixels -> pixel coordinates (0 = first centre)."""
    if ALIGN_CORNERS:
        return (coords + 1) * (size - 1) / 2
    return ((coords + 1) * size - 1) / 2


def images_to_inputs(images: Tensor) -> Tensor:
    """uint8 images [K, C, S, S] (C = 1 grey, 2 MNIST addition's digit pair, 3 RGB) -> the float model input in
    [0, 1] the trainer feeds."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 2, 3):
        raise ValueError(f"expected uint8 images [K, 1, 2 or 3, S, S], got {images.dtype} {tuple(images.shape)}")
    return images.float() / 255


def _pictures(images: Tensor) -> np.ndarray:
    """Float images [K, C, H, W] -> what imshow draws: [K, H, W] (grey) or [K, H, W, 3] (RGB), clamped to [0, 1].
    Two channels (MNIST addition's two digits) are drawn as one picture: the first in red, the second in green."""
    images = images.float().clamp(0, 1).cpu()
    if images.shape[1] == 2:
        images = torch.cat([images, torch.zeros_like(images[:, :1])], 1)
    return (images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)).numpy()


def _grid_pixels(call: TransformerCall) -> Tensor:
    """The transformer's sampling grid in input pixel coordinates, [K, GRID_POINTS, GRID_POINTS, 2]."""
    grid = call.module.transform.grid(call.theta, (GRID_POINTS, GRID_POINTS))
    height, width = call.input.shape[-2:]
    return torch.stack([to_pixels(grid[..., 0], width), to_pixels(grid[..., 1], height)], -1)


def _affine_matrix(call: TransformerCall) -> Tensor | None:
    """The [K, 3, 3] target -> source map of an affine-family transformer (None for projective and TPS)."""
    matrix = call.module.transform.matrix(call.theta) if hasattr(call.module.transform, "matrix") else None
    if matrix is None or matrix.shape[-2:] != (2, 3):
        return None
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype, device=matrix.device).expand(len(matrix), 1, 3)
    return torch.cat([matrix, bottom], 1)


def _unstandardised(model: nn.Module, inputs: Tensor, call: TransformerCall) -> Tensor:
    """The transformer's output as a picture in [0, 1]: a transformer that warps the image as the model's Normalize
    standardised it has its output mapped back."""
    for module in model.modules():
        if isinstance(module, Normalize) and torch.allclose(call.input, module(inputs), atol=1e-5):
            return call.output * module.std + module.mean
    return call.output


def image_views(model: nn.Module, inputs: Tensor, calls: list[TransformerCall]) -> list[tuple[Tensor, Tensor, bool]]:
    """(grid in input pixels [K, G, G, 2], picture [K, C, H', W'], composed?) of every transformer that can be drawn
    on the input: those acting on the image, and feature-map ones that follow a chain of affine transformers."""
    views = []
    eye = torch.eye(3, device=inputs.device).expand(len(inputs), 3, 3)
    chain: Tensor | None = eye  # the affine map (target -> input) of the transformers so far, in forward order
    affine = AffineTransform()
    for call in calls:
        matrix = _affine_matrix(call)
        if call.input.shape == inputs.shape:
            views.append((_grid_pixels(call), _unstandardised(model, inputs, call), False))
            chain = matrix
        elif chain is not None and matrix is not None:
            chain = chain @ matrix.to(chain.dtype)
            theta = chain[:, :2].reshape(len(chain), 6)
            grid = affine.grid(theta, (GRID_POINTS, GRID_POINTS))
            height, width = inputs.shape[-2:]
            pixels = torch.stack([to_pixels(grid[..., 0], width), to_pixels(grid[..., 1], height)], -1)
            views.append((pixels, warp(inputs, affine, theta), True))
        else:  # a feature-map transformer after a non-affine one: nothing to compose with
            chain = None
    return views


@torch.no_grad()
def transformation_samples(model: nn.Module, images: Tensor, labels: Tensor | tuple) -> TransformationSamples:
    """Run `model` on uint8 `images` in eval mode, keeping what to draw of every transformer (see image_views).
    `labels` may be a split's targets tuple, whose first tensor holds the labels."""
    labels = labels[0] if isinstance(labels, tuple) else labels
    inputs = images_to_inputs(images).to(next(model.parameters()).device)
    output, calls = transformer_calls(model, inputs)
    views = image_views(model, inputs, calls)
    grids = outputs = composed = None
    if views:
        grids = torch.stack([grid for grid, _, _ in views], 1).cpu().numpy()
        outputs = np.stack([_pictures(picture) for _, picture, _ in views], 1)
        composed = np.array([[flag for _, _, flag in views]] * len(inputs), dtype=bool)
    return TransformationSamples(
        inputs=_pictures(inputs),
        labels=labels.cpu().numpy(),
        predictions=output.argmax(-1).cpu().numpy(),
        grids=grids,
        outputs=outputs,
        composed=composed,
    )


def _show(axis, image: np.ndarray) -> None:
    axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")  # cmap is ignored for RGB
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_grid(axis, grid: np.ndarray, image_shape: tuple[int, int]) -> None:
    """Every (GRID_POINTS-1)/(GRID_LINES-1)-th row and column of the sampling grid, clipped to the image."""
    for index in np.linspace(0, GRID_POINTS - 1, GRID_LINES).round().astype(int):
        for line in (grid[index], grid[:, index]):
            axis.plot(line[:, 0], line[:, 1], color="tab:orange", linewidth=1.0)
    height, width = image_shape
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)


def _class_text(value: np.ndarray) -> str:
    """A class ('7'), or a digit sequence as its digits: SVHN's null class after the last digit is left out and
    shown as '_' elsewhere ([5, 10, 10, 10, 10] -> '5', [8, 5, 10, 2, 10] -> '85_2')."""
    values = [int(v) for v in np.atleast_1d(value)]
    if len(values) == 1:
        return str(values[0])
    while values and values[-1] == NULL_CLASS:
        values.pop()
    return "".join("_" if v == NULL_CLASS else str(v) for v in values) or "(none)"


def _prediction_title(axis, prediction: np.ndarray, label: np.ndarray) -> None:
    correct = np.array_equal(prediction, label)
    text = f"pred {_class_text(prediction)}"
    text += "" if correct else f" (true {_class_text(label)})"
    axis.set_title(text, fontsize=8, color="tab:green" if correct else "tab:red")


def _wrap(groups: Sequence[tuple[str, TransformationSamples]], max_rows: int):
    """Split groups longer than max_rows into side-by-side blocks (the first keeps the title)."""
    for title, samples in groups:
        for start in range(0, len(samples.inputs), max_rows):
            part = slice(start, start + max_rows)
            yield (
                ("" if start else title),
                TransformationSamples(*(None if values is None else values[part] for values in astuple(samples))),
            )


def draw_transformations(groups: Sequence[tuple[str, TransformationSamples]], max_rows: int | None = None) -> Figure:
    """One block of columns per group ((a) input, then per transformer (b) its grid on the input and (c) its output,
    + the predicted class), a row per image; a group longer than `max_rows` continues in the next block to its
    right."""
    if not groups:
        raise ValueError("draw_transformations needs at least one (title, samples) group")
    if max_rows is not None:
        groups = list(_wrap(groups, max_rows))
    rows = max(len(samples.inputs) for _, samples in groups)
    widths = [1 + (2 * samples.grids.shape[1] if samples.grids is not None else 0) for _, samples in groups]
    figure = Figure(figsize=(CELL_INCHES * sum(widths), CELL_INCHES * (rows + 0.6)), layout="constrained")
    FigureCanvasAgg(figure)
    subfigures = figure.subfigures(1, len(groups), width_ratios=widths, squeeze=False)[0]
    for subfigure, (title, samples), width in zip(subfigures, groups, widths, strict=True):
        if title:
            subfigure.suptitle(title, fontsize=10)
        axes = subfigure.subplots(rows, width, squeeze=False)
        for row, axes_row in enumerate(axes):
            if row >= len(samples.inputs):
                for axis in axes_row:
                    axis.set_axis_off()
                continue
            image = samples.inputs[row]
            _show(axes_row[0], image)
            if samples.grids is not None:
                for grid, output, grid_axis, output_axis in zip(
                    samples.grids[row], samples.outputs[row], axes_row[1::2], axes_row[2::2], strict=True
                ):
                    _show(grid_axis, image)
                    _draw_grid(grid_axis, grid, image.shape[:2])
                    _show(output_axis, output)
            _prediction_title(axes_row[-1], samples.predictions[row], samples.labels[row])
        if samples.grids is not None:
            count = samples.grids.shape[1]
            numbers = [""] if count == 1 else [f" {t + 1}" for t in range(count)]
            composed = samples.composed[0] if samples.composed is not None else np.zeros(count, bool)
            names = ["(a) input"]
            for t, n in enumerate(numbers):  # a composed transformer's output is the input seen through ST 1..t+1
                names += [f"(b) grid{n}", f"(c) input via 1-{t + 1}" if composed[t] else f"(c) output{n}"]
            for axis, name in zip(axes[-1], names, strict=True):
                axis.set_xlabel(name, fontsize=8)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """The rendered figure as an RGB uint8 array [H, W, 3] (what W&B image panels take)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_png(figure: Figure, dpi: int = 150) -> bytes:
    """The figure encoded as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _has_transformer(result: Mapping[str, Any]) -> bool:
    return (result.get("config") or {}).get("model", {}).get("net", {}).get("transform") is not None


def pick_figure_run(results: Sequence[Mapping[str, Any]], column: str, model: str) -> Mapping[str, Any] | None:
    """The finished run of `column` to draw: `model` if it was run, else another ST model; the lowest seed."""
    candidates = [r for r in results if r.get("column") == column and r.get("status") == "finished"]
    candidates = [r for r in candidates if _has_transformer(r)]
    return min(candidates, key=lambda r: (r["model"] != model, r["model"], r["seed"]), default=None)


def table1_figure(runs_dir: Path, columns: Sequence[str], digits: int, models: Mapping[str, str]) -> Figure:
    """The first `digits` test digits of each column, through the trained transformer of a run of that column."""
    results = load_local_results(runs_dir)
    groups = []
    for column in columns:
        result = pick_figure_run(results, column, models.get(column, ""))
        if result is None:
            print(f"no finished spatial-transformer run of column {column} under {runs_dir}: column left out")
            continue
        model = load_model(Path(result["path"]).parent)
        splits = load_splits(result["config"]["data"])
        samples = transformation_samples(model, splits.test_x[:digits], splits.test_y[:digits])
        groups.append((f"{column}: {display_name(result['model'])} (seed {result['seed']})", samples))
    if not groups:
        raise FileNotFoundError(f"no finished spatial-transformer runs of {list(columns)} under {runs_dir}")
    return draw_transformations(groups)


def runs_figure(
    runs_dir: Path, images: int, models: Sequence[str], samples: Callable[..., TransformationSamples]
) -> Figure:
    """The first `images` test inputs through each model's trained transformers (a finished run, its lowest seed),
    drawn by `samples` (transformation_samples, or volume_samples for the 3D experiment)."""
    results = load_local_results(runs_dir)
    groups = []
    for name in models:
        runs = [r for r in results if r.get("model") == name and r.get("status") == "finished"]
        if not runs:
            print(f"no finished {name} run under {runs_dir}: left out")
            continue
        result = min(runs, key=lambda r: r["seed"])
        model = load_model(Path(result["path"]).parent)
        splits = load_splits(result["config"]["data"])
        test_x, test_y = splits.split("test")
        inputs = getattr(splits, "eval_transform", lambda x: x)(test_x[:images])
        groups.append((f"{display_name(name)} (seed {result['seed']})", samples(model, inputs, test_y[:images])))
    if not groups:
        raise FileNotFoundError(f"no finished runs of {list(models)} under {runs_dir}")
    return draw_transformations(groups)


def _projection(volumes: Tensor) -> np.ndarray:
    """Volumes [K, D, H, W] -> their mean along depth, each scaled to its own maximum (a picture)."""
    mean = volumes.float().mean(1, keepdim=True)
    return _pictures(mean / mean.amax((1, 2, 3), keepdim=True).clamp(min=1e-6))


@torch.no_grad()
def volume_samples(model: nn.Module, volumes: Tensor, labels: Tensor) -> TransformationSamples:
    """The 3D experiment's pictures: each input volume [K, D, H, W] (uint8) and each transformer's output, flattened
    along depth; the grid drawn is the in-plane (x, y) part of the sampling grid of the middle depth slice."""
    inputs = volumes.float().to(next(model.parameters()).device) / 255
    output, calls = transformer_calls(model, inputs)
    grids = outputs = None
    if calls:
        depth, height, width = volumes.shape[1:]
        grid = torch.stack(
            [
                call.module.transform.grid(call.theta, (depth, GRID_POINTS, GRID_POINTS))[:, depth // 2]
                for call in calls
            ],
            1,
        )
        grids = torch.stack([to_pixels(grid[..., 0], width), to_pixels(grid[..., 1], height)], -1).cpu().numpy()
        outputs = np.stack([_projection(call.output[:, 0]) for call in calls], 1)
    return TransformationSamples(
        inputs=_projection(inputs),
        labels=labels.cpu().numpy(),
        predictions=output.argmax(-1).cpu().numpy(),
        grids=grids,
        outputs=outputs,
    )


def table2_groups(
    runs_dir: Path, columns: Sequence[str], models: Sequence[str], count: int
) -> list[tuple[str, TransformationSamples]]:
    """The first `count` test images (the centre crop the model sees) of each column through each model's finished
    run (the lowest seed); a (column, model) without one is left out with a note."""
    results = [r for r in load_local_results(runs_dir) if r.get("status") == "finished"]
    groups = []
    for column in columns:
        for name in models:
            runs = [r for r in results if r.get("column") == column and r.get("model") == name]
            if not runs:
                print(f"no finished {name} run of column {column} under {runs_dir}: left out")
                continue
            result = min(runs, key=lambda r: r["seed"])
            model = load_model(Path(result["path"]).parent)
            splits = load_splits(result["config"]["data"])
            images, targets = splits.split("test")
            samples = transformation_samples(model, splits.eval_transform(images[:count]), targets[0][:count])
            groups.append((f"{column}: {display_name(name)} (seed {result['seed']})", samples))
    return groups


def _table2_main(args: argparse.Namespace) -> None:
    if args.images < 1:
        raise SystemExit(f"--images must be at least 1, got {args.images}")
    groups = table2_groups(args.runs, args.columns, args.models, args.images)
    if not groups:  # a state (before the sweep, or all its runs failed), not an error
        print(f"nothing to draw under {args.runs}: make the runs with `make reproduce-table2`; no figure drawn")
        return
    write_atomic(args.out, figure_png(draw_transformations(groups)))
    print(f"wrote {args.out}")


@torch.no_grad()
def crop_boxes(model: nn.Module, inputs: Tensor) -> Tensor:
    """[K, T, 4]: the box (left, top, right, bottom, in input pixels) that each of the model's T attention
    transformers on the image crops from each of the K float `inputs` (Table 3's NxST-CNN)."""
    calls = [call for call in transformer_calls(model, inputs)[1] if call.input.shape == inputs.shape]
    boxes = []
    for call in calls:
        corners = call.module.transform.grid(call.theta, (2, 2)).flatten(1, 2)  # [K, 4, 2] normalised (x, y)
        height, width = inputs.shape[-2:]
        xs, ys = to_pixels(corners[..., 0], width), to_pixels(corners[..., 1], height)
        boxes.append(torch.stack([xs.amin(1), ys.amin(1), xs.amax(1), ys.amax(1)], -1))
    return torch.stack(boxes, 1)


CROP_COLOURS = ("tab:orange", "tab:cyan", "tab:pink", "tab:olive")


def table3_figure(runs_dir: Path, images: int) -> Figure:
    """As the right of the paper's Table 3: the first `images` test birds with the crop box of each transformer, a
    row per finished NxST run (the lowest seed of each model)."""
    runs = [r for r in load_local_results(runs_dir) if r.get("status") == "finished"]
    runs = [r for r in runs if (r.get("config") or {}).get("model", {}).get("net", {}).get("layout") is not None]
    chosen = {r["model"]: r for r in sorted(runs, key=lambda r: -r["seed"])}  # the lowest seed wins
    if not chosen:
        raise FileNotFoundError(f"no finished NxST-CNN run under {runs_dir}")
    figure = Figure(figsize=(2 * images, 2.2 * len(chosen)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(chosen), images, squeeze=False)
    for row, result in zip(axes, (chosen[name] for name in sorted(chosen)), strict=True):
        model = load_model(Path(result["path"]).parent)
        splits = load_splits(result["config"]["data"])
        birds = images_to_inputs(splits.eval_transform(splits.test_x[:images]))
        for axis, bird, boxes in zip(row, _pictures(birds), crop_boxes(model, birds).tolist(), strict=False):
            _show(axis, bird)
            for (left, top, right, bottom), colour in zip(boxes, CROP_COLOURS * len(boxes), strict=False):
                axis.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color=colour, lw=2))
        row[0].set_ylabel(f"{display_name(result['model'])}\n(seed {result['seed']})", fontsize=9)
    return figure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stn.figures", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table1 = commands.add_parser("table1", help="input / grid / output / class of trained Table 1 transformers")
    table1.add_argument("--runs", type=Path, default=Path("runs/table1"), help="the Table 1 sweep's runs folder")
    table1.add_argument("--out", type=Path, default=Path("results/figures/table1_transformations.png"))
    table1.add_argument("--columns", nargs="+", default=list(TABLE1_FIGURE_MODELS), help="Table 1 columns to show")
    table1.add_argument("--digits", type=int, default=4, help="test digits per column")
    table1.add_argument(
        "--model", action="append", default=[], metavar="COLUMN=MODEL", help="override a column's model"
    )
    table2 = commands.add_parser("table2", help="input / grids / outputs / digits of trained Table 2 transformers")
    table2.add_argument("--runs", type=Path, default=Path("runs/table2"), help="a Table 2 recipe's runs folder")
    table2.add_argument("--out", type=Path, default=Path("results/figures/table2_transformations.png"))
    table2.add_argument("--columns", nargs="+", default=list(TABLE2_COLUMNS), help="Table 2 columns to show")
    table2.add_argument("--models", nargs="+", default=list(TABLE2_FIGURE_MODELS), help="models (result names)")
    table2.add_argument("--images", type=int, default=4, help="test images per column and model")
    table3 = commands.add_parser("table3", help="the crops of trained Table 3 NxST-CNNs on test birds")
    table3.add_argument("--runs", type=Path, default=Path("runs/table3"), help="the Table 3 sweep's runs folder")
    table3.add_argument("--out", type=Path, default=Path("results/figures/table3_crops.png"))
    table3.add_argument("--images", type=int, default=6, help="test birds per model")
    addition = commands.add_parser("addition", help="what the trained MNIST addition transformers do to test pairs")
    addition.add_argument("--runs", type=Path, default=Path("runs/addition"), help="an addition recipe's runs folder")
    addition.add_argument("--out", type=Path, default=Path("results/figures/addition_transformers.png"))
    addition.add_argument("--images", type=int, default=4, help="test pairs per model")
    volumes = commands.add_parser("transformer3d", help="what the trained 3D transformers do, as depth projections")
    volumes.add_argument("--runs", type=Path, default=Path("runs/transformer3d"), help="a 3D recipe's runs folder")
    volumes.add_argument("--out", type=Path, default=Path("results/figures/transformer3d_projections.png"))
    volumes.add_argument("--images", type=int, default=6, help="test volumes per model")
    args = parser.parse_args(argv)
    if args.command == "transformer3d":
        if not load_local_results(args.runs):
            print(f"no runs yet in {args.runs}: make them with `make reproduce-3d`; no figure drawn")
            return
        write_atomic(args.out, figure_png(runs_figure(args.runs, args.images, ["vol_st_cnn"], volume_samples)))
        print(f"wrote {args.out}")
        return
    if args.command == "addition":
        if not load_local_results(args.runs):
            print(f"no runs yet in {args.runs}: make them with `make reproduce-addition`; no figure drawn")
            return
        figure = runs_figure(args.runs, args.images, ADDITION_FIGURE_MODELS, transformation_samples)
        write_atomic(args.out, figure_png(figure))
        print(f"wrote {args.out}")
        return
    if args.command == "table2":
        return _table2_main(args)
    if args.command == "table3":
        if not any(p.name == "result.json" for p in args.runs.rglob("result.json")):
            print(
                f"no runs yet in {args.runs}: make them with `make reproduce-table3` (see README.md); no figure drawn"
            )
            return
        write_atomic(args.out, figure_png(table3_figure(args.runs, args.images)))
        print(f"wrote {args.out}")
        return
    models = dict(TABLE1_FIGURE_MODELS)
    for choice in args.model:
        column, sep, model = choice.partition("=")
        if not sep:
            parser.error(f"--model takes COLUMN=MODEL, e.g. R=st_fcn_aff; got {choice!r}")
        models[column] = model
    if args.digits < 1:
        parser.error(f"--digits must be at least 1, got {args.digits}")
    # Nothing to draw is a state (before the sweep, or after one whose runs all failed), not an error.
    results = load_local_results(args.runs)
    if not results:
        print(f"no runs yet in {args.runs}: make them with `make reproduce-table1` (see README.md); no figure drawn")
        return
    if not any(pick_figure_run(results, column, models.get(column, "")) for column in args.columns):
        print(
            f"no finished spatial-transformer run of {', '.join(args.columns)} among the {len(results)} runs in "
            f"{args.runs} (`python -m stn.results table1 --runs {args.runs}` lists the failed ones); no figure drawn"
        )
        return
    write_atomic(args.out, figure_png(table1_figure(args.runs, args.columns, args.digits, models)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
