"""`make reproduce-table1` in miniature, on real data: a Table 1 sweep (2 datasets x 2 models, smoke budget, W&B
offline) through submitit's local executor -- the cluster code path, each job its own process -- with one job
that fails for real; then the table from the result files and from the offline W&B runs, and the figure. And the
sweep's own bookkeeping (stn.sweep): data prepared once before the jobs, progress, failed jobs listed."""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

import stn.sweep
from stn.checkpoint import write_result
from stn.figures import main as figures_main
from stn.figures import table1_figure
from stn.results.cli import main as results_main
from stn.sweep import SweepCallback

DATASETS, MODELS = ("mnist_r", "mnist_rts"), ("fcn", "st_cnn_aff")
RECIPE = "sgd_table1-smoke"  # the run folder level of experiment=table1 budget=smoke
LAUNCHERS = sorted(p.stem for p in (REPO_ROOT / "configs" / "hydra" / "launcher").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_table1_sweep_is_the_papers_grid():
    cfg = compose_train(["experiment=table1"])
    params = cfg.hydra.sweeper.params
    grid = {key: str(params[key]).split(",") for key in ("data", "model", "seed")}
    assert len(grid["data"]) * len(grid["model"]) * len(grid["seed"]) == 5 * 8 * 3
    for group in ("data", "model"):
        assert all((REPO_ROOT / "configs" / group / f"{name}.yaml").exists() for name in grid[group])
    assert cfg.experiment_name == "table1" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_config_builds_its_launcher(launcher):
    params = OmegaConf.to_container(compose_train([f"hydra/launcher={launcher}"]).hydra.launcher, resolve=True)
    module, name = params.pop("_target_").rsplit(".", 1)
    launcher_class = getattr(importlib.import_module(module), name)  # as Hydra's plugin loader builds it
    assert issubclass(launcher_class, Launcher)
    launcher_class(**params)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_store, mnist_raw_root) -> Path:
    """Run the sweep once (its callback generates each dataset once, before the jobs); returns the folder holding
    runs/table1."""
    root = tmp_path_factory.mktemp("sweep")
    env = {
        **os.environ,
        "STN_RUNS_DIR": str(root / "runs"),
        "STN_DATA_DIR": str(data_store),
        "MNIST_SOURCE": str(mnist_raw_root),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    command = [
        sys.executable, "-m", "stn.train", "experiment=table1", "hydra/launcher=processes", "budget=smoke",
        "logger=wandb", f"data={','.join(DATASETS)}", f"model={','.join(MODELS)}", "seed=0",
        # Without ceil-mode pooling the CNN does not fit ST-CNN's 21x21 pooled RTS input: that job fails for
        # real (at model build), the three others must not notice.
        "model.net.ceil_mode=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"the sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return root


def result(sweep: Path, data: str, model: str) -> dict:
    return json.loads((sweep / "runs" / "table1" / RECIPE / data / model / "seed0" / "result.json").read_text())


@pytest.mark.slow
def test_every_job_of_the_sweep_leaves_a_result(sweep):
    assert list((sweep / "runs" / "table1").glob(".submitit/*/*_log.out"))  # really ran through submitit
    for data, column in zip(DATASETS, ("R", "RTS"), strict=True):
        for model in MODELS:
            record = result(sweep, data, model)
            assert (record["experiment"], record["data"], record["column"]) == ("table1", data, column)
            assert (record["model"], record["seed"], record["budget"]) == (model, 0, "smoke")
            if (data, model) == ("mnist_rts", "st_cnn_aff"):
                assert record["status"] == "failed"
                assert record["error"].startswith("InstantiationException") and "too small" in record["error"]
                continue
            assert record["status"] == "finished" and record["iterations"] == 20
            assert 0.0 <= record["test_error"] <= 100.0 and record["params"] > 0


@pytest.mark.slow
def test_table_from_the_result_files(sweep, tmp_path):
    results_main(["table1", "--runs", str(sweep / "runs" / "table1"), "--out", str(tmp_path)])
    markdown = (tmp_path / "table1.md").read_text()
    fcn_r = result(sweep, "mnist_r", "fcn")
    assert f"{fcn_r['test_error']:.2f} (n=1)<br>paper 2.1, Δ {fcn_r['test_error'] - 2.1:+.2f}" in markdown
    assert "20 iterations x 32 = 0.00M samples" in markdown and "fresh training distortions every epoch" in markdown
    assert "Not counted (1 run):\n- st_cnn_aff on RTS seed 0: failed — InstantiationException" in markdown
    rows = (tmp_path / "table1.csv").read_text().splitlines()
    st_rts = next(row for row in rows if row.startswith("st_cnn_aff,RTS,"))
    assert st_rts == "st_cnn_aff,RTS,0.5,,,,,,,,,"  # the failed run leaves the cell empty
    assert (tmp_path / "table1.tex").exists()


@pytest.mark.slow
def test_make_table1_on_a_cpu_marks_the_unrun_cells_and_says_where_they_are(sweep, tmp_path):
    """The last step of `make reproduce-table1` on a CPU (RECIPE=cpu), here over the smoke sweep's folder."""
    command = [
        "make", "--no-print-directory", "table1", "RECIPE=cpu", f"RECIPE_FOLDER_cpu={RECIPE}",
        f"RUNS={sweep / 'runs'}", f"RESULTS={tmp_path}", "STAMP=", f"PY={sys.executable}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "table1.md").read_text()
    assert "not run<br>paper 1.5" in markdown  # CNN on P: not run by this recipe, reported by the paper
    assert "not run = reported by the paper, not run by this recipe (see the note below the table)" in markdown
    assert "filled by make reproduce-table1 RECIPE=cpu-full (every cell" in markdown
    assert "results/table1_cpu_full.md" in markdown
    fcn_r = result(sweep, "mnist_r", "fcn")
    assert f"{fcn_r['test_error']:.2f} (n=1)<br>paper 2.1" in markdown
    # RECIPE=cpu-full renders every cell under its own name
    full = [*command[:3], "RECIPE=cpu-full", f"RECIPE_FOLDER_cpu-full={RECIPE}", *command[5:]]
    done = subprocess.run(full, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    full_table = (tmp_path / "table1_cpu_full.md").read_text()
    assert "This is make reproduce-table1 RECIPE=cpu-full" in full_table  # its own note, not the cpu recipe's
    assert "filled by make reproduce-table1 RECIPE=cpu-full" not in full_table
    assert f"{fcn_r['test_error']:.2f} (n=1)<br>paper 2.1" in full_table
    assert "not run yet<br>paper 1.5" in full_table  # CNN on P: not in this sweep, so not run yet


def test_rendering_a_table_from_a_missing_runs_folder_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        results_main(["table1", "--runs", str(tmp_path / "runs" / "table1"), "--out", str(tmp_path)])
    assert stopped.value.code == 2
    printed = capsys.readouterr().err
    assert f"no runs folder {tmp_path / 'runs' / 'table1'}; run the sweep first (make reproduce-table1" in printed
    assert "Traceback" not in printed and not list(tmp_path.glob("table1.*"))


@pytest.mark.slow
def test_table_from_the_offline_wandb_runs_has_the_same_numbers(sweep, tmp_path):
    runs = str(sweep / "runs" / "table1")
    results_main(["table1", "--runs", runs, "--out", str(tmp_path / "local")])
    results_main(["table1", "--runs", runs, "--source", "wandb", "--out", str(tmp_path / "wandb")])
    local_csv = (tmp_path / "local" / "table1.csv").read_text()
    assert (tmp_path / "wandb" / "table1.csv").read_text() == local_csv
    assert local_csv.count("20 iterations x 32") == 3  # the three finished runs


@pytest.mark.slow
def test_figure_of_the_trained_transformers(sweep, tmp_path):
    runs = sweep / "runs" / "table1"
    figure = table1_figure(runs, ["R", "RTS"], digits=2, models={"R": "st_cnn_aff"})
    assert len(figure.axes) == 2 * 3  # only R has a finished ST run: 2 digits x (input, grid, output)
    out = tmp_path / "figures" / "table1_transformations.png"
    figures_main(["table1", "--runs", str(runs), "--out", str(out), "--digits", "2"])
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


@pytest.mark.slow
def test_smoke_sweep_over_all_40_dataset_model_pairs(tmp_path, data_store, mnist_raw_root):
    """The whole Table 1 grid (5 datasets x 8 models, one seed) at the smoke budget through the default launcher:
    every pair trains on its real distorted MNIST and leaves a finished result, and the table has every cell."""
    env = {
        **os.environ,
        "STN_RUNS_DIR": str(tmp_path / "runs"),
        "STN_DATA_DIR": str(data_store),
        "MNIST_SOURCE": str(mnist_raw_root),
    }
    command = [sys.executable, "-m", "stn.train", "experiment=table1", "budget=smoke", "seed=0"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    cfg = compose_train(["experiment=table1"])
    datasets = str(cfg.hydra.sweeper.params.data).split(",")
    models = str(cfg.hydra.sweeper.params.model).split(",")
    assert len(datasets) * len(models) == 40
    for data in datasets:
        for model in models:
            run_dir = tmp_path / "runs" / "table1" / RECIPE / data / model / "seed0"
            record = json.loads((run_dir / "result.json").read_text())
            assert record["status"] == "finished", (data, model, record.get("error"))
            assert record["iterations"] == 20 and 0.0 <= record["test_error"] <= 100.0
    results_main(["table1", "--runs", str(tmp_path / "runs" / "table1"), "--out", str(tmp_path / "tables")])
    rows = list(csv.DictReader((tmp_path / "tables" / "table1.csv").open()))
    assert len(rows) == 40
    assert all(row["n"] == "1" and row["mean"] and "20 iterations x 32" in row["recipe"] for row in rows)


def run_table1_sweep(cwd: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m stn.train experiment=table1 budget=smoke <overrides>` in `cwd`, the paths set by the overrides
    only (STN_* and MNIST_SOURCE of this environment are dropped)."""
    dropped = ("STN_RUNS_DIR", "STN_DATA_DIR", "MNIST_SOURCE")
    own = {key: value for key, value in os.environ.items() if key not in dropped}
    command = [sys.executable, "-m", "stn.train", "experiment=table1", "budget=smoke", *overrides]
    return subprocess.run(command, cwd=cwd, env={**own, **env}, capture_output=True, text=True, timeout=300)


def test_a_sweep_without_mnist_stops_before_its_first_job_with_one_error(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    # No network: urllib (torchvision's downloader) goes through this proxy, where nothing listens.
    offline = {f"{name}{suffix}": "http://127.0.0.1:9" for name in ("http", "https") for suffix in ("_proxy", "_PROXY")}
    offline |= {"no_proxy": "", "NO_PROXY": ""}
    grid = ["data=mnist_r,mnist_rts", "model=fcn,cnn", "seed=0,1"]
    paths = [f"paths.data_dir={data}", "paths.mnist_source=null", f"paths.runs_dir={runs}"]
    done = run_table1_sweep(tmp_path, *grid, *paths, **offline)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "sweep: 8 jobs, 0 already finished" in output
    assert output.count("could not be downloaded") == 1  # once for the sweep, not once per job
    assert f"MNIST is not in {data / 'MNIST' / 'raw'}" in output and "MNIST_SOURCE" in output  # where, and how
    assert "Traceback" not in output
    assert not runs.exists()  # no job ran: no run folder, no result.json


@pytest.mark.slow
def test_sweep_reports_progress_lists_failed_jobs_and_counts_resumed_runs(tmp_path, mnist_raw_root):
    # Two jobs: seed 0 trains, seed -1 fails for real (the trainer refuses a negative seed).
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.mnist_source={mnist_raw_root}"]
    args = ["data=mnist_r", "model=fcn", "seed=0,-1", *paths, f"paths.runs_dir={tmp_path / 'runs'}"]
    failed_dir = tmp_path / "runs" / "table1" / RECIPE / "mnist_r" / "fcn" / "seed-1"
    first = run_table1_sweep(tmp_path, *args)
    out = first.stdout
    assert first.returncode == 0, out[-3000:] + first.stderr[-3000:]  # a failed job does not fail the sweep
    assert out.count("sweep: generating mnist_r once") == 1
    job_0, progress_1 = out.index("#0 : data=mnist_r"), out.index("sweep: 1/2 done (1 finished, 0 failed), 1 remaining")
    job_1, progress_2 = out.index("#1 : data=mnist_r"), out.index("sweep: 2/2 done (1 finished, 1 failed), 0 remaining")
    assert out.index("sweep: generating") < job_0 < progress_1 < job_1 < progress_2
    assert re.search(r"1 remaining, ETA \d+:\d\d:\d\d\n", out)
    assert "sweep ended: 1 finished, 1 failed, 0 without a result, of 2 jobs" in out
    assert f"failed: {failed_dir}: ValueError: seed must be a non-negative integer, got -1" in out

    # Rerun: the finished job is done from the start, the failed one only once retried (it fails again).
    second = run_table1_sweep(tmp_path, *args)
    out = second.stdout
    assert second.returncode == 0 and "sweep: 2 jobs, 1 already finished" in out and "generating" not in out
    assert "sweep: 1/2 done (1 finished, 0 failed), 1 remaining\n" in out  # no ETA: no job ran yet
    assert "sweep: 2/2 done (1 finished, 1 failed), 0 remaining" in out


def test_a_sweep_prepares_the_data_of_the_jobs_still_to_run_only(tmp_path, monkeypatch):
    # A finished job needs no data: rerunning a finished sweep (an evidence render) must not need MNIST.
    names = ("done", "failed", "new")
    jobs = [OmegaConf.create({"run_dir": str(tmp_path / name), "data": {"name": name}}) for name in names]
    monkeypatch.setattr(stn.sweep, "job_configs", lambda config: jobs)
    prepared = []
    monkeypatch.setattr(stn.sweep, "prepare", lambda data: prepared.append(data.name))
    write_result({"status": "finished"}, tmp_path / "done")
    write_result({"status": "failed", "error": "ValueError: retried"}, tmp_path / "failed")
    SweepCallback().on_multirun_start(OmegaConf.create({}))
    assert prepared == ["failed", "new"]


def test_sweep_progress_reports_a_damaged_result_as_a_failure(tmp_path):
    callback = SweepCallback()
    callback.run_dirs = [tmp_path / name for name in ("finished", "failed", "damaged", "running")]
    write_result({"status": "finished"}, tmp_path / "finished")
    write_result({"status": "failed", "error": "InstantiationException: one\ntwo"}, tmp_path / "failed")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "result.json").write_text('{"status": "fini')
    finished, failed, pending = callback.tally()
    assert finished == [tmp_path / "finished"] and pending == [tmp_path / "running"]
    assert failed[0] == (tmp_path / "failed", "InstantiationException: one two")  # one line per job
    assert failed[1][0] == tmp_path / "damaged" and "result.json is damaged" in failed[1][1]


def test_figures_without_runs_say_so_and_draw_nothing(tmp_path, capsys):
    out = tmp_path / "figure.png"
    (tmp_path / "empty").mkdir()
    for runs in (tmp_path / "missing", tmp_path / "empty"):
        figures_main(["table1", "--runs", str(runs), "--out", str(out)])  # returns: exit status 0, no traceback
        printed = capsys.readouterr().out
        assert f"no runs yet in {runs}" in printed and "make reproduce-table1" in printed
    # After a sweep whose every job failed (the table step lists them):
    failed = {"status": "failed", "column": "R", "model": "st_cnn_aff", "seed": 0, "error": "MnistNotFoundError: ..."}
    write_result(failed, tmp_path / "failed" / "table1" / "st_cnn_aff")
    figures_main(["table1", "--runs", str(tmp_path / "failed" / "table1"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "no finished spatial-transformer run of R, RTS, P, E among the 1 runs in" in printed
    assert not out.exists()
