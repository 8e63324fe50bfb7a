"""The GPU check's plan: its sections and their time shares, the step counts per device, the Table 1 grid."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import OmegaConf

from stn.models.params import CONFIG_DIR

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


def reserve_s(plan: Plan) -> float:
    """Time a worker keeps in hand to finish its last (eager) item before it is killed."""
    return 2 * plan.measure_s + 3
