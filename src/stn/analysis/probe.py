"""Can a loc net see the distortion? A supervised probe of the Table 1 localisation nets.

Trained end to end, the ST-FCN's loc net learns to undo the RTS digits' offset and scale but little of their rotation
(stn.analysis.learned). This probe asks whether that loc net body *could* tell the rotation: the same body (as built
from the model config, e.g. FC 3 x 32 on the raw input) plus a linear head is trained to regress each digit's known
distortion (angle, log scale, offset; each target standardised; mean squared error) on fresh training distortions
every epoch, with the composed config's optimiser, lr schedule and batch size (default: the fast recipe). Scored on
the stored test set: R² per target (1 = every digit's distortion read exactly, 0 = no better than the mean) and the
residual's standard deviation in the target's own unit.

    python -m stn.results probe --data mnist_rts [--model st_fcn_aff] [--hidden 32,32,32 ...] [--iterations 15000]
                                [--seeds 0 1 2] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from stn.data import load_splits
from stn.data.dataset import DataConfig, read_dataset, stored_params
from stn.models.mnist import spatial_transformer
from stn.optim import build_optimizer
from stn.runtime import seed_everything

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
# distortion parameter -> (what it is, its unit, the function of it the probe regresses)
TARGETS = {
    "angle_deg": ("rotation", "deg", lambda v: v),
    "scale": ("log scale", "log", torch.log),
    "offset_px": ("offset", "px", lambda v: v),
}
EVAL_BATCH = 1000


@dataclass(frozen=True)
class ProbeScore:
    """One regressed quantity on the test set."""

    target: str  # e.g. "rotation" or "offset y"
    unit: str
    r2: float
    residual_std: float  # in `unit`
    spread: float  # the target's own standard deviation (what predicting the mean leaves), in `unit`


def target_matrix(params: Mapping[str, Tensor]) -> tuple[Tensor, list[tuple[str, str]]]:
    """[N, K] float64 targets from a split's distortion parameters, and (name, unit) per column. A parameter that
    does not vary across the digits (R's scale) is left out."""
    columns, names = [], []
    for key, (name, unit, of) in TARGETS.items():
        if key not in params:
            continue
        value = of(params[key].double())
        value = value[:, None] if value.dim() == 1 else value
        for k in range(value.shape[1]):
            if value[:, k].std() > 1e-9:
                columns.append(value[:, k])
                names.append((name if value.shape[1] == 1 else f"{name} {'xy'[k]}", unit))
    if not columns:
        raise ValueError(f"no varying distortion parameter among {sorted(params)}: nothing to probe")
    return torch.stack(columns, 1), names


def compose_cfg(data: str, model: str, overrides: Sequence[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="probe"):
        return compose(
            "train", ["experiment=table1", f"data={data}", f"model={model}", "optim=fast", "budget=fast", *overrides]
        )


def probe(cfg, hidden: Sequence[int] | None, iterations: int, seed: int) -> list[ProbeScore]:
    """Train the loc net body of cfg.model (hidden widths replaced by `hidden` when given) to regress the digits'
    distortions of cfg.data, on fresh training draws; return its test scores."""
    generator = seed_everything(seed)
    splits = load_splits(cfg.data)
    if splits.redraw is None:
        raise ValueError("the probe needs fresh training distortions: set data.redraw_train=true")
    arrays, _ = read_dataset(DataConfig.from_cfg(cfg.data))
    test_x = splits.split("test")[0]
    test_y, names = target_matrix(stored_params(arrays, "test"))
    mean, std = test_y.mean(0), test_y.std(0)  # known from the generator's ranges; the test set estimates them

    loc_net = dict(cfg.model.net.loc_net)
    if hidden is not None:
        loc_net["hidden"] = list(hidden)
    body = spatial_transformer(cfg.model.net.transform, loc_net, cfg.model.net.input_shape).loc_net
    net = nn.Sequential(body, nn.Linear(body.out_features, len(names)))
    optimizer, schedule = build_optimizer(net, cfg.optim, iterations)
    batch, step, epoch = int(cfg.budget.batch_size), 0, 0
    while step < iterations:
        images, params = splits.redraw.draw(epoch, "cpu")
        y = ((target_matrix(params)[0] - mean) / std).float()
        for index in torch.randperm(len(images), generator=generator).split(batch):
            if step == iterations or len(index) < batch:
                break
            loss = nn.functional.mse_loss(net(images[index].float().div(255)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        epoch += 1

    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(x.float().div(255)) for x in test_x.split(EVAL_BATCH)]).double() * std + mean
    residual = predicted - test_y
    return [
        ProbeScore(
            target=name,
            unit=unit,
            r2=float(1 - residual[:, k].var() / test_y[:, k].var()),
            residual_std=float(residual[:, k].std()),
            spread=float(test_y[:, k].std()),
        )
        for k, (name, unit) in enumerate(names)
    ]


def _mean_std(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)):.3f}"


def render_probe(arms: Mapping[str, list[list[ProbeScore]]], title: str, command: str, note: str | None = None) -> str:
    """Markdown: one row per (arm, target), mean ± sample std over the arm's seeds (one score list per seed)."""
    lines = [f"**{title}**", "", f"Command: `{command}`", ""] + ([note, ""] if note else [])
    lines += ["| Arm | n | Target | R² | Residual std | Target std |", "|---|---:|---|---:|---:|---:|"]
    for arm, seeds in arms.items():
        for k, first in enumerate(seeds[0]):
            scores = [scores[k] for scores in seeds]
            r2, residual = _mean_std([s.r2 for s in scores]), _mean_std([s.residual_std for s in scores])
            lines.append(
                f"| {arm} | {len(seeds)} | {first.target} | {r2} | {residual} {first.unit} | "
                f"{first.spread:.3f} {first.unit} |"
            )
    return "\n".join(lines) + "\n"
