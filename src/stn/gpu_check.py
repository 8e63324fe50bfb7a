"""Is the project ready for a GPU? One command that checks and measures it on one device, in minutes.

    python -m stn.gpu_check [--device auto|cpu|cuda] [--quick] [--max-seconds S] [--sections NAME ...]
                            [--columns mnist_r ...] [--models fcn ...] [--concurrency 1 2 4 8]
                            [--out results/bench] [--work DIR]

Sections, in this order, each bounded by its share of the time left; a failure is recorded and the rest goes on:
  data         generate the distorted-MNIST columns once (MNIST from MNIST_SOURCE: no network needed)
  tests        the CUDA-only tests (pytest -k cuda)
  runs         `python -m stn.train` briefly for every model with compile off and on (data.redraw_train=true); a run
               killed (-9) after its first checkpoint and rerun, against an uninterrupted twin; an fp32 / bf16 pair
               of short fast-recipe runs (test errors side by side)
  throughput   steady-state training images/s of every model on every column: fp32 (TF32), bf16, bf16 + compile
  concurrency  aggregate images/s of k training processes sharing the device
  projection   GPU-hours of Table 1 at the paper's budget from the measurements (the report says how)

Heavy work runs in subprocesses (this module with --worker), so a hang or a crash costs one section, not the
check. <out>/gpu_check_<gpu>.md and .json are rewritten (atomically) after every section. `--device cpu` runs the
same sections with tiny step counts: a rehearsal of the plumbing, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stn.atomic import write_atomic
from stn.checkpoint import load_checkpoint, read_result
from stn.data import load_splits
from stn.models.params import CONFIG_DIR
from stn.optim import build_optimizer, train_step
from stn.precision import use_precision, wants_channels_last
from stn.runinfo import REPO_ROOT, environment, git_state
from stn.runtime import pick_device, seed_everything
from stn.stream import epoch_batches

# Section -> weight: a section gets weight / (weights of the sections still to run) of the time left.
SECTIONS = {"data": 1, "tests": 1, "runs": 3, "throughput": 5, "concurrency": 2, "projection": 0}
MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16+compile": ("bf16", True)}  # (precision, compile)
EAGER_SHARE = 0.5  # of the throughput section's time for the eager modes; compilation gets the rest
TARGET_GPU_HOURS = 2.0  # issue 7: the paper-budget Table 1 should fit in 2 H100-hours
TEST_CAP_S = 120  # the CUDA tests take seconds; never let them eat the check


@dataclass(frozen=True)
class Plan:
    """Step counts and time windows: full size on CUDA, tiny on the CPU (a rehearsal of the plumbing)."""

    max_seconds: float
    batch: int
    warmup: int  # steps before timing: compile compiles (and recompiles, e.g. once the TPS grid has its cache)
    chunk: int  # steps between synchronisations while timing
    measure_s: float  # timed window of one throughput item
    window_s: float  # timed window of the concurrency runs
    run_iterations: int  # the short runs of the runs section
    run_subset: int  # their training images: a few batches, so the redraw comes every few steps
    eval_subset: int | None  # their validation / test images (None: all)
    resume_iterations: int
    resume_every: int  # checkpoint interval of the resume check
    pair_iterations: int  # the fp32 / bf16 pair (fast recipe)
    workers: int  # processes at a time in the runs section
    concurrency: tuple[int, ...]


PLANS = {
    ("cuda", False): Plan(450, 256, 10, 10, 0.75, 4.0, 40, 2560, None, 3000, 300, 3000, 8, (1, 2, 4, 8)),
    ("cuda", True): Plan(180, 256, 5, 10, 0.3, 2.0, 20, 2560, 2000, 1500, 250, 1000, 8, (1, 4)),
    ("cpu", False): Plan(300, 32, 5, 1, 0.2, 1.0, 6, 96, 200, 60, 10, 12, 2, (1, 2)),
    ("cpu", True): Plan(150, 32, 5, 1, 0.1, 0.5, 4, 64, 100, 40, 10, 8, 1, (1, 2)),
}


def make_plan(device_type: str, quick: bool, max_seconds: float | None, concurrency: list[int] | None) -> Plan:
    plan = PLANS[("cuda" if device_type == "cuda" else "cpu", quick)]
    return replace(
        plan,
        max_seconds=plan.max_seconds if max_seconds is None else max_seconds,
        concurrency=plan.concurrency if concurrency is None else tuple(concurrency),
    )


def table1_grid() -> dict[str, Any]:
    """The sweep the projection is for: configs/experiment/table1.yaml's grid at configs/budget/paper.yaml."""
    params = OmegaConf.load(CONFIG_DIR / "experiment" / "table1.yaml").hydra.sweeper.params
    budget = OmegaConf.load(CONFIG_DIR / "budget" / "paper.yaml")
    columns, models, seeds = (str(params[key]).split(",") for key in ("data", "model", "seed"))
    return {
        "columns": columns,
        "models": models,
        "seeds": len(seeds),
        "iterations": budget.iterations,
        "batch_size": budget.batch_size,
        "eval_every": budget.eval_every,
    }


