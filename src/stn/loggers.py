"""Experiment loggers: `none` (does nothing) and W&B (offline unless asked); localisation statistics to log.

W&B is the live view and the shareable record, never the only copy: every run also writes its result file
(stn.results reads offline W&B runs back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from stn.figures import (
    draw_transformations,
    figure_to_array,
    transformation_samples,
    transformer_calls,
    volume_samples,
)
from stn.transformers import SpatialTransformer

PICTURE_CHANNELS = (1, 2, 3)  # grey, MNIST addition's digit pair, RGB: what stn.figures draws
PANEL_ROWS = 4  # W&B panels wrap the images into blocks of 4 rows: a wide picture fits W&B's panel shape


class Logger(Protocol):
    """What the trainer logs to; `run_id` lets a resumed training continue the same W&B run."""

    run_id: str | None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_panels(self, model: nn.Module, images: Tensor, labels: Tensor, step: int) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...


class NoLogger:
    """logger=none: every call is a no-op, so the trainer never has to ask whether logging is on."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_panels(self, model: nn.Module, images: Tensor, labels: Tensor, step: int) -> None:
        pass

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass


class WandbLogger:
    """Logs config, metrics, localisation statistics and transformation panels to a W&B run under the run dir."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resume_id: str | None = None) -> None:
        import wandb  # imported here so logger=none never pays for (or depends on) wandb

        settings = cfg.logger
        run_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            mode=settings.mode,
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags),
            name=settings.run_name,
            dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
            id=resume_id,
            resume="allow" if resume_id else None,
            # A sweep job that crashed may have left its run open in this process: close it, never reuse it.
            reinit="finish_previous",
        )
        self.run_id: str | None = self.run.id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_panels(self, model: nn.Module, images: Tensor, labels: Tensor, step: int) -> None:
        # pictures, or the 3D experiment's volumes [B, D, H, W] (drawn flattened along depth)
        samples = transformation_samples if images.shape[1] in PICTURE_CHANNELS else volume_samples
        figure = draw_transformations([("", samples(model, images, labels))], max_rows=PANEL_ROWS)
        self.run.log({"panels/transformations": self._wandb.Image(figure_to_array(figure))}, step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Store the run's result (all but the config, which W&B already has) as the summary and close the run."""
        self.run.summary.update({key: value for key, value in summary.items() if key != "config"})
        self.run.finish(exit_code=0 if summary.get("status", "finished") == "finished" else 1)
        # finish() can return before W&B's service process has written the run's file; teardown waits for it,
        # so the record is complete when the job ends, even in worker processes (joblib's) that skip atexit hooks.
        self._wandb.teardown()


def build_logger(cfg: DictConfig, run_dir: Path, resume_id: str | None = None) -> Logger:
    """The logger that `cfg.logger.name` asks for; `resume_id` continues an earlier W&B run."""
    name = cfg.logger.name
    if name == "none":
        return NoLogger()
    if name == "wandb":
        return WandbLogger(cfg, Path(run_dir), resume_id)
    raise ValueError(f"unknown logger.name={name!r}; use logger=none or logger=wandb")


def theta_stats(theta: Tensor, identity: Tensor | None = None, prefix: str = "theta") -> dict[str, float]:
    """Mean and std over the batch of each theta parameter, plus the mean distance from the identity transform."""
    theta = theta.detach().float().reshape(len(theta), -1)
    stats: dict[str, float] = {}
    for index, (mean, std) in enumerate(
        zip(theta.mean(0).tolist(), theta.std(0, unbiased=False).tolist(), strict=True)
    ):
        stats[f"{prefix}/mean_{index}"] = mean
        stats[f"{prefix}/std_{index}"] = std
    if identity is not None:
        distance = (theta - identity.to(theta.device, theta.dtype)).norm(dim=1).mean()
        stats[f"{prefix}/distance_from_identity"] = distance.item()
    return stats


def localisation_stats(model: nn.Module, inputs: Tensor) -> dict[str, float]:
    """theta_stats of each of the model's spatial transformers on `inputs` (float model inputs): prefix "theta" for
    a model with one, "theta/<module name>" for several; {} for plain models."""
    if not any(isinstance(module, SpatialTransformer) for module in model.modules()):
        return {}
    calls = transformer_calls(model, inputs)[1]
    stats: dict[str, float] = {}
    for call in calls:
        prefix = "theta" if len(calls) == 1 else f"theta/{call.name}"
        stats |= theta_stats(call.theta, call.module.transform.identity(), prefix)
    return stats
