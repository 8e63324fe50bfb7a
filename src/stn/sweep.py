"""Sweep bookkeeping, a Hydra callback (configs/train.yaml, hydra.callbacks): the data of every job is prepared
once before the first job starts (a missing MNIST stops the sweep with one error instead of one per job), a
progress line follows each job and a list of the failed jobs ends the sweep.

Progress is counted from the jobs' result.json files: they are right whichever process runs on_job_end (joblib
and submitit run it in their workers) and they include what an earlier, resumed attempt of the sweep finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stn.checkpoint import RESULT, read_result
from stn.data import prepare

log = logging.getLogger(__name__)


def job_configs(config: DictConfig) -> list[DictConfig]:
    """The config of every job of the sweep, expanded and composed as Hydra's basic sweeper does."""
    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(loader).parse_overrides([*params, *config.hydra.overrides.task])
    jobs = BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]
    return [loader.load_sweep_config(config, job) for job in jobs]


def prepare_data(jobs: list[DictConfig]) -> None:
    """Build (or find) each distinct dataset of the jobs once, through its data config's `loader:` module."""
    seen = set()
    for job in jobs:
        key = json.dumps(OmegaConf.to_container(job.data, resolve=True), sort_keys=True)
        if key not in seen:
            seen.add(key)
            prepare(job.data)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


class SweepCallback(Callback):
    """Prepares the data of a sweep before its jobs, reports progress after each job and the failures at the end."""

    def __init__(self) -> None:
        self.run_dirs: list[Path] = []
        # result.json of jobs that failed in an earlier attempt -> its mtime: pending until the retry rewrites it
        self.failed_before: dict[Path, int] = {}
        self.finished_before = 0
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception of a callback into a warning and goes on: only SystemExit stops the sweep.
        try:
            jobs = job_configs(config)
            self.run_dirs = [Path(job.run_dir).absolute() for job in jobs]
            finished, failed, _ = self.tally()
            log.info("sweep: %d jobs, %d already finished", len(jobs), len(finished))
            # only the jobs that will train need their data: a finished sweep reruns offline, without MNIST
            prepare_data([job for job, run_dir in zip(jobs, self.run_dirs, strict=True) if run_dir not in finished])
        except Exception as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            raise SystemExit(f"sweep stopped before its first job: {error}") from None
        self.failed_before = {run_dir: (run_dir / RESULT).stat().st_mtime_ns for run_dir, _ in failed}
        self.finished_before, self.started = len(finished), time.time()

    def tally(self) -> tuple[list[Path], list[tuple[Path, str]], list[Path]]:
        """The jobs' run folders split into finished, failed (with the error) and pending."""
        finished, failed, pending = [], [], []
        for run_dir in self.run_dirs:
            try:
                result = read_result(run_dir)
            except ValueError as error:  # a damaged result.json (kept as it is): the message says what to do
                failed.append((run_dir, one_line(error)))
                continue
            if result is None or self.failed_before.get(run_dir) == (run_dir / RESULT).stat().st_mtime_ns:
                pending.append(run_dir)
            elif result.get("status") == "finished":
                finished.append(run_dir)
            else:
                failed.append((run_dir, one_line(result.get("error"))))
        return finished, failed, pending

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.run_dirs:  # a single run, not a sweep
            return
        finished, failed, pending = self.tally()
        line = f"sweep: {len(finished) + len(failed)}/{len(self.run_dirs)} done ({len(finished)} finished, "
        line += f"{len(failed)} failed), {len(pending)} remaining"
        ran = len(finished) + len(failed) - self.finished_before
        if pending and ran > 0:
            line += f", ETA {timedelta(seconds=round((time.time() - self.started) / ran * len(pending)))}"
        log.info(line)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finished, failed, pending = self.tally()
        log.info(
            "sweep ended: %d finished, %d failed, %d without a result, of %d jobs",
            len(finished),
            len(failed),
            len(pending),
            len(self.run_dirs),
        )
        for run_dir, error in failed:
            log.warning("failed: %s: %s", run_dir, error)
        for run_dir in pending:  # e.g. killed by the cluster: its hydra/ log says why
            log.warning("no result: %s", run_dir)
