"""Reading every run's result back (from its result.json files, or from the W&B runs that mirror them); a run's
folder itself is stn.run_folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stn.checkpoint import CHECKPOINT, RESULT, load_checkpoint, read_result
from stn.results.wandb_offline import offline_wandb_runs, online_wandb_runs, result_from_wandb


def load_local_results(runs_dir: Path) -> list[dict[str, Any]]:
    """Every result.json under `runs_dir` (any depth), each with its `path`; a run that has checkpointed but holds
    no result.json yet (training now, or stopped before its end) comes as an unfinished record with its progress."""
    results = [{**read_result(path.parent), "path": str(path)} for path in sorted(Path(runs_dir).rglob(RESULT))]
    for path in sorted(Path(runs_dir).rglob(CHECKPOINT)):
        if not (path.parent / RESULT).exists():
            results.append(unfinished_record(path))
    return results


def unfinished_record(checkpoint: Path) -> dict[str, Any]:
    """The record of a run known by its checkpoint alone: what it trains (the checkpoint's run identity) and how far
    it got, so a table lists it among the runs it does not count (a damaged checkpoint is an error naming it)."""
    state = load_checkpoint(checkpoint.parent)
    identity = state.get("run_identity") or {}
    data, model, budget = (identity.get(key) or {} for key in ("data", "model", "budget"))
    progress = f"checkpoint at iteration {state['iteration']:,} of {budget.get('iterations', 0):,}"
    if state.get("val_history"):
        progress += f", validation error {state['val_history'][-1][1]:.2f}%"
    progress += f", {state.get('wall_time_s', 0.0) / 3600:.1f} h of wall time so far; the same command resumes it"
    return {
        "data": data.get("name"),
        "column": data.get("column"),
        "model": model.get("name"),
        "seed": identity.get("seed"),
        "budget": budget.get("name"),
        "status": "unfinished",
        "progress": progress,
        "config": identity,  # its recipe (optim and budget names) picks the table it belongs to
        "path": str(checkpoint),
    }


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
