"""GPU-hours of Table 1 at the paper's budget, projected from the measured throughput and start-up times."""

from __future__ import annotations

import statistics
from typing import Any

from stn.gpu_check.plan import MODES, TARGET_GPU_HOURS


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
