"""The GPU check's CPU-side parts (arguments, plans, overrides, projection arithmetic, the report) and the training
precision setting. Nothing here is timed: speed is measured by `python -m stn.gpu_check` itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from stn.gpu_check.cli import parse_args
from stn.gpu_check.plan import PLANS, gpu_slug, make_plan, section_budget, table1_grid
from stn.gpu_check.processes import Context
from stn.gpu_check.projection import fill_mode, ips_table, projection
from stn.gpu_check.report import render_markdown, save
from stn.gpu_check.sections import aggregate, best_mode, short_budget, train_command
from stn.gpu_check.workers import compose_run
from stn.models.params import CONFIG_DIR
from stn.precision import autocast, device_precision, use_precision
from stn.train import train

COLUMNS, MODELS = ["mnist_r", "mnist_rts"], ["cnn", "st_cnn_aff"]


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=list(overrides))


# --- arguments and plans -------------------------------------------------------------------------------------------


def test_arguments_default_to_the_whole_table1_grid_and_every_section() -> None:
    args = parse_args([])
    assert args.device == "auto" and not args.quick and args.max_seconds is None and args.concurrency is None
    assert args.sections == ["data", "tests", "runs", "throughput", "concurrency", "projection"]
    assert len(args.columns) == 5 and len(args.models) == 8
    args = parse_args(
        ["--device", "cpu", "--quick", "--sections", "runs", "--columns", "mnist_tc", "--concurrency", "3"]
    )
    assert (args.device, args.quick, args.sections, args.columns, args.concurrency) == (
        "cpu",
        True,
        ["runs"],
        ["mnist_tc"],
        [3],
    )


@pytest.mark.parametrize(
    "argv", [["--concurrency", "0"], ["--max-seconds", "-5"], ["--columns", "mnist_x"], ["--sections", "nap"]]
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_plans_fit_their_device_and_take_overrides() -> None:
    cuda, cpu = make_plan("cuda", False, None, None), make_plan("cpu", False, None, None)
    assert cuda.batch == 256 and cuda.max_seconds <= 8 * 60 and cuda.concurrency == (1, 2, 4, 8)
    assert cpu.batch < cuda.batch and cpu.run_iterations < cuda.run_iterations
    for device in ("cuda", "cpu"):
        full, quick = PLANS[(device, False)], PLANS[(device, True)]
        assert quick.max_seconds < full.max_seconds and quick.measure_s <= full.measure_s
        assert full.run_subset >= full.batch and full.resume_iterations > full.resume_every
    plan = make_plan("mps", True, 60, [1, 3])  # anything but CUDA plans as the CPU
    assert (plan.batch, plan.max_seconds, plan.concurrency) == (cpu.batch, 60, (1, 3))


def test_table1_grid_is_the_papers_sweep() -> None:
    grid = table1_grid()
    assert len(grid["columns"]) * len(grid["models"]) * grid["seeds"] == 120
    assert (grid["iterations"], grid["batch_size"]) == (150_000, 256)


def test_section_budgets_share_the_time_left_by_weight() -> None:
    remaining = ["runs", "throughput", "concurrency", "projection"]
    assert section_budget(100, "runs", remaining) == pytest.approx(30)  # weights 3 / (3 + 5 + 2 + 0)
    assert section_budget(100, "throughput", remaining[1:]) == pytest.approx(100 * 5 / 7)
    assert section_budget(40, "projection", ["projection"]) == 40  # a weightless last section gets what is left


def test_gpu_slug() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert gpu_slug(None) == "cpu"


def test_training_overrides_compose(tmp_path) -> None:
    plan = PLANS[("cpu", False)]
    ctx = Context("cpu", plan, COLUMNS, MODELS, tmp_path, str(tmp_path / "MNIST" / "raw"))
    command = train_command(ctx, "mnist_rts", "cnn", "exp", *short_budget(plan, 6, 3, None), "compile=true")
    assert command[1:3] == ["-m", "stn.train"]
    cfg = config(*command[3:])
    assert (cfg.budget.iterations, cfg.budget.batch_size, cfg.budget.train_subset) == (6, plan.batch, None)
    assert cfg.budget.val_subset == plan.eval_subset and cfg.compile and cfg.data.redraw_train
    assert cfg.paths.data_dir == str(tmp_path / "data") and cfg.paths.mnist_source == str(tmp_path / "MNIST" / "raw")
    assert cfg.run_dir.startswith(f"{tmp_path / 'runs'}/exp/")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        fp32 = compose_run({"overrides": ctx.path_overrides()}, "mnist_r", "fcn", "fp32")
        compiled = compose_run({"overrides": ctx.path_overrides()}, "mnist_r", "fcn", "bf16+compile")
    assert (fp32.precision, fp32.compile, compiled.precision, compiled.compile) == ("fp32", False, "bf16", True)


# --- measurements -> projection ------------------------------------------------------------------------------------

BF16 = {("mnist_r", "cnn"): 1000.0, ("mnist_r", "st_cnn_aff"): 2000.0, ("mnist_rts", "cnn"): 500.0}
BF16[("mnist_rts", "st_cnn_aff")] = 1000.0
COMPILED = {("mnist_r", "cnn"): 2000.0, ("mnist_r", "st_cnn_aff"): 3000.0}  # ratios 2 and 1.5 to bf16


def items() -> list[dict]:
    rows = [{"data": c, "model": m, "mode": "bf16", "images_per_s": v} for (c, m), v in BF16.items()]
    rows += [{"data": c, "model": m, "mode": "bf16+compile", "images_per_s": v} for (c, m), v in COMPILED.items()]
    rows.append({"data": "mnist_r", "model": "cnn", "mode": "fp32", "images_per_s": 800.0})
    rows.append({"data": "mnist_r", "model": "st_cnn_aff", "mode": "fp32", "error": "RuntimeError: boom"})
    return rows


def synthetic_record() -> dict:
    """2 columns x 2 models x 3 seeds of 1000 iterations x 100 images; a redraw costs 0.5 s on mnist_r only."""
    runs = [{"ok": True, "compile": False, "seconds": s, "model": "cnn", "data": "mnist_r"} for s in (10, 20, 30)]
    runs.append({"ok": True, "compile": True, "seconds": 60.0, "model": "cnn", "data": "mnist_r"})
    runs.append({"ok": False, "compile": True, "seconds": 600.0, "error": "timed out"})
    levels = [
        {"processes": 1, "efficiency": 0.9, "aggregate_images_per_s": 900.0, "overlap": 1.0},
        {"processes": 2, "efficiency": 1.6, "aggregate_images_per_s": 1600.0, "overlap": 0.98},
        {"processes": 4, "efficiency": 2.5, "aggregate_images_per_s": 2500.0, "overlap": 0.95},
        {"processes": 8, "error": "no time left"},
    ]
    section = {"seconds": 1.0, "budget_s": 2.0}
    return {
        "gpu": "NVIDIA H100 80GB HBM3",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "device": "cuda",
        "date": "2026-11-27T00:00:00+00:00",
        "command": "python -m stn.gpu_check --out /x",
        "max_seconds": 450,
        "seconds": 400.0,
        "grid": {
            "columns": COLUMNS,
            "models": MODELS,
            "seeds": 3,
            "iterations": 1000,
            "batch_size": 100,
            "eval_every": 500,
        },
        "environment": {"packages": {"torch": "2.11.0"}, "torch_cuda": "13.0", "python": "3.12.3"},
        "git_commit": "abc",
        "git_dirty": False,
        "sections": {
            "tests": {"status": "ok", "summary": "4 passed in 1.0s", **section},
            "runs": {
                "status": "partial",
                "jobs": runs,
                "resume": {"ok": True, "killed_at_iteration": 300, "iterations": 3000, "test_error": 1.5},
                "precision_pair": {
                    "fp32": {"test_error": 1.2, "expected_iterations": 3000},
                    "bf16": {"test_error": 1.3},
                },
                **section,
            },
            "throughput": {
                "status": "partial",
                "batch_size": 100,
                "items": items(),
                "not_measured": 3,
                "redraw_s": {"mnist_r": 0.5, "mnist_rts": 0.0},
                "train_images": {"mnist_r": 1000, "mnist_rts": 1000},
                **section,
            },
            "concurrency": {"status": "partial", "mode": "bf16", "column": "mnist_rts", "levels": levels, **section},
        },
    }


def test_fill_mode_estimates_unmeasured_cells_from_the_models_ratio() -> None:
    filled, estimated = fill_mode(ips_table(items()), "bf16+compile", COLUMNS, MODELS)
    assert filled[("mnist_rts", "cnn")] == pytest.approx(2 * 500) and filled[("mnist_rts", "st_cnn_aff")] == 1500
    assert estimated == [["mnist_rts", "cnn"], ["mnist_rts", "st_cnn_aff"]]
    filled, _ = fill_mode(ips_table(items()), "fp32", COLUMNS, MODELS)
    assert set(filled) == {("mnist_r", "cnn"), ("mnist_rts", "cnn")}  # st_cnn_aff has no fp32 measurement at all


def test_projection_arithmetic() -> None:
    result = projection(synthetic_record())
    # bf16: 3 seeds x [1e5 images / images/s (+ 100 redraws x 0.5 s on mnist_r)] + 12 runs x 20 s median start-up
    bf16 = result["modes"]["bf16"]
    assert bf16["train_s"] == pytest.approx(3 * ((100 + 50) + (50 + 50) + 200 + 100))
    assert bf16["startup_s"] == 12 * 20 and bf16["estimated"] == []
    assert bf16["gpu_hours_alone"] == pytest.approx((1650 + 240) / 3600)
    compiled = result["modes"]["bf16+compile"]
    assert compiled["train_s"] == pytest.approx(3 * ((50 + 50) + (100 / 3 + 50) + 100 + 200 / 3))
    assert compiled["startup_s"] == 12 * 60 and len(compiled["estimated"]) == 2
    assert result["modes"]["fp32"] == {
        "complete": False,
        "missing": [["mnist_r", "st_cnn_aff"], ["mnist_rts", "st_cnn_aff"]],
    }
    # k processes divide bf16's hours by their efficiency; k = 1 only checks the workers, k = 8 failed
    options = {(o["mode"], o["processes"]): o["gpu_hours"] for o in result["options"]}
    assert set(options) == {("bf16", 1), ("bf16+compile", 1), ("bf16", 2), ("bf16", 4)}
    assert options[("bf16", 4)] == pytest.approx(1890 / 3600 / 2.5)
    assert result["best"] == {"mode": "bf16", "processes": 4, "gpu_hours": options[("bf16", 4)]}
    assert result["meets_target"] and result["runs"] == 12 and result["images_per_run"] == 100_000
    assert result["eval_fraction"] == pytest.approx((3 * 10_000 + 10_000) / 100_000)


def test_projection_without_measurements_fails_clearly() -> None:
    record = synthetic_record()
    record["sections"]["throughput"]["items"] = []
    assert projection(record) == {"status": "failed", "error": "no throughput was measured"}


def test_best_mode_and_aggregate() -> None:
    table_items = items()
    assert best_mode(table_items, "mnist_r", MODELS) == "bf16+compile"
    assert best_mode(table_items, "mnist_rts", MODELS) == "bf16"  # compile not measured there
    workers = [
        {
            "mode": "bf16",
            "data": "mnist_r",
            "model": "cnn",
            "images_per_s": 500.0,
            "started_at": 10.0,
            "ended_at": 14.0,
        },
        {
            "mode": "bf16",
            "data": "mnist_r",
            "model": "st_cnn_aff",
            "images_per_s": 1000.0,
            "started_at": 11,
            "ended_at": 15,
        },
    ]
    result = aggregate(workers, ips_table(table_items))
    assert result["aggregate_images_per_s"] == 1500 and result["efficiency"] == pytest.approx(0.5 + 0.5)
    assert result["overlap"] == pytest.approx(3 / 4)
    assert aggregate(workers, {})["efficiency"] is None


def test_report_is_written_as_markdown_and_json(tmp_path) -> None:
    record = synthetic_record()
    record["sections"]["projection"] = {**projection(record), "seconds": 0.0, "budget_s": 0.0}
    record["sections"]["data"] = {
        "status": "failed",
        "error": "MnistNotFoundError: no | MNIST",
        "seconds": 0,
        "budget_s": 9,
    }
    stem = save(record, tmp_path)
    assert stem == tmp_path / "gpu_check_nvidia_h100_80gb_hbm3"
    assert json.loads(stem.with_suffix(".json").read_text()) == record
    text = stem.with_suffix(".md").read_text()
    assert text == render_markdown(record)
    assert "| data | failed | 0 (9) | MnistNotFoundError: no / MNIST |" in text  # a pipe would break the table
    assert "| mnist_r | cnn | 800 | 1,000 | 2,000 | 1.25 | 2.00 |" in text
    assert "| mnist_r | st_cnn_aff | — | 2,000 | 3,000 | — | 1.50 |" in text and "RuntimeError: boom" in text
    assert "| 4 | 2,500 | 2.50 | 95% |" in text and "| 8 | failed: no time left | | |" in text
    assert "Best: **bf16, 4 process(es) at a time: 0.21 GPU-hours**" in text and "meets the 2 H100-hour" in text
    assert "killed (-9) after the checkpoint of iteration 300" in text and "CPU rehearsal" not in text
    assert "fp32: not projected, 2 (column, model) pairs unmeasured" in text


def test_a_section_whose_every_step_failed_says_why_in_the_summary(tmp_path) -> None:
    record = synthetic_record()
    record["sections"]["runs"] = {
        "status": "failed",
        "jobs": [{"name": "eager_fcn", "ok": False, "error": "no time left", "compile": False}],
        "seconds": 108,
        "budget_s": 108,
    }
    text = save(record, tmp_path).with_suffix(".md").read_text()
    assert "| runs | failed | 108 (108) | eager_fcn: no time left |" in text


# --- the training precision ----------------------------------------------------------------------------------------


def test_precision_defaults_to_bf16_on_cuda_and_fp32_on_the_cpu_and_both_are_validated(tmp_path) -> None:
    assert (config().precision, config().cpu_precision) == ("bf16", "fp32")
    for key in ("precision", "cpu_precision"):
        with pytest.raises(ValueError, match=rf"^{key} must be one of \('bf16', 'fp32'\).*'fp16'"):
            device_precision(config(f"{key}=fp16"), torch.device("cpu"))
    cfg = config("precision=fp16", "device=cpu", f"paths.runs_dir={tmp_path}")
    with pytest.raises(ValueError, match="precision must be one of"):
        train(cfg)  # refused before any data is loaded, even on a CPU that would not use it


def test_the_cpu_trains_in_float32_unless_cpu_precision_asks_for_bf16() -> None:
    cpu = torch.device("cpu")
    for overrides, expected in (
        (["precision=bf16"], "fp32"),
        (["precision=fp32"], "fp32"),
        (["cpu_precision=bf16"], "bf16"),
    ):
        precision = device_precision(config(*overrides), cpu)
        assert precision == expected
        use_precision(precision, cpu)
        assert torch.get_float32_matmul_precision() == "highest"  # no TF32-like shortcut on the CPU
        with autocast(cpu, precision):
            assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
            product = torch.ones(2, 2) @ torch.ones(2, 2)
            assert product.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_the_offline_script_names_what_is_missing_and_stops(tmp_path):
    """scripts/gpu_check_offline.sh in a checkout without `make gpu-ready`'s folders: one clear error, exit 2."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check_offline.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert ".whl/ or .gpu_data/MNIST/raw is missing" in done.stderr and "make gpu-ready" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran
