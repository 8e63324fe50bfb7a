"""The evidence comparisons (configs/evidence/*.yaml, run by `make evidence NAME=...`): each loads, trains its Table 1
sweeps (or runs its co-localisation arms) and renders into results/evidence/<name>.md with a known
`python -m stn.results` command."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from stn import evidence
from stn.checkpoint import read_result
from stn.results.archive import archived_run_of, load_archive, same_configuration
from stn.results.cli import build_parser
from stn.run_folder import RunFolder


def test_make_evidence_table1_runs_every_comparison():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    listed = makefile.split("EVIDENCE_TABLE1 :=")[1].split("\nevidence:")[0].replace("\\", " ").split()
    table1 = [name for name in evidence.names() if name.startswith("table1_")]
    assert sorted(listed) == table1 and len(listed) >= 13


TRAINED = [name for name in evidence.names() if evidence.load(name)["render"] != "colocalisation"]
COLOCALISATION = [name for name in evidence.names() if evidence.load(name)["render"] == "colocalisation"]


@pytest.mark.parametrize("name", TRAINED)
def test_each_comparison_trains_its_experiment_s_sweeps_and_renders_its_file(name):
    *sweeps, render = evidence.commands(name, Path("runs"), "python")
    for sweep in sweeps:
        assert sweep[:4] == ["python", "-m", "stn.train", "--multirun"]
        experiments = [word for word in sweep if word.startswith("experiment=")]
        assert experiments == [f"experiment={name.split('_')[0]}"]  # table1_* train Table 1, addition_* addition
        assert sweep[-1] == "paths.runs_dir=runs" and all("=" in word for word in sweep[4:])
    assert render[:3] == ["python", "-m", "stn.results"] and render[-2:] == ["--out", f"results/evidence/{name}.md"]
    args = build_parser().parse_args(render[3:])  # the results command accepts it
    assert args.title == evidence.load(name)["title"]


def test_an_unknown_comparison_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="table1_loc_lr"):
        evidence.load("no_such_comparison")


@pytest.mark.parametrize("name", COLOCALISATION)
def test_each_colocalisation_comparison_runs_its_arms_into_their_own_folders_and_renders_them(name):
    spec = evidence.load(name)
    *arms, render = evidence.commands(name, Path("runs"), "python")
    assert len(arms) == len(spec["runs"]) >= 2
    folders = []
    for arm, overrides in zip(arms, spec["runs"], strict=True):
        assert arm[:3] == ["python", "-m", "stn.colocalisation"] and arm[3:-2] == overrides.split()
        assert arm[-2] == "runs_dir=runs" and arm[-1].startswith("out=runs/colocalisation_evidence/")
        folders.append(arm[-1][len("out=") :])
    assert len(set(folders)) == len(folders)  # no arm overwrites another
    args = build_parser().parse_args(render[3:])
    assert args.command == "colocalisation" and args.title == spec["title"] and args.note == spec["note"]
    assert args.arm == [f"{overrides}@{folder}" for overrides, folder in zip(spec["runs"], folders, strict=True)]
    assert str(args.out) == f"results/evidence/{name}.md"


def test_a_finished_colocalisation_arm_is_reported_not_rerun(tmp_path):
    arm = ["python", "-m", "stn.colocalisation", "seed=0", f"runs_dir={tmp_path}", f"out={tmp_path / 'seed=0'}"]
    assert not evidence.finished(arm)
    (tmp_path / "seed=0").mkdir()
    (tmp_path / "seed=0" / "colocalisation.csv").write_text("class,T_ours,T_paper\n")
    assert evidence.finished(arm)
    assert not evidence.finished(["python", "-m", "stn.train", "--multirun", f"paths.runs_dir={tmp_path}"])


def test_colocalisation_arms_render_side_by_side_with_their_commands(tmp_path):
    from stn.results.colocalisation import parse_arm, render_colocalisation

    for name, values in (("a", ("99", "40")), ("b", ("100", "75.5"))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "colocalisation.csv").write_text(
            f"class,T_ours,T_paper,TC_ours,TC_paper\n0,{values[0]},100,{values[1]},75-93\n"
        )
        (folder / "colocalisation.md").write_text(
            f"table\n\nCommand: `python -m stn.colocalisation out={folder}` (make reproduce-colocalisation)\n"
            "Machine: CPU (test), 1 thread(s)\n"
        )
    arms = [parse_arm(f"seed=0@{tmp_path / 'a'}"), parse_arm(f"optim.pairs=64 seed=0@{tmp_path / 'b'}")]
    text = render_colocalisation(arms, "Title", "Note.")
    assert "| 0 | 99 | 40 | 100 | 75.5 | 100 / 75-93 |" in text
    assert "| mean | 99.0 | 40.0 | 100.0 | 75.5 | |" in text
    # each arm's command is its overrides, not the folders of the machine that ran it
    assert "  - Command: `python -m stn.colocalisation optim.pairs=64 seed=0` (make reproduce-colocalisation)" in text
    assert str(tmp_path) not in text
    with pytest.raises(FileNotFoundError, match="FOLDER holding a colocalisation.csv"):
        parse_arm(f"seed=0@{tmp_path / 'missing'}")


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def archives_here(tmp_path, monkeypatch):
    """The committed archives as they are, the comparisons' own archives written into tmp_path."""
    monkeypatch.setattr(evidence, "RESULTS_DIR", ROOT / "results")
    monkeypatch.setattr(evidence, "OUT_DIR", tmp_path / "evidence")
    return tmp_path


