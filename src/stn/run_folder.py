"""A run's folder (cfg.run_dir): which configuration it belongs to, its checkpoint (to resume bit for bit), and its
result record (result.json: status finished or failed, what was trained where, the numbers the tables read).

A rerun of the same command resumes from the checkpoint or, once finished, just reports the result; a folder of
another configuration is refused with what to do.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from stn.checkpoint import RESULT, DamagedFileError, load_checkpoint, read_result, save_checkpoint, write_result
from stn.distributed import World
from stn.models import count_parameters
from stn.runinfo import environment, git_state
from stn.setup import RunData
from stn.tasks import higher_is_better

log = logging.getLogger(__name__)

T = TypeVar("T")

# The config sections that make two runs the same run; compared unresolved, so moving the data or runs folder
# (paths.*) does not matter, while any change of data, model, optimiser, budget, seed or precision (cpu_precision
# too, when it is not fp32) does.
IDENTITY_KEYS = ("seed", "data", "model", "optim", "budget", "precision")
# Data keys that say how a dataset is loaded and scored, not what is trained: each dataset has one of each, and the
# Table 1 runs made before these keys existed must still match their checkpoints and results.
WIRING_KEYS = ("loader", "task")
OTHER_RUN = (
    "belongs to a different configuration (data/model/optim/budget/seed/precision); set another experiment_name (or "
    "seed), or delete that folder to start over"
)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=False)
    identity = {key: config[key] for key in IDENTITY_KEYS}
    identity["data"] = {key: value for key, value in identity["data"].items() if key not in WIRING_KEYS}
    cpu_precision = config.get("cpu_precision", "fp32")
    if cpu_precision != "fp32":  # left out at fp32, the CPU's only precision before the key existed: older runs match
        identity["cpu_precision"] = cpu_precision
    return identity


def device_name(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def parameters_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class RunFolder:
    """One run's folder, from the moment the run starts (its wall time counts from here)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.path = Path(to_absolute_path(cfg.run_dir))
        self.identity = run_identity(cfg)
        self.started = time.perf_counter()
        # the code this process runs: read now, as the checkout may move on while a long run trains
        self.commit, self.dirty = git_state()

    def finished_result(self) -> dict[str, Any] | None:
        """The record of this run if it already finished (a failed record is simply retried)."""
        previous = read_result(self.path)
        if previous is None or previous["status"] != "finished":
            return None
        if previous.get("run_identity") != self.identity:
            raise ValueError(f"{self.path} holds a finished run that {OTHER_RUN}")
        metric = previous.get("metric", "error")
        log.info("%s already finished: test %s %.2f%%; nothing to do", self.path, metric, previous[f"test_{metric}"])
        return previous

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
    ) -> dict[str, Any]:
        """The run's state: the checkpoint's, with model, optimiser, schedule and random state restored from it, or
        that of a fresh start."""
        state = load_checkpoint(self.path)
        if state is None:
            return {"iteration": 0, "val_history": [], "train_time_s": 0.0, "wall_time_s": 0.0, "logger_run_id": None}
        if state.get("run_identity") != self.identity:
            raise ValueError(f"{self.path}/checkpoint.pt {OTHER_RUN}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        log.info("resuming %s from iteration %d", self.path, state["iteration"])
        return state

    def checkpoint(
        self,
        state: dict[str, Any],
        done: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        logger_run_id: str | None,
        device: torch.device,
        world: World,
    ) -> None:
        """Bring `state` to iteration `done` on every rank (to record at the end); rank 0 alone writes it."""
        if not parameters_finite(model):  # never overwrite a good checkpoint with a broken state
            raise FloatingPointError(
                f"parameters became non-finite by iteration {done}; the last good checkpoint (iteration "
                f"{state['iteration']}) is kept in {self.path}. Lower optim.optimizer.lr"
            )
        state |= {
            "iteration": done,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "run_identity": self.identity,
            "logger_run_id": logger_run_id,
        }
        if world.main:
            save_checkpoint({**state, "wall_time_s": self.wall_time(state)}, self.path)

    def wall_time(self, state: dict[str, Any]) -> float:
        """Seconds this run has taken, over all its attempts."""
        return state["wall_time_s"] + time.perf_counter() - self.started

    def record(
        self,
        status: str,
        state: dict[str, Any],
        model: nn.Module,
        data: RunData,
        metric: str,
        device: torch.device,
        world: World,
        test_value: float | None = None,
        error: BaseException | None = None,
    ) -> dict[str, Any]:
        """The run's result record as of `state`: with the test score once finished, with the error if failed."""
        cfg, history = self.cfg, state["val_history"]
        best = max if higher_is_better(metric) else min
        commit, dirty = self.commit, self.dirty
        trained_images, train_time = state["iteration"] * cfg.budget.batch_size, state["train_time_s"]
        return {
            "experiment": cfg.experiment_name,
            "data": cfg.data.name,
            "column": cfg.data.get("column"),
            "model": cfg.model.name,
            "seed": cfg.seed,
            "budget": cfg.budget.name,
            "status": status,
            "params": count_parameters(model),
            "metric": metric,
            f"val_{metric}": history[-1][1] if history else None,
            f"best_val_{metric}": best((value for _, value in history), default=None),
            f"test_{metric}": test_value,
            "iterations": state["iteration"],
            "wall_time_s": self.wall_time(state),
            "train_time_s": state["train_time_s"],
            "images_per_s": trained_images / train_time if train_time > 0 else None,
            "val_history": history,
            "val_examples": len(data.val[0]),
            "test_examples": len(data.test[0]),
            "device": device_name(device),
            "processes": world.size,
            "data_meta": data.meta,
            "git_commit": commit,
            "git_dirty": dirty,
            "environment": environment(device),
            "run_identity": self.identity,
            "config": OmegaConf.to_container(cfg, resolve=True),
            **({} if error is None else {"error": f"{type(error).__name__}: {error}"}),
        }


def _finish_open_wandb_run_as_failed(error: str) -> None:
    """Mark the W&B run a crashed job left open as failed, so the W&B record agrees with result.json."""
    wandb = sys.modules.get("wandb")  # never import wandb just to learn that no run is open
    if wandb is None or wandb.run is None:
        return
    wandb.run.summary.update({"status": "failed", "error": error})
    wandb.run.finish(exit_code=1)
    wandb.teardown()  # wait until the run's file is complete (see stn.loggers.WandbLogger.finish)


def record_failure(run_dir: Path, cfg: DictConfig, exc: BaseException) -> Path:
    """Give the run a result.json with status "failed" and the error, so the table lists it instead of losing it.

    A finished result already there is never overwritten (the error may be that the folder belongs to another
    run); a failed record the trainer wrote for this same error is kept, as it knows more, and gets the traceback.
    """
    run_dir = Path(run_dir)
    error = f"{type(exc).__name__}: {exc}"
    _finish_open_wandb_run_as_failed(error)
    trace = "".join(traceback.format_exception(exc))
    try:
        existing = read_result(run_dir)
    except DamagedFileError as damaged:  # kept for a person to look at; the sweep lists it as failed
        log.error("%s; this attempt failed with %s", damaged, error)
        return run_dir / RESULT
    if existing is not None and existing.get("status") == "finished":
        log.error("%s holds a finished run, left as it is; this attempt failed with %s", run_dir, error)
        return run_dir / RESULT
    if existing is not None and existing.get("status") == "failed" and existing.get("error") == error:
        write_result({**existing, "traceback": trace}, run_dir)
        return run_dir / RESULT

    def value(key: str) -> Any:  # the config itself may be what failed: never let reading it raise here
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)

    result = {
        "experiment": value("experiment_name"),
        "data": value("data.name"),
        "column": value("data.column"),
        "model": value("model.name"),
        "seed": value("seed"),
        "budget": value("budget.name"),
        "status": "failed",
        "error": error,
        "traceback": trace,
        "config": OmegaConf.to_container(cfg, resolve=False),
    }
    write_result(result, run_dir)
    return run_dir / RESULT


def run_sweep_job(task: Callable[[DictConfig], T], cfg: DictConfig, run_dir: Path) -> T | None:
    """Run `task(cfg)`; on an exception record a failed result, then re-raise in a single run but return None
    in a multirun, so one failing job never stops the rest of a sweep (whatever the launcher)."""
    try:
        return task(cfg)
    except Exception as exc:
        record_failure(run_dir, cfg, exc)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.exception("run %s failed; its result.json records the error and the sweep goes on", run_dir)
            return None
        raise