def gpu_slug(gpu: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3'; no GPU -> 'cpu'."""
    return re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_") if gpu else "cpu"


def section_budget(left_s: float, name: str, remaining: list[str]) -> float:
    """Seconds for section `name` out of `left_s`: its weight's share among the sections still to run."""
    total = sum(SECTIONS[s] for s in remaining)
    return left_s * SECTIONS[name] / total if total else left_s


def seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.time())


# --- Subprocesses ------------------------------------------------------------------------------------------------


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


def reserve_s(plan: Plan) -> float:
    """Time a worker keeps in hand to finish its last (eager) item before it is killed."""
    return 2 * plan.measure_s + 3


# --- Sections ----------------------------------------------------------------------------------------------------


def section_data(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    result = run_worker(ctx, "data", deadline, "data", columns=ctx.columns)
    generated = result.get("columns", {})
    missing = [c for c in ctx.columns if c not in generated]
    status = "ok" if not missing and "error" not in result else "failed"
    return {"status": status, "columns_s": generated, "missing": missing, **pick(result, "error", "tail")}


def section_tests(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_transformers.py", "-k"]
    done = run_command([*command, "cuda"], ctx.work / "logs" / "tests", ctx, min(deadline, time.time() + TEST_CAP_S))
    text = tail(Path(done["log"]))
    summary = next(
        (line for line in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", line)), ""
    )
    if done["rc"] == 0:
        status = "skipped" if "passed" not in summary else "ok"  # all skipped: no CUDA device
    else:
        status = "failed"
    return {"status": status, "summary": summary.strip("= "), **done, **({"tail": text} if status == "failed" else {})}


def short_budget(plan: Plan, iterations: int, every: int, subset: int | None) -> list[str]:
    eval_subset = "null" if plan.eval_subset is None else plan.eval_subset
    return [
        f"budget.iterations={iterations}",
        f"budget.batch_size={plan.batch}",
        f"budget.eval_every={every}",
        f"budget.checkpoint_every={every}",
        f"budget.log_every={every}",
        "budget.eval_batch_size=1000",
        f"budget.train_subset={'null' if subset is None else subset}",
        f"budget.val_subset={eval_subset}",
        f"budget.test_subset={eval_subset}",
    ]


def train_command(ctx: Context, column: str, model: str, experiment: str, *extra: str) -> list[str]:
    overrides = [f"data={column}", f"model={model}", f"experiment_name={experiment}", f"device={ctx.device}"]
    paths = [*ctx.path_overrides(), f"paths.runs_dir='{ctx.work / 'runs'}'"]
    return [sys.executable, "-m", "stn.train", *overrides, "data.redraw_train=true", *paths, *extra]


def run_dir_of(ctx: Context, experiment: str, column: str, model: str) -> Path | None:
    found = sorted((ctx.work / "runs" / experiment).glob(f"*/{column}/{model}/seed*"))
    return found[0] if found else None


def short_run(ctx: Context, name: str, column: str, model: str, deadline: float, expected: int, *extra: str) -> dict:
    """One `python -m stn.train` run (of `expected` iterations) to its end; what its result.json says."""
    if seconds_left(deadline) < 1:
        return {"name": name, "data": column, "model": model, "ok": False, "error": "no time left"}
    done = run_command(train_command(ctx, column, model, name, *extra), ctx.work / "logs" / name, ctx, deadline)
    run_dir = run_dir_of(ctx, name, column, model)
    result = (read_result(run_dir) if run_dir else None) or {}
    row = {
        "name": name,
        "data": column,
        "model": model,
        **done,
        "status": result.get("status"),
        "iterations": result.get("iterations"),
        "expected_iterations": expected,
        "test_error": result.get("test_error"),
        "val_history": result.get("val_history"),
        "images_per_s": result.get("images_per_s"),
        "redraw_train": (result.get("data_meta") or {}).get("redraw_train"),
    }
    row["ok"] = done["rc"] == 0 and row["status"] == "finished" and row["iterations"] == expected
    if not row["ok"]:
        row["tail"] = tail(Path(done["log"]))
    return row


def resume_check(ctx: Context, deadline: float) -> dict[str, Any]:
    """Start a run, kill -9 its process group once a checkpoint exists, rerun the same command."""
    plan, column, model, name = ctx.plan, ctx.ref_column, ctx.ref_model, "resume"
    budget = short_budget(plan, plan.resume_iterations, plan.resume_every, plan.run_subset)
    command = train_command(ctx, column, model, name, *budget)
    process = start(command, ctx.work / "logs" / "resume_killed", ctx)
    while process.poll() is None and time.time() < deadline:
        run_dir = run_dir_of(ctx, name, column, model)
        if run_dir and (run_dir / "checkpoint.pt").exists():
            break
        time.sleep(0.02)
    finished_first = process.poll() is not None
    kill(process)
    run_dir = run_dir_of(ctx, name, column, model)
    state = load_checkpoint(run_dir) if run_dir else None
    if finished_first or state is None:
        why = "the run ended before it could be killed" if finished_first else "no checkpoint before the deadline"
        return {"ok": False, "error": why, "tail": tail(ctx.work / "logs" / "resume_killed")}
    killed_at = state["iteration"]
    done = run_command(command, ctx.work / "logs" / "resume_rerun", ctx, deadline)
    result = read_result(run_dir) or {}
    resumed = f"from iteration {killed_at}" in tail(Path(done["log"]), 100_000)
    problems = [
        done["rc"] != 0 and ("the rerun timed out" if done["timed_out"] else f"the rerun exited with {done['rc']}"),
        not resumed and f"the rerun did not resume from iteration {killed_at}",
        result.get("status") != "finished" and f"the rerun's result is {result.get('status')}",
        result.get("iterations") != plan.resume_iterations and f"{result.get('iterations')} iterations were run",
    ]
    row = {
        "ok": not any(problems),
        "killed_at_iteration": killed_at,
        "resumed_from_checkpoint": resumed,
        "iterations": result.get("iterations"),
        "test_error": result.get("test_error"),
        "val_history": result.get("val_history"),
        **done,
    }
    return row if row["ok"] else {**row, "error": "; ".join(filter(None, problems)), "tail": tail(Path(done["log"]))}


def section_runs(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    """Short runs of every model with compile off (columns in turn) and on (the reference column, which warms
    the compile cache for the throughput section), the resume check and its uninterrupted twin, the precision
    pair; `plan.workers` at a time."""
    plan = ctx.plan
    shutil.rmtree(ctx.work / "runs", ignore_errors=True)
    short = short_budget(plan, plan.run_iterations, max(1, plan.run_iterations // 2), plan.run_subset)
    resume = short_budget(plan, plan.resume_iterations, plan.resume_every, plan.run_subset)
    pair_subset = None if ctx.device == "cuda" else plan.run_subset
    pair = ["optim=fast", "budget=fast", *short_budget(plan, plan.pair_iterations, plan.pair_iterations, pair_subset)]
    jobs: dict[str, Callable[[], dict]] = {
        "resume": lambda: resume_check(ctx, deadline),
        "reference": lambda: short_run(
            ctx, "reference", ctx.ref_column, ctx.ref_model, deadline, plan.resume_iterations, *resume
        ),
    }
    for precision in ("fp32", "bf16"):
        jobs[f"pair_{precision}"] = lambda p=precision: short_run(
            ctx, f"pair_{p}", ctx.ref_column, ctx.ref_model, deadline, plan.pair_iterations, *pair, f"precision={p}"
        )
    for i, model in enumerate(ctx.models):
        column = ctx.columns[i % len(ctx.columns)]
        jobs[f"eager_{model}"] = lambda m=model, c=column: short_run(
            ctx, f"eager_{m}", c, m, deadline, plan.run_iterations, *short
        )
    for model in ctx.models:
        jobs[f"compile_{model}"] = lambda m=model: short_run(
            ctx, f"compile_{m}", ctx.ref_column, m, deadline, plan.run_iterations, *short, "compile=true"
        )

    with ThreadPoolExecutor(plan.workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        done = {name: guarded(future.result) for name, future in futures.items()}
    resume_row, reference = done.pop("resume"), done.pop("reference")
    if resume_row.get("ok") and reference.get("ok"):
        resume_row["matches_uninterrupted"] = resume_row["val_history"] == reference["val_history"] and (
            resume_row["test_error"] == reference["test_error"]
        )
        resume_row["reference_test_error"] = reference["test_error"]
    precision_pair = {p: done.pop(f"pair_{p}") for p in ("fp32", "bf16")}
    rows = [{**row, "compile": name.startswith("compile_")} for name, row in done.items()]
    checks = [*(row.get("ok") for row in rows), resume_row.get("ok"), *(r.get("ok") for r in precision_pair.values())]
    status = "ok" if all(checks) else "partial" if any(checks) else "failed"
    return {
        "status": status,
        "jobs": rows,
        "resume": resume_row,
        "reference": reference,
        "precision_pair": precision_pair,
    }


def guarded(call: Callable[[], dict]) -> dict[str, Any]:
    try:
        return call()
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "tail": traceback.format_exc()[-2000:]}


def section_throughput(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    """Eager modes on every column first (one worker), then compile, the reference column first (another)."""
    columns = [ctx.ref_column, *(c for c in ctx.columns if c != ctx.ref_column)]
    eager = [[c, m, mode] for c in columns for m in ctx.models for mode in ("fp32", "bf16")]
    compiled = [[c, m, "bf16+compile"] for c in columns for m in ctx.models]
    eager_deadline = time.time() + EAGER_SHARE * seconds_left(deadline)
    passes = [("throughput_eager", eager, eager_deadline), ("throughput_compile", compiled, deadline)]
    items, redraw, train_images, errors = [], {}, {}, []
    for name, wanted, until in passes:
        result = run_worker(ctx, name, until, "throughput", items=wanted)
        items += result.get("items", [])
        redraw |= result.get("redraw_s", {})
        train_images |= result.get("train_images", {})
        if "error" in result:
            errors.append(f"{name}: {result['error']}")
    measured = [item for item in items if "images_per_s" in item]
    failed = [item for item in items if "error" in item]
    if failed:
        errors.append(f"{len(failed)} items failed, the first with {failed[0]['error']}")
    expected = len(eager) + len(compiled)
    status = "ok" if len(measured) == expected else "partial" if measured else "failed"
    return {
        "status": status,
        "batch_size": ctx.plan.batch,
        "items": items,
        "not_measured": expected - len(measured),
        "redraw_s": redraw,
        "train_images": train_images,
        **({"error": "; ".join(errors)} if errors else {}),
    }


def best_mode(items: list[dict], column: str, models: list[str]) -> str:
    """The mode with the least total step time over `models` on `column` (bf16 if none covers them all)."""
    table = ips_table(items)
    complete = [m for m in MODES if all((m, column, model) in table for model in models)]
    return min(complete, key=lambda m: sum(1 / table[(m, column, model)] for model in models), default="bf16")


def section_concurrency(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    """k processes, each training a different model (in turn) on the reference column in the best mode, time the
    same window after a common barrier; efficiency = sum over processes of images/s / that model's solo images/s."""
    items = record["sections"].get("throughput", {}).get("items", [])
    mode, column = best_mode(items, ctx.ref_column, ctx.models), ctx.ref_column
    solo = ips_table(items)
    levels = []
    for index, k in enumerate(ctx.plan.concurrency):
        left = len(ctx.plan.concurrency) - index
        until = time.time() + seconds_left(deadline) / left
        if seconds_left(until) < ctx.plan.window_s + 1:
            levels.append({"processes": k, "error": "no time left"})
            continue
        levels.append(concurrency_level(ctx, k, mode, column, until, solo))
    done = [level for level in levels if "error" not in level]
    status = "ok" if len(done) == len(levels) else "partial" if done else "failed"
    return {"status": status, "mode": mode, "column": column, "levels": levels}


def concurrency_level(ctx: Context, k: int, mode: str, column: str, until: float, solo: dict) -> dict[str, Any]:
    barrier = ctx.work / "barrier" / str(k)
    shutil.rmtree(barrier, ignore_errors=True)
    barrier.mkdir(parents=True)
    processes, outs = [], []
    for i in range(k):
        model = ctx.models[i % len(ctx.models)]
        out = ctx.work / "out" / f"concurrency{k}_{i}.json"
        out.unlink(missing_ok=True)
        stop_waiting = until - ctx.plan.window_s - 2  # the latest barrier time that still leaves the window
        item = [column, model, mode]
        spec = worker_spec(ctx, "concurrency", out, stop_waiting, item=item, barrier=str(barrier), count=k)
        command = worker_command(spec, ctx.work / "specs" / f"concurrency{k}_{i}.json")
        processes.append(start(command, ctx.work / "logs" / f"concurrency{k}_{i}", ctx))
        outs.append(out)
    codes = [finish(process, until) for process in processes]
    workers = [json.loads(out.read_text()) if out.exists() else {"error": "no output"} for out in outs]
    if any(code != 0 for code in codes) or any("images_per_s" not in w for w in workers):
        logs = [tail(ctx.work / "logs" / f"concurrency{k}_{i}", 800) for i in range(k)]
        return {"processes": k, "error": f"exit codes {codes}", "workers": workers, "tails": logs}
    return {"processes": k, **aggregate(workers, solo)}


def aggregate(workers: list[dict], solo: dict) -> dict[str, Any]:
    """Aggregate images/s of concurrent workers, their overlap, and the efficiency against their solo speeds."""
    overlap = min(w["ended_at"] for w in workers) - max(w["started_at"] for w in workers)
    longest = max(w["ended_at"] - w["started_at"] for w in workers)
    keys = [(w["mode"], w["data"], w["model"]) for w in workers]
    efficiency = (
        sum(w["images_per_s"] / solo[key] for w, key in zip(workers, keys, strict=True))
        if all(key in solo for key in keys)
        else None
    )
    return {
        "aggregate_images_per_s": sum(w["images_per_s"] for w in workers),
        "efficiency": efficiency,
        "overlap": max(0.0, overlap) / longest if longest > 0 else 0.0,
        "workers": workers,
    }


def section_projection(ctx: Context, record: dict, deadline: float) -> dict[str, Any]:
    return projection(record)


SECTION_RUNNERS: dict[str, Callable[[Context, dict, float], dict[str, Any]]] = {
    "data": section_data,
    "tests": section_tests,
    "runs": section_runs,
    "throughput": section_throughput,
    "concurrency": section_concurrency,
    "projection": section_projection,
}


# --- Projection ----------------------------------------------------------------------------------------------------


def ips_table(items: list[dict]) -> dict[tuple[str, str, str], float]:
    """(mode, column, model) -> measured images/s."""
    return {(i["mode"], i["data"], i["model"]): i["images_per_s"] for i in items if "images_per_s" in i}


def fill_mode(table: dict, mode: str, columns: list[str], models: list[str]) -> tuple[dict, list]:
    """images/s of `mode` for every (column, model): measured, or else the same model's median mode/bf16 ratio on
    the columns where both were measured times its bf16 images/s here. Also the pairs so estimated."""
    filled, estimated = {}, []
    for model in models:
        ratios = [
            table[(mode, c, model)] / table[("bf16", c, model)]
            for c in columns
            if (mode, c, model) in table and ("bf16", c, model) in table
        ]
        for column in columns:
            if (mode, column, model) in table:
                filled[(column, model)] = table[(mode, column, model)]
            elif ratios and ("bf16", column, model) in table:
                filled[(column, model)] = statistics.median(ratios) * table[("bf16", column, model)]
                estimated.append([column, model])
    return filled, estimated


def startup_s(runs: dict, compiled: bool) -> float:
    """Fixed cost of one run: the median wall time of the runs section's short runs (process start, data
    loading, compilation, evaluation and a few iterations), an upper bound as they shared the device."""
    seconds = [row["seconds"] for row in runs.get("jobs", []) if row.get("ok") and row["compile"] == compiled]
    return statistics.median(seconds) if seconds else 0.0


def projection(record: dict) -> dict[str, Any]:
    """GPU-hours of the Table 1 grid at the paper's budget, per mode alone and with the measured concurrency.

    serial(mode) = seeds x sum over (column, model) of [iterations x batch / images/s + redraws x redraw_s]
                   + runs x startup(mode)
    hours(mode, k) = serial(mode) / efficiency(k) / 3600, efficiency measured for the concurrency section's mode.
    """
    grid, sections = record["grid"], record["sections"]
    throughput = sections.get("throughput", {})
    table = ips_table(throughput.get("items", []))
    if not table:
        return {"status": "failed", "error": "no throughput was measured"}
    columns, models, seeds = grid["columns"], grid["models"], grid["seeds"]
    images = grid["iterations"] * grid["batch_size"]
    runs = len(columns) * len(models) * seeds
    redraw_s, train_images = throughput.get("redraw_s", {}), throughput.get("train_images", {})
    modes = {}
    for mode, (_, compiled) in MODES.items():
        filled, estimated = fill_mode(table, mode, columns, models)
        missing = [[c, m] for c in columns for m in models if (c, m) not in filled]
        if missing:
            modes[mode] = {"complete": False, "missing": missing}
            continue
        redraws = {
            c: grid["iterations"] // (train_images[c] // grid["batch_size"]) * redraw_s[c]
            for c in columns
            if c in redraw_s and c in train_images
        }
        train_s = seeds * sum(images / filled[(c, m)] + redraws.get(c, 0.0) for c in columns for m in models)
        overhead_s = runs * startup_s(sections.get("runs", {}), compiled)
        modes[mode] = {
            "complete": True,
            "estimated": estimated,
            "train_s": train_s,
            "startup_s": overhead_s,
            "redraw_included": sorted(redraws),
            "gpu_hours_alone": (train_s + overhead_s) / 3600,
        }
    concurrency = sections.get("concurrency", {})
    shared = concurrency.get("mode")
    levels = [level for level in concurrency.get("levels", []) if level.get("efficiency")]
    options = [
        {"mode": mode, "processes": 1, "gpu_hours": m["gpu_hours_alone"]} for mode, m in modes.items() if m["complete"]
    ]
    if shared in modes and modes[shared]["complete"]:
        hours = modes[shared]["gpu_hours_alone"]
        options += [  # k = 1 is the check of the workers against the throughput section, not an option
            {"mode": shared, "processes": lv["processes"], "gpu_hours": hours / lv["efficiency"]}
            for lv in levels
            if lv["processes"] > 1
        ]
    if not options:
        return {"status": "failed", "error": "no mode was measured on every (column, model)", "modes": modes}
    best = min(options, key=lambda option: option["gpu_hours"])
    return {
        "status": "ok" if levels else "partial",
        "runs": runs,
        "images_per_run": images,
        "eval_fraction": eval_fraction(grid),
        "modes": modes,
        "options": options,
        "best": best,
        "target_gpu_hours": TARGET_GPU_HOURS,
        "meets_target": best["gpu_hours"] <= TARGET_GPU_HOURS,
    }


def eval_fraction(grid: dict) -> float:
    """Evaluated (forward-only) images per run over trained images: validation at every eval_every and the end,
    and the test set, with the 10k-image val and test sets of every column."""
    evaluations = grid["iterations"] // grid["eval_every"] + 1
    return (evaluations * 10_000 + 10_000) / (grid["iterations"] * grid["batch_size"])


# --- The report --------------------------------------------------------------------------------------------------


def number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(record: dict) -> str:
    env, sections = record["environment"], record["sections"]
    lines = [
        f"# GPU check: {record['gpu']} ({record['date']})",
        "",
        f"`{record['command']}`",
        "",
        f"torch {env['packages'].get('torch')} (CUDA {env['torch_cuda']}), Python {env['python']}, "
        f"commit {record['git_commit']}{' (dirty)' if record['git_dirty'] else ''}, "
        f"{record['max_seconds']:.0f} s allowed, {record['seconds']:.0f} s taken.",
    ]
    if record["device"] != "cuda":
        lines += ["", "**CPU rehearsal**: tiny step counts; it checks the plumbing, its numbers mean nothing."]
    lines += ["", "| section | status | seconds (budget) | note |", "|---|---|---:|---|"]
    for name, section in sections.items():
        note = section.get("error") or section.get("summary") or first_failure(section)
        note = note.replace("\n", " ").replace("|", "/")[:160]
        lines.append(
            f"| {name} | {section['status']} | {section['seconds']:.0f} ({section['budget_s']:.0f}) | {note} |"
        )
    for name, render in (
        ("runs", render_runs),
        ("throughput", render_throughput),
        ("concurrency", render_concurrency),
        ("projection", render_projection),
    ):
        if name in sections and sections[name]["status"] != "failed":
            lines += ["", *render(sections[name])]
    return "\n".join(lines) + "\n"


def render_runs(section: dict) -> list[str]:
    lines = [
        "## Short runs (`python -m stn.train`, data.redraw_train=true)",
        "",
        "| model | column | compile | ok | iterations | wall s | note |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in section["jobs"]:
        iterations = "—" if row.get("iterations") is None else row["iterations"]
        lines.append(
            f"| {row.get('model')} | {row.get('data')} | {'on' if row['compile'] else 'off'} | "
            f"{'yes' if row.get('ok') else 'NO'} | {iterations} | {number(row.get('seconds'), 1)} | {failure(row)} |"
        )
    resume = section["resume"]
    if resume.get("ok"):
        match = resume.get("matches_uninterrupted")
        twin = {True: "identical to", False: "different from", None: "not compared with"}[match]
        lines += [
            "",
            f"Kill and resume: killed (-9) after the checkpoint of iteration {resume['killed_at_iteration']}, the "
            f"rerun resumed from it and finished {resume['iterations']} iterations; its validation history and test "
            f"error ({number(resume['test_error'], 2)}%) are {twin} an uninterrupted twin's "
            f"({number(resume.get('reference_test_error'), 2)}%; only the CPU is bit-reproducible).",
        ]
    else:
        lines += ["", f"Kill and resume: FAILED ({failure(resume)})."]
    pair = section["precision_pair"]
    errors = {p: number(row.get("test_error"), 2) for p, row in pair.items()}
    lines += [
        "",
        f"Precision pair (fast recipe, {pair['fp32'].get('expected_iterations')} iterations, one seed): test error "
        f"fp32 {errors['fp32']}% vs bf16 {errors['bf16']}%: a sanity check, not the equal-error comparison.",
    ]
    return lines


def first_failure(section: dict) -> str:
    """The first failed step of a section that failed without one error of its own (e.g. every run timed out)."""
    if section.get("status") == "ok":
        return ""
    for value in section.values():
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            if isinstance(row, dict) and row.get("ok") is False:
                return f"{row.get('name', 'a step')}: {failure(row)}"
    return ""


def failure(row: dict) -> str:
    """Why a run is not ok, in a table cell (its whole log is logs/<name> in gpu_check_logs.tgz)."""
    if row.get("ok"):
        return ""
    if row.get("error") or row.get("timed_out"):
        return row.get("error") or "timed out"
    if row.get("rc"):
        return f"exit code {row['rc']}, see logs/{Path(row['log']).name}"
    return f"status {row.get('status')}, {row.get('iterations')} of {row.get('expected_iterations')} iterations"


def render_throughput(section: dict) -> list[str]:
    table = ips_table(section["items"])
    pairs = list(dict.fromkeys((i["data"], i["model"]) for i in section["items"]))
    lines = [
        f"## Steady-state training images/s (batch {section['batch_size']}, one process)",
        "",
        "| column | model | fp32 (TF32) | bf16 | bf16 + compile | bf16 / fp32 | compile / bf16 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for column, model in pairs:
        fp32, bf16, comp = (table.get((mode, column, model)) for mode in MODES)
        ratios = [number(a / b, 2) if a and b else "—" for a, b in ((bf16, fp32), (comp, bf16))]
        lines.append(
            f"| {column} | {model} | {number(fp32)} | {number(bf16)} | {number(comp)} | {' | '.join(ratios)} |"
        )
    failed = [i for i in section["items"] if "error" in i]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{i['data']}/{i['model']}/{i['mode']}: {i['error']}" for i in failed)]
    if section["not_measured"]:
        lines += ["", f"{section['not_measured']} (column, model, mode) cells were not measured (time or failure)."]
    redraw = ", ".join(f"{c} {1000 * s:.1f} ms" for c, s in section["redraw_s"].items())
    lines += ["", f"Redrawing a column's training distortions (once per epoch with data.redraw_train): {redraw}."]
    return lines


def render_concurrency(section: dict) -> list[str]:
    lines = [
        f"## Processes sharing the device ({section['mode']}, {section['column']}, models in turn)",
        "",
        "| processes | aggregate images/s | efficiency | window overlap |",
        "|---:|---:|---:|---:|",
    ]
    for level in section["levels"]:
        if "error" in level:
            lines.append(f"| {level['processes']} | failed: {level['error']} | | |")
            continue
        lines.append(
            f"| {level['processes']} | {number(level['aggregate_images_per_s'])} | "
            f"{number(level['efficiency'], 2)} | {100 * level['overlap']:.0f}% |"
        )
    lines += ["", "Efficiency: sum over the processes of images/s / the same model's images/s alone (above)."]
    return lines


def render_projection(section: dict) -> list[str]:
    best = section["best"]
    verdict = "meets" if section["meets_target"] else "misses"
    lines = [
        "## Projection: Table 1 at the paper's budget",
        "",
        f"{section['runs']} runs of {section['images_per_run']:,} training images. Best: **{best['mode']}, "
        f"{best['processes']} process(es) at a time: {best['gpu_hours']:.2f} GPU-hours** on this GPU, which "
        f"{verdict} the {section['target_gpu_hours']:g} H100-hour target.",
        "",
        "| mode | processes | GPU-hours |",
        "|---|---:|---:|",
        *(f"| {o['mode']} | {o['processes']} | {o['gpu_hours']:.2f} |" for o in section["options"]),
        "",
        "How: per mode, seconds alone = seeds x sum over (column, model) of (iterations x batch / measured "
        "images/s + redraws per run x redraw seconds) + runs x the median wall time of a short run (start-up, data, "
        "compilation, evaluation: an upper bound); with k processes, divided by their measured efficiency. "
        f"Not counted: evaluation, {100 * section['eval_fraction']:.1f}% of the trained images, forward only.",
    ]
    for mode, m in section["modes"].items():
        if not m["complete"]:
            lines.append(f"- {mode}: not projected, {len(m['missing'])} (column, model) pairs unmeasured.")
        elif m["estimated"]:
            lines.append(
                f"- {mode}: {len(m['estimated'])} (column, model) pairs estimated from the model's {mode} / bf16 "
                "ratio on the measured columns."
            )
    return lines


def pick(mapping: dict, *keys: str) -> dict:
    return {key: mapping[key] for key in keys if key in mapping}


def save(record: dict, out: Path) -> Path:
    stem = out / f"gpu_check_{gpu_slug(record['gpu_name'])}"
    write_atomic(stem.with_suffix(".md"), render_markdown(record))
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return stem


# --- Workers (subprocesses) --------------------------------------------------------------------------------------


def compose_run(spec: dict, column: str, model: str, mode: str = "bf16") -> DictConfig:
    precision, compiled = MODES[mode]
    overrides = [f"data={column}", f"model={model}", f"precision={precision}", f"compile={compiled}"]
    return compose(config_name="train", overrides=[*overrides, "data.redraw_train=true", *spec["overrides"]])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor, plan: Plan, barrier=None) -> dict:
    """Steady-state images/s of the training step of train.py's loop (autocast forward, float32 loss, backward,
    optimiser and lr steps) after `plan.warmup` steps, over `plan.measure_s` (or a barrier's window)."""
    device = images.device
    use_precision(cfg.precision, device)
    seed_everything(0)
    model = instantiate(cfg.model.net).to(device)
    if wants_channels_last(device, cfg.precision):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh compile per model, as a run gets (and no recompile limit across models)
    step_model = torch.compile(model) if cfg.compile else model
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.budget.iterations)
    batches = epoch_batches(images, labels, plan.batch, 0, 0, None)

    def step() -> torch.Tensor:
        return train_step(step_model, optimizer, scheduler, *next(batches), cfg.precision)

    started = time.perf_counter()
    for _ in range(plan.warmup):
        step()
    synchronise(device)
    warmup_s = time.perf_counter() - started
    window = plan.measure_s
    if barrier is not None:
        window = plan.window_s
        barrier()
    steps, began, wall_began = 0, time.perf_counter(), time.time()
    while True:
        for _ in range(plan.chunk):
            loss = step()
        steps += plan.chunk
        synchronise(device)
        seconds = time.perf_counter() - began
        if seconds >= window:
            break
    return {
        "images_per_s": steps * plan.batch / seconds,
        "steps": steps,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "final_loss": loss.item(),
        "started_at": wall_began,
        "ended_at": wall_began + seconds,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def redraw_seconds(redraw, device: torch.device) -> float:
    """Seconds of one redraw of the training distortions (the second call: the first moves the digits)."""
    for seed in (1, 2):
        synchronise(device)
        started = time.perf_counter()
        redraw(seed, device)
        synchronise(device)
    return time.perf_counter() - started


def wait_at_barrier(folder: Path, count: int, stop_at: float) -> None:
    """Announce readiness, then wait until all `count` workers are ready (or stop_at: then time alone)."""
    (folder / f"ready{os.getpid()}").touch()
    while len(list(folder.glob("ready*"))) < count and time.time() < stop_at:
        time.sleep(0.005)


def worker(spec_path: Path) -> None:
    """Run one worker spec (written by the orchestrator), saving its output after every item."""
    spec = json.loads(Path(spec_path).read_text())
    device, plan, out = pick_device(spec["device"]), Plan(**spec["plan"]), Path(spec["out"])
    output: dict[str, Any] = {}

    def save_output() -> None:
        write_atomic(out, json.dumps(output, indent=2))

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="gpu_check"):
        if spec["kind"] == "data":
            output["columns"] = {}
            for column in spec["columns"]:
                started = time.perf_counter()
                load_splits(compose_run(spec, column, "cnn").data)  # generates the stored file if missing
                output["columns"][column] = time.perf_counter() - started
                save_output()
        elif spec["kind"] == "throughput":
            throughput_worker(spec, device, plan, output, save_output)
        else:  # one process of a concurrency level
            column, model, mode = spec["item"]
            cfg = compose_run(spec, column, model, mode)
            splits = load_splits(cfg.data)
            barrier = Path(spec["barrier"])
            images, labels = splits.train_x.to(device), splits.train_y.to(device)
            row = measure(cfg, images, labels, plan, lambda: wait_at_barrier(barrier, spec["count"], spec["stop_at"]))
            output |= {"data": column, "model": model, "mode": mode, **row}
            save_output()


def throughput_worker(spec: dict, device: torch.device, plan: Plan, output: dict, save_output) -> None:
    output |= {"items": [], "redraw_s": {}, "train_images": {}}
    loaded: dict[str, Any] = {}
    for column, model, mode in spec["items"]:
        if time.time() > spec["stop_at"]:
            break
        item = {"data": column, "model": model, "mode": mode}
        try:
            if column not in loaded:
                loaded.clear()  # one column's images on the device at a time
                splits = load_splits(compose_run(spec, column, model).data)
                loaded[column] = (splits.train_x.to(device), splits.train_y.to(device))
                output["redraw_s"][column] = redraw_seconds(splits.redraw, device)
                output["train_images"][column] = len(splits.train_x)
            item |= measure(compose_run(spec, column, model, mode), *loaded[column], plan)
        except Exception as error:  # recorded; the next item goes on
            item["error"] = f"{type(error).__name__}: {error}"[:500]
        output["items"].append(item)
        save_output()


# --- Command line ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    grid = table1_grid()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer concurrency levels")
    parser.add_argument("--max-seconds", type=float, help="time for all sections (default: 450 on CUDA, 300 CPU)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--columns", nargs="+", choices=grid["columns"], default=grid["columns"])
    parser.add_argument("--models", nargs="+", choices=grid["models"], default=grid["models"])
    parser.add_argument("--concurrency", type=int, nargs="+", help="processes at a time (default: 1 2 4 8 on CUDA)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "stn_gpu_check")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be positive")
    if args.concurrency is not None and min(args.concurrency) < 1:
        parser.error("--concurrency takes process counts >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return
    device = pick_device(args.device)
    plan = make_plan(device.type, args.quick, args.max_seconds, args.concurrency)
    source = os.environ.get("MNIST_SOURCE")
    work = args.work.resolve()
    ctx = Context(device.type, plan, args.columns, args.models, work, str(Path(source).resolve()) if source else None)
    for folder in ("logs", "out", "specs", "barrier"):
        shutil.rmtree(work / folder, ignore_errors=True)
    env = environment(device)
    commit, dirty = git_state()
    started = time.time()
    record: dict[str, Any] = {
        "gpu": env["gpu"] or f"CPU ({env['cpu']})",
        "gpu_name": env["gpu"],
        "device": device.type,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m stn.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        "max_seconds": plan.max_seconds,
        "seconds": 0.0,
        "plan": asdict(plan),
        "grid": table1_grid(),
        "checked": {"columns": args.columns, "models": args.models},
        "environment": env,
        "git_commit": commit,
        "git_dirty": dirty,
        "sections": {},
    }
    deadline_all = started + plan.max_seconds
    order = [name for name in SECTIONS if name in args.sections]
    for index, name in enumerate(order):
        budget = section_budget(seconds_left(deadline_all), name, order[index:])
        section_started = time.time()
        print(f"[gpu_check] {name}: up to {budget:.0f} s", flush=True)
        try:
            section = SECTION_RUNNERS[name](ctx, record, section_started + budget)
        except Exception as error:  # recorded; the next section goes on
            section = {"status": "failed", "error": f"{type(error).__name__}: {error}", "tail": traceback.format_exc()}
        section |= {"seconds": time.time() - section_started, "budget_s": budget}
        record["sections"][name] = section
        record["seconds"] = time.time() - started
        stem = save(record, args.out)
        print(f"[gpu_check] {name}: {section['status']} in {section['seconds']:.0f} s", flush=True)
    print(render_markdown(record))
    print(f"written to {stem}.md and .json")


if __name__ == "__main__":
    main()
