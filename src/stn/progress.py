"""A training run's progress: the mean loss and speed of each logging window (a non-finite loss stops the run), the
validation history, the progress bar and the log lines."""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm import tqdm

from stn import distributed
from stn.distributed import World
from stn.tasks import higher_is_better

log = logging.getLogger(__name__)


class Progress:
    """Accumulates the losses of a logging window on the device, so the loop syncs with it once per window."""

    def __init__(
        self, cfg: DictConfig, state: dict[str, Any], metric: str, run_dir: Path, device: torch.device, world: World
    ) -> None:
        self.state, self.metric, self.run_dir, self.world = state, metric, run_dir, world
        self.best = max if higher_is_better(metric) else min
        self.start, self.total, self.batch_size = state["iteration"], cfg.budget.iterations, cfg.budget.batch_size
        self.loss_sum = torch.zeros((), device=device)
        self.mean_loss = self.images_per_s = math.nan  # of the last window, once one has ended
        self.window_start, self.mark = self.start, time.perf_counter()
        self.loop_started = self.mark
        desc = f"{cfg.data.name}/{cfg.model.name}/seed{cfg.seed}"
        self.bar = tqdm(total=self.total, initial=self.start, desc=desc, disable=None if world.main else True)

    def add(self, loss: Tensor) -> None:
        self.loss_sum += loss.detach()

    def end_window(self, done: int, lr: float) -> dict[str, float]:
        """The window's training metrics (its time counts as training time); raises on a non-finite loss."""
        steps = done - self.window_start
        self.mean_loss = distributed.sum_over_ranks(self.loss_sum, self.world).item() / self.world.size / steps
        seconds = time.perf_counter() - self.mark
        self.state["train_time_s"] += seconds
        if not math.isfinite(self.mean_loss):
            raise FloatingPointError(
                f"non-finite training loss ({self.mean_loss}) in iterations {self.window_start + 1}..{done}; the last "
                f"good checkpoint (iteration {self.state['iteration']}) is kept in {self.run_dir}. Lower "
                f"optim.optimizer.lr or check the data"
            )
        self.images_per_s = steps * self.batch_size / seconds
        return {"train/loss": self.mean_loss, "train/lr": lr, "train/images_per_s": self.images_per_s}

    def validated(self, done: int, value: float | None) -> dict[str, float]:
        """Record a validation score (None: the data has no validation split, as CUB's official one) and log the
        evaluation's line with the ETA."""
        metrics, validation = {}, ""
        if value is not None:
            history = self.state["val_history"]
            history.append([done, value])
            metrics[f"val/{self.metric}"] = value
            best = self.best(v for _, v in history)
            validation = f", val {self.metric} {value:.2f}% (best {best:.2f}%)"
            self.bar.set_postfix(loss=f"{self.mean_loss:.3f}", val=f"{value:.2f}%")
        eta = (time.perf_counter() - self.loop_started) / (done - self.start) * (self.total - done)
        log.info(
            "iteration %d/%d: loss %.4f%s, %.0f images/s, ETA %s",
            done,
            self.total,
            self.mean_loss,
            validation,
            self.images_per_s,
            timedelta(seconds=round(eta)),
        )
        return metrics

    def next_window(self, done: int) -> None:
        self.bar.update(done - self.bar.n)
        self.loss_sum.zero_()
        self.window_start, self.mark = done, time.perf_counter()

    def close(self) -> None:
        self.bar.close()

    def log_finished(self, result: dict[str, Any]) -> None:
        best = result[f"best_val_{self.metric}"]
        log.info(
            "%s finished: test %s %.2f%%, best val %s, %.0f images/s",
            self.run_dir,
            self.metric,
            result[f"test_{self.metric}"],
            "none" if best is None else f"{best:.2f}%",
            result["images_per_s"],
        )
