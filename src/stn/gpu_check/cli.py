"""`python -m stn.gpu_check`: the arguments, and the sections run in order under one deadline (see stn.gpu_check)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stn.gpu_check
from stn.gpu_check.plan import SECTIONS, make_plan, seconds_left, section_budget, table1_grid
from stn.gpu_check.processes import Context
from stn.gpu_check.report import render_markdown, save
from stn.gpu_check.sections import SECTION_RUNNERS
from stn.gpu_check.workers import worker
from stn.runinfo import environment, git_state
from stn.runtime import pick_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    grid = table1_grid()
    parser = argparse.ArgumentParser(
        prog="python -m stn.gpu_check",
        description=stn.gpu_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
