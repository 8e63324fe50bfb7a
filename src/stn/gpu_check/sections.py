"""The GPU check's sections: data, the CUDA tests, short runs (compile, resume, precision pair), throughput,
concurrency and the projection; each returns its part of the record."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stn.checkpoint import load_checkpoint, read_result
from stn.gpu_check.plan import EAGER_SHARE, MODES, TEST_CAP_S, Plan, seconds_left
from stn.gpu_check.processes import (
    Context,
    finish,
    kill,
    run_command,
    run_worker,
    start,
    tail,
    worker_command,
    worker_spec,
)
from stn.gpu_check.projection import ips_table, projection
from stn.gpu_check.report import pick


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
