"""The Table 1 renderer's arithmetic and formatting, and the failure recorder.

The renderer on result files of real smoke runs (and on their W&B runs) is tested in test_sweep.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from stn.checkpoint import CHECKPOINT, RESULT, load_checkpoint, save_checkpoint
from stn.results import (
    MISSING,
    Cell,
    build_table,
    caption,
    display_name,
    format_ours,
    load_paper_table,
    load_results,
    params_label,
    render_comparison,
    render_csv,
    render_latex,
    render_markdown,
)
from stn.results.cli import main
from stn.results.recipes import recipe_of
from stn.run_folder import record_failure, run_sweep_job
from stn.train import train

PAPER_CSV = REPO_ROOT / "results" / "paper" / "table1.csv"


def recipe_config(optim: str = "sgd_table1", budget: str = "quick", redraw: bool = True, **optimizer) -> dict:
    """The config sections of a result record that define its recipe."""
    return {
        "recipe": f"{optim}-{budget}",
        "optim": {
            "name": optim, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9, **optimizer},
            "lr_schedule": "step", "lr_warmup": 0.0, "lr_milestones": [1 / 3, 2 / 3], "lr_gamma": 0.1,
            "loc_lr_mult": 1.0,
        },
        "budget": {"name": budget, "iterations": 150_000 if budget == "paper" else 500, "batch_size": 256},
        "data": {"redraw_train": redraw},
    }  # fmt: skip


def finished(model: str, column: str, seed: int, error: float, budget: str = "quick", params: int = 1000) -> dict:
    return {
        "model": model, "column": column, "seed": seed, "test_error": error, "budget": budget, "params": params,
        "status": "finished", "iterations": 500, "git_commit": "0123456789abcdef", "git_dirty": False,
        "path": f"runs/{column}/{model}/seed{seed}/result.json", "wall_time_s": 90.0, "device": "cpu",
        "config": recipe_config(budget=budget),
    }  # fmt: skip


def test_paper_table_holds_the_papers_numbers_with_tc_in_the_affine_rows():
    columns, paper = load_paper_table(PAPER_CSV)
    assert columns == ["R", "RTS", "P", "E", "TC"]
    assert paper["fcn"] == {"R": 2.1, "RTS": 5.2, "P": 3.1, "E": 3.2, "TC": 13.2}
    assert paper["st_cnn_aff"]["TC"] == 1.7 and paper["st_fcn_aff"]["TC"] == 2.0
    assert paper["st_cnn_tps"]["TC"] is None and paper["st_fcn_proj"]["TC"] is None
    assert len(paper) == 8


def test_cell_mean_std_diff_and_formatting():
    cell = Cell(paper=0.7, errors=[0.8, 0.9, 1.0], seeds=[0, 1, 2])
    assert cell.n == 3
    assert math.isclose(cell.mean, 0.9) and math.isclose(cell.std, 0.1) and math.isclose(cell.diff, 0.2)
    assert format_ours(cell) == "0.90 ± 0.10 (n=3)"
    one_seed = Cell(paper=None, errors=[1.234], seeds=[0])
    assert one_seed.std is None and one_seed.diff is None
    assert format_ours(one_seed) == "1.23 (n=1)"
    assert format_ours(Cell(paper=0.7)) == MISSING
    assert [display_name(m) for m in ("fcn", "cnn", "st_fcn_aff", "st_cnn_proj", "st_cnn_tps")] == [
        "FCN", "CNN", "ST-FCN Aff", "ST-CNN Proj", "ST-CNN TPS",
    ]  # fmt: skip


def test_table_counts_finished_runs_only_and_marks_missing_cells():
    columns, paper = load_paper_table(PAPER_CSV)
    records = [
        finished("fcn", "R", 0, 2.0, params=146_000),
        finished("fcn", "R", 1, 3.0, params=146_000),
        finished("fcn", "RTS", 0, 5.0, params=290_000),
        {"model": "cnn", "column": "R", "seed": 0, "budget": "quick", "status": "failed", "error": "ValueError: x"},
    ]
    table = build_table(records, columns, paper)
    fcn_r = table.cells["fcn", "R"]
    assert fcn_r.errors == [2.0, 3.0] and math.isclose(fcn_r.diff, 2.5 - 2.1)
    assert table.cells["cnn", "R"].n == 0 and len(table.not_counted) == 1
    assert params_label(table, "fcn") == "146k (R); 290k (RTS)"

    markdown = render_markdown(table)
    assert "| FCN | 146k (R); 290k (RTS) | 2.50 ± 0.71 (n=2)<br>paper 2.1, Δ +0.40 |" in markdown
    assert "| CNN | — | —<br>paper 1.2 |" in markdown  # the failed run is not a result
    assert "| — |\n" in markdown  # ST-CNN TPS on TC: neither run nor reported
    assert "cnn on R seed 0: failed — ValueError: x" in markdown
    assert "over the 2 cells run here: 1 within 0.3 pp, 2 within 1 pp." in markdown  # FCN R +0.40, RTS -0.20
    # one run per cell: FCN R's 90 s (the mean of its two seeds) plus FCN RTS's 90 s
    assert "Cost: one run of each of the 2 cells shown took 3 min of wall time in all" in markdown
    assert (
        "recipe: SGD lr 0.01, momentum 0.9, weight decay 0, x0.1 at 33%, 67% of the budget, 500 iterations x 256 = "
        "0.13M samples (0.33% of the paper's 38.4M), fresh training distortions every epoch;" in markdown
    )
    assert "0123456789+" not in markdown
    assert "| FCN | R | 2.1 | 2.50 ± 0.71 (n=2) | +0.40 | 0.13M | 1.5 min | cpu | — |" in markdown  # per-cell list

    rows = render_csv(table).splitlines()
    assert rows[0] == "model,column,paper,mean,std,n,diff,params,samples,wall_time_s,seeds,recipe"
    assert rows[1].startswith("fcn,R,2.1,2.5,0.707")
    assert rows[1].split(",")[6:11] == ["0.3999999999999999", "146000", "128000", "90.0", "0 1"]
    assert "st_cnn_tps,TC,,,,,,,,,," in rows  # neither reported by the paper nor run

    latex = render_latex(table)
    assert r"FCN & 146k (R); 290k (RTS) & 2.50 $\pm$ 0.71 (n=2) \tiny{[paper 2.1, $\Delta$ +0.40]} & " in latex
    assert r"\caption{Table 1 --- distorted MNIST, \% test error." in latex
    assert r"\begin{tabular}{llccccc}" in latex


def test_a_cpu_cell_names_its_kernels_and_threads_as_wall_times_and_numbers_depend_on_them():
    columns, paper = load_paper_table(PAPER_CSV)
    record = finished("fcn", "R", 0, 2.0)
    one = {**record, "environment": {"cpu_kernels": {"cpu_capability": "AVX512"}, "torch_threads": 1}}
    two = {
        **finished("fcn", "RTS", 0, 5.0),
        "environment": {"cpu_kernels": {"cpu_capability": "AVX2"}, "torch_threads": 2},
    }
    table = build_table([one, two, {**finished("cnn", "R", 0, 1.0), "device": "cuda:0"}], columns, paper)
    assert table.cells["fcn", "R"].devices == {"cpu AVX512, 1 thread"}
    assert table.cells["fcn", "RTS"].devices == {"cpu AVX2, 2 threads"}
    assert table.cells["cnn", "R"].devices == {"cuda:0"}
    assert build_table([record], columns, paper).cells["fcn", "R"].devices == {"cpu"}  # a record from before both


def test_mixed_recipes_in_one_cell_are_an_error_unless_one_is_picked():
    columns, paper = load_paper_table(PAPER_CSV)
    records = [finished("cnn", "P", 0, 1.0, budget="quick"), finished("cnn", "P", 1, 2.0, budget="paper")]
    with pytest.raises(ValueError, match="cnn on P mixes recipes .*; pass --recipe to pick one"):
        build_table(records, columns, paper)
    table = build_table(records, columns, paper, recipe="sgd_table1-paper")
    assert table.cells["cnn", "P"].errors == [2.0] and len(table.recipes) == 1
    across_cells = build_table([*records[:1], finished("fcn", "P", 0, 3.0, budget="paper")], columns, paper)
    assert "recipes differ between cells" in caption(across_cells)
    # the same optimiser and budget names with another data stream (or lr) are another recipe too
    fixed = {**records[1], "seed": 2, "config": recipe_config(budget="paper", redraw=False)}
    with pytest.raises(ValueError, match="one fixed distorted training set"):
        build_table([records[1], fixed], columns, paper)
    faster = {**records[1], "seed": 2, "config": recipe_config(budget="paper", lr=0.1)}
    with pytest.raises(ValueError, match="SGD lr 0.1,"):
        build_table([records[1], faster], columns, paper)
    # a run trained in bf16 (cpu_precision on the CPU, precision on CUDA) is another recipe; the CPU ignores precision
    cpu_bf16 = {**records[1], "seed": 2, "config": {**records[1]["config"], "cpu_precision": "bf16"}}
    with pytest.raises(ValueError, match=r"fresh training distortions every epoch, bf16 autocast\)"):
        build_table([records[1], cpu_bf16], columns, paper)
    on_cpu = {**records[1], "seed": 2, "config": {**records[1]["config"], "precision": "bf16"}}
    assert build_table([records[1], on_cpu], columns, paper).cells["cnn", "P"].n == 2
    on_gpu = {**on_cpu, "device": "cuda:0 (NVIDIA H100 80GB HBM3)"}
    assert recipe_of(on_gpu).endswith("fresh training distortions every epoch, bf16 autocast")


def test_unrun_cells_the_paper_reports_can_be_marked_and_a_note_says_where_they_are():
    columns, paper = load_paper_table(PAPER_CSV)
    table = build_table([finished("fcn", "R", 0, 2.0), finished("fcn", "P", 0, 5.0)], columns, paper, missing="GPU")
    table.note = "Cells marked GPU: make reproduce-table1 RECIPE=cpu-full runs them."
    markdown = render_markdown(table)
    assert "\n\nCells marked GPU: make reproduce-table1 RECIPE=cpu-full runs them.\n" in markdown
    assert "1 within 0.3 pp, 1 within 1 pp; more than 1 pp off: FCN P (+1.90)." in markdown
    assert "| CNN | — | GPU<br>paper 1.2 |" in markdown
    assert "GPU = reported by the paper, not run by this recipe (see the note below the table)" in markdown
    assert (
        "| ST-CNN TPS | — | GPU<br>paper 0.7 | GPU<br>paper 0.5 | GPU<br>paper 0.8 | GPU<br>paper 1.1 | — |" in markdown
    )


def test_a_seed_counted_twice_is_an_error():
    columns, paper = load_paper_table(PAPER_CSV)
    with pytest.raises(ValueError, match="second finished run of cnn on P with seed 0"):
        build_table([finished("cnn", "P", 0, 1.0), finished("cnn", "P", 0, 1.5)], columns, paper)


def test_cli_writes_the_three_tables_from_result_files(tmp_path):
    runs = tmp_path / "runs"
    for record in (finished("st_cnn_tps", "E", 0, 1.5), finished("st_cnn_tps", "E", 1, 1.7)):
        (runs / str(record["seed"])).mkdir(parents=True)
        (runs / str(record["seed"]) / "result.json").write_text(json.dumps(record))
    main(["table1", "--runs", str(runs), "--paper", str(PAPER_CSV), "--out", str(tmp_path / "out")])
    assert "1.60 ± 0.14 (n=2)<br>paper 1.1, Δ +0.50" in (tmp_path / "out" / "table1.md").read_text()
    assert "st_cnn_tps,E,1.1,1.6" in (tmp_path / "out" / "table1.csv").read_text()
    assert (tmp_path / "out" / "table1.tex").read_text().startswith(r"\begin{table}")
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files


def compose_train(overrides: list[str], hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_config)


def test_failed_run_is_recorded_and_reraised_in_a_single_run(tmp_path):
    cfg = compose_train(["data=mnist_r", "model=cnn", "budget=smoke", "seed=4"])

    def crash(_):
        raise RuntimeError("loss is NaN at iteration 7")

    with pytest.raises(RuntimeError, match="loss is NaN"):
        run_sweep_job(crash, cfg, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == "RuntimeError: loss is NaN at iteration 7"
    assert (result["model"], result["data"], result["seed"], result["budget"]) == ("cnn", "mnist_r", 4, "smoke")
    assert result["column"] == "R" and "crash" in result["traceback"]


def test_failed_job_does_not_stop_a_multirun(tmp_path):
    full = compose_train(["data=mnist_p", "model=fcn", "hydra.mode=MULTIRUN"], hydra_config=True)
    HydraConfig.instance().set_config(full)  # as a launcher does for each job of a sweep
    cfg = OmegaConf.masked_copy(full, [key for key in full if key != "hydra"])  # what the task function gets
    try:
        assert run_sweep_job(lambda _: 1 / 0, cfg, tmp_path) is None
        assert run_sweep_job(lambda _: "trained", cfg, tmp_path / "next") == "trained"
    finally:
        HydraConfig.instance().cfg = None
    assert json.loads((tmp_path / "result.json").read_text())["error"] == "ZeroDivisionError: division by zero"


def test_failure_recorder_survives_a_config_that_cannot_resolve(tmp_path):
    cfg = compose_train(["data=mnist_e", "model=fcn", "seed=${oc.env:STN_TEST_UNSET_VARIABLE}"])
    path = record_failure(tmp_path, cfg, KeyError("seed"))
    result = json.loads(path.read_text())
    assert result["seed"] is None and result["model"] == "fcn" and result["status"] == "failed"


def test_reading_results_from_nowhere_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs folder .*missing; run the sweep first"):
        load_results("local", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no wandb results in .*logger=wandb"):
        load_results("wandb", tmp_path)
    with pytest.raises(ValueError, match="unknown source 'csv'"):
        load_results("csv", tmp_path)


def test_comparison_puts_each_arm_in_its_own_column_with_its_recipe(tmp_path):
    fixed = recipe_config(redraw=False)
    records = [
        {**finished("fcn", "R", seed, error), "experiment": "table1"} for seed, error in enumerate((2.0, 2.2, 2.4))
    ]
    records += [
        {**finished("fcn", "R", 0, 4.5), "experiment": "evidence_fixed", "config": fixed},
        {**finished("fcn", "RTS", 0, 9.0), "experiment": "evidence_fixed", "config": fixed, "wall_time_s": 600.0},
    ]
    text = render_comparison(records, "Fixed vs fresh", note="CPU, 2 cores.")
    assert "| Column | Model | `evidence_fixed/sgd_table1-quick` | `table1/sgd_table1-quick` |" in text
    assert "| R | FCN | 4.50 (n=1) | 2.20 ± 0.20 (n=3) |" in text
    assert "| RTS | FCN | 9.00 (n=1) | — (n=0) |" not in text and "| RTS | FCN | 9.00 (n=1) | — |" in text
    assert "CPU, 2 cores." in text and "one fixed distorted training set" in text
    assert "(mean wall time per run 5.8 min)" in text  # the arm's R and RTS runs
    common = render_comparison(records, "Fixed vs fresh", common=True)
    assert "| RTS |" not in common  # only rows every arm has, and the arms' details only of those rows' runs
    assert "(mean wall time per run 5.8 min)" not in common and common.count("(mean wall time per run 1.5 min)") == 2
    for record in records:
        folder = tmp_path / record["experiment"] / record["column"] / str(record["seed"])
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(record))
    out = tmp_path / "compare.md"
    main(["compare", "--runs", str(tmp_path / "table1"), "--runs", str(tmp_path / "evidence_fixed"), "--title", "T"])
    main(["compare", "--runs", str(tmp_path), "--title", "T", "--common", "--out", str(out)])
    assert "| R | FCN | 4.50 (n=1) | 2.20 ± 0.20 (n=3) |" in out.read_text()


def write_runs(runs, records):
    """result.json files as a sweep leaves them (with this machine's paths in the config and data_meta)."""
    for record in records:
        folder = runs / record["column"] / record["model"] / f"seed{record['seed']}"
        folder.mkdir(parents=True)
        record = {
            **record, "path": str(folder / "result.json"),
            "config": {**record["config"], "paths": {"runs_dir": str(runs)}, "run_dir": str(folder)},
            "data_meta": {"path": str(runs.parent / "data" / "set.h5"), "sha256": "ab"},
        }  # fmt: skip
        (folder / "result.json").write_text(json.dumps(record))


def test_an_archive_fills_a_table_over_machines_that_do_not_keep_their_runs(tmp_path):
    archive, out = tmp_path / "table1_runs.jsonl", tmp_path / "out"
    args = ["table1", "--paper", str(PAPER_CSV), "--out", str(out), "--archive", str(archive)]
    write_runs(tmp_path / "first", [finished("cnn", "P", 0, 1.9), finished("fcn", "R", 0, 2.2)])
    main([*args, "--runs", str(tmp_path / "first")])
    assert len(archive.read_text().splitlines()) == 2
    assert str(tmp_path) not in archive.read_text()  # no path of the machine that ran them
    # a fresh machine: the first runs folder is gone; it reruns one cell and adds another
    shutil.rmtree(tmp_path / "first")
    write_runs(tmp_path / "second", [finished("cnn", "P", 0, 1.7), finished("cnn", "E", 0, 1.4)])
    main([*args, "--runs", str(tmp_path / "second")])
    kept = {(r["model"], r["column"]): r["test_error"] for r in map(json.loads, archive.read_text().splitlines())}
    assert kept == {("cnn", "P"): 1.7, ("fcn", "R"): 2.2, ("cnn", "E"): 1.4}  # the rerun replaced the archived run
    table = (out / "table1.md").read_text()
    assert "1.70 (n=1)<br>paper 1.5" in table and "2.20 (n=1)<br>paper 2.1" in table and "1.40 (n=1)" in table
    # the archive alone renders the table (no runs folder on this machine yet)
    main([*args, "--runs", str(tmp_path / "none"), "--name", "again"])
    assert (out / "again.md").read_text().split("Code:")[1] == table.split("Code:")[1]


def test_a_damaged_archive_line_is_a_clear_error(tmp_path):
    archive = tmp_path / "table1_runs.jsonl"
    archive.write_text('{"status": "finished", "seed": 0}\n{"status": "fin\n')
    with pytest.raises(ValueError, match=r"table1_runs.jsonl:2 is not a JSON record"):
        main(["table1", "--paper", str(PAPER_CSV), "--out", str(tmp_path), "--archive", str(archive),
              "--runs", str(tmp_path / "none")])  # fmt: skip


def test_cells_off_the_paper_are_listed_with_what_explains_them(tmp_path):
    explain = tmp_path / "misses.yaml"
    explain.write_text(
        "- cells: [st_fcn_aff RTS]\n  evidence: results/evidence/x.md\n  text: the loc net reads 59% of the rotation\n"
    )
    runs = tmp_path / "runs"
    write_runs(
        runs, [finished("st_fcn_aff", "RTS", 0, 1.4), finished("cnn", "P", 0, 2.0), finished("fcn", "R", 0, 2.2)]
    )
    main(["table1", "--runs", str(runs), "--paper", str(PAPER_CSV), "--out", str(tmp_path), "--explain", str(explain)])
    table = (tmp_path / "table1.md").read_text()
    assert (
        "| ST-FCN Aff RTS | +0.60 | the loc net reads 59% of the rotation ([evidence](results/evidence/x.md)) |"
        in table
    )
    assert "| CNN P | +0.50 | not explained yet |" in table
    assert "FCN R |" not in table.split("Cells more than 0.3 pp")[1].split("\n\n")[1]  # 0.1 pp off: not listed


def test_a_run_that_has_not_finished_is_listed_with_its_progress_and_not_counted(tmp_path, data_store, mnist_raw_root):
    """A long CPU run (the CNN on TC trains for hours) shows under the table while it trains or after it stopped:
    its checkpoint says what it trains and how far it got; its cell stays empty and nothing of it is archived."""
    runs, out, archive = tmp_path / "runs", tmp_path / "out", tmp_path / "table1_runs.jsonl"
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "configs"), job_name="test"):
        cfg = compose(
            config_name="train",
            overrides=[
                "data=mnist_r", "model=fcn", "budget=smoke", f"paths.data_dir={data_store}",
                f"paths.mnist_source={mnist_raw_root}", f"paths.runs_dir={runs}",
            ],
        )  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.run_dir)
    (run_dir / RESULT).unlink()  # stopped between its last checkpoint and its end
    val_error = load_checkpoint(run_dir)["val_history"][-1][1]
    line = (
        f"- fcn on R seed {cfg.seed}: unfinished — checkpoint at iteration 20 of 20, "
        f"validation error {val_error:.2f}%, 0.0 h of wall time so far; the same command resumes it"
    )
    for extra in ([], ["--archive", str(archive)]):
        main(["table1", "--runs", str(runs), "--paper", str(PAPER_CSV), "--out", str(out), *extra])
        table = (out / "table1.md").read_text()
        assert f"Not counted (1 run):\n{line}\n" in table
        assert "| FCN | — | —<br>paper 2.1 |" in table and "no finished runs" in table  # finished runs only count
    assert archive.read_text() == ""

    save_checkpoint({"iteration": 5, "model": {"w": torch.ones(2)}}, run_dir)
    (run_dir / CHECKPOINT).write_bytes((run_dir / CHECKPOINT).read_bytes()[:-40])  # a damaged checkpoint is named
    with pytest.raises(SystemExit) as exit_:
        main(["table1", "--runs", str(runs), "--paper", str(PAPER_CSV), "--out", str(out)])
    assert exit_.value.code == 2
