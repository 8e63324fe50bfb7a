"""Run folders: the failed-run record a crashed sweep job leaves, and reading every run's result back (from its
result.json files, or from the W&B runs that mirror them)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stn.checkpoint import RESULT, DamagedFileError, read_result, write_result
from stn.results.wandb_offline import offline_wandb_runs, online_wandb_runs, result_from_wandb

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def load_local_results(runs_dir: Path) -> list[dict[str, Any]]:
    """Every result.json under `runs_dir` (any depth), each with its `path`."""
    results = []
    for path in sorted(Path(runs_dir).rglob(RESULT)):
        results.append({**read_result(path.parent), "path": str(path)})
    return results


def load_results(source: str, runs_dir: Path, wandb_path: str | None = None) -> list[dict[str, Any]]:
    """Result records from result.json files (source local) or from W&B runs (source wandb: the offline runs
    under `runs_dir`, or with `wandb_path` the online project, filtered to the experiment's group)."""
    if source not in ("local", "wandb"):
        raise ValueError(f"unknown source {source!r}; use local or wandb")
    if source == "wandb" and wandb_path:
        results = [result_from_wandb(run) for run in online_wandb_runs(wandb_path, Path(runs_dir).name)]
    elif not Path(runs_dir).is_dir():
        raise FileNotFoundError(
            f"no runs folder {runs_dir}; run the sweep first (make reproduce-table1 ...) or pass --runs"
        )
    elif source == "local":
        results = load_local_results(runs_dir)
    else:
        results = [result_from_wandb(run) for run in offline_wandb_runs(runs_dir)]
    if not results:
        where = wandb_path or runs_dir
        raise FileNotFoundError(f"no {source} results in {where} (W&B runs exist only for runs made with logger=wandb)")
    return results
