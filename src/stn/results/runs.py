"""Reading every run's result back (from its result.json files, or from the W&B runs that mirror them); a run's
folder itself is stn.run_folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stn.checkpoint import RESULT, read_result
from stn.results.wandb_offline import offline_wandb_runs, online_wandb_runs, result_from_wandb


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