def test_a_fresh_machine_restores_the_archived_runs_a_comparison_needs_and_trains_only_the_others(archives_here):
    runs = archives_here / "runs"
    jobs = evidence.job_configs("table1_e_digit_grid_conv", runs)
    folders = [Path(cfg.run_dir).relative_to(runs).as_posix() for cfg in jobs]
    assert folders == [
        f"{experiment}/fast-fast/mnist_e/{model}/seed0"
        for experiment in ("ev_e_backward_digit_output", "table1")
        for model in ("cnn", "st_cnn_aff")
    ]
    evidence.restore_archived("table1_e_digit_grid_conv", jobs)
    # the default arm is Table 1's CPU cells, archived; the digit-grid arm was never archived
    restored = [read_result(Path(cfg.run_dir)) for cfg in jobs]
    assert [record is not None for record in restored] == [False, False, True, True]
    for cfg, record in zip(jobs[2:], restored[2:], strict=True):
        assert record["restored_from"].endswith("results/table1_cpu_full_runs.jsonl")
        assert (record["column"], record["model"], record["status"]) == ("E", cfg.model.name, "finished")
        assert RunFolder(cfg).finished_result() == record  # the sweep reports it instead of training it
    # and the comparison's own archive now keeps them, without this machine's paths
    evidence.archive_finished("table1_e_digit_grid_conv", jobs, runs)
    kept = load_archive(evidence.archive_of("table1_e_digit_grid_conv"))
    assert [(r["experiment"], r["model"]) for r in kept] == [("table1", "cnn"), ("table1", "st_cnn_aff")]
    assert str(archives_here) not in evidence.archive_of("table1_e_digit_grid_conv").read_text()
    table1 = {
        (r["experiment"], r["column"], r["model"], r["seed"]): r
        for r in load_archive(ROOT / "results" / "table1_cpu_full_runs.jsonl")
    }
    for record in kept:  # the very records Table 1's archive holds
        original = table1[record["experiment"], record["column"], record["model"], record["seed"]]
        assert {**record, "path": None} == {**original, "path": None}


def test_an_archived_run_is_not_restored_once_its_configuration_changed(archives_here):
    records = load_archive(ROOT / "results" / "table1_cpu_full_runs.jsonl")
    cfg = evidence.job_configs("table1_e_digit_grid_conv", archives_here)[2]  # Table 1's CNN on E
    assert archived_run_of(cfg, records) is not None
    cfg.data.distortion.control_std_px = 2.0  # another E
    assert archived_run_of(cfg, records) is None
    cfg.data.distortion.control_std_px = 1.5
    cfg.seed = 1
    assert archived_run_of(cfg, records) is None


def test_an_archived_path_of_another_machine_matches_any_path_and_nothing_else():
    assert same_configuration({"root": "<local>", "n": 3}, {"root": "/home/me/data", "n": 3})
    assert same_configuration({"mnist_source": "<local>"}, {"mnist_source": None})  # unset here: downloads
    assert not same_configuration({"root": "<local>"}, {"root": 3})
    assert not same_configuration({"root": "<local>", "n": 3}, {"root": "data", "n": 4})
    assert not same_configuration({"a": 1}, {"a": 1, "b": 2})  # a key added since: another configuration


def test_the_runner_restores_then_trains_and_archives_what_finished_even_when_a_sweep_fails(archives_here, monkeypatch):
    runs, ran = archives_here / "runs", []

    def sweep_that_fails(command, check):
        ran.append(command[2])
        raise KeyboardInterrupt  # the first sweep (the digit-grid arm) is interrupted

    monkeypatch.setattr(evidence.subprocess, "run", sweep_that_fails)
    with pytest.raises(KeyboardInterrupt):
        evidence.main(["table1_e_digit_grid_conv", "--runs", str(runs)])
    assert ran == ["stn.train"]  # nothing rendered from an interrupted comparison
    kept = load_archive(evidence.archive_of("table1_e_digit_grid_conv"))
    assert sorted((r["experiment"], r["model"]) for r in kept) == [("table1", "cnn"), ("table1", "st_cnn_aff")]

    monkeypatch.setattr(evidence.subprocess, "run", lambda command, check: ran.append(command[2]))
    evidence.main(["table1_e_digit_grid_conv", "--runs", str(runs)])
    assert ran == ["stn.train", "stn.train", "stn.train", "stn.results"]  # both sweeps (the second only reports)


def test_a_runner_stopped_by_sigterm_archives_what_finished(archives_here, monkeypatch):
    def killed(command, check):  # kill, or a batch system's stop, while the first sweep trains
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(evidence.subprocess, "run", killed)
    with pytest.raises(SystemExit):
        evidence.main(["table1_e_digit_grid_conv", "--runs", str(archives_here / "runs")])
    assert len(load_archive(evidence.archive_of("table1_e_digit_grid_conv"))) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the runner's only while it runs


def test_a_sweep_s_jobs_include_its_experiment_s_own_grid(tmp_path):
    # experiment=addition sets data=mnist_addition in hydra.sweeper.params, not in the composed config
    folders = [
        Path(cfg.run_dir).relative_to(tmp_path).as_posix() for cfg in evidence.job_configs("addition_budget", tmp_path)
    ]
    assert folders[:3] == [
        f"addition/fast-cpu_add/mnist_addition/{m}/seed0" for m in ("fcn", "st_fcn_aff", "2st_fcn_aff")
    ]
    assert len(folders) == 9 and folders[-1] == "ev_add_budget/fast-quarter/mnist_addition/2st_fcn_aff/seed0"
