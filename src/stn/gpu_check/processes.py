"""Running the GPU check's heavy work in subprocesses (workers and `python -m stn.train` runs) under deadlines,
so that a hang or a crash costs one section, not the check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stn.atomic import write_atomic
from stn.gpu_check.plan import Plan, reserve_s, seconds_left
from stn.runinfo import REPO_ROOT


@dataclass(frozen=True)
class Context:
    """What every section needs: the device, the plan, the grid to check, and where files go."""

    device: str
    plan: Plan
    columns: list[str]
    models: list[str]
    work: Path
    mnist_source: str | None

    @property
    def ref_column(self) -> str:  # the column of the resume check, the precision pair and the concurrency runs
        return "mnist_rts" if "mnist_rts" in self.columns else self.columns[0]

    @property
    def ref_model(self) -> str:
        return "st_cnn_aff" if "st_cnn_aff" in self.models else self.models[-1]

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.mnist_source:
            env["MNIST_SOURCE"] = self.mnist_source
        return env

    def path_overrides(self) -> list[str]:
        source = f"'{self.mnist_source}'" if self.mnist_source else "null"
        return [f"paths.data_dir='{self.work / 'data'}'", f"paths.mnist_source={source}"]


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start(command: list[str], log: Path, ctx: Context) -> subprocess.Popen:
    """Start `command` in its own process group (so a kill takes its compile workers too), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=ctx.env(), start_new_session=True
        )


def kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def finish(process: subprocess.Popen, deadline: float) -> int | None:
    """Wait for `process` until the deadline; kill it then. Its exit code, or None if it was killed."""
    try:
        return process.wait(seconds_left(deadline))
    except subprocess.TimeoutExpired:
        kill(process)
        return None


def run_command(command: list[str], log: Path, ctx: Context, deadline: float) -> dict[str, Any]:
    started = time.time()
    rc = finish(start(command, log, ctx), deadline)
    return {"rc": rc, "timed_out": rc is None, "seconds": time.time() - started, "log": str(log)}


def worker_command(spec: dict[str, Any], path: Path) -> list[str]:
    write_atomic(path, json.dumps(spec, indent=2))
    return [sys.executable, "-m", "stn.gpu_check", "--worker", str(path)]


def worker_spec(ctx: Context, kind: str, out: Path, stop_at: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "device": ctx.device,
        "plan": asdict(ctx.plan),
        "overrides": ctx.path_overrides(),
        "out": str(out),
        "stop_at": stop_at,
        **extra,
    }


def run_worker(ctx: Context, name: str, deadline: float, kind: str, **extra: Any) -> dict[str, Any]:
    """Run one worker until the deadline (it stops starting items a little before); its output and exit."""
    out = ctx.work / "out" / f"{name}.json"
    out.unlink(missing_ok=True)
    spec = worker_spec(ctx, kind, out, deadline - reserve_s(ctx.plan), **extra)
    done = run_command(
        worker_command(spec, ctx.work / "specs" / f"{name}.json"), ctx.work / "logs" / name, ctx, deadline
    )
    result = json.loads(out.read_text()) if out.exists() else {}
    if done["rc"] != 0:
        log = tail(Path(done["log"]))
        last = next((line for line in reversed(log.splitlines()) if line.strip()), "")
        result |= {"error": "timed out" if done["timed_out"] else f"exit code {done['rc']}: {last}", "tail": log}
    return result
