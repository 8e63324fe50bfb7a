"""The evidence comparisons (configs/evidence/*.yaml, run by `make evidence NAME=...`): each loads, trains Table 1
sweeps and renders into results/evidence/<name>.md with a known `python -m stn.results` command."""

from __future__ import annotations

from pathlib import Path

import pytest

from stn import evidence
from stn.results.cli import build_parser


def test_make_evidence_table1_runs_every_comparison():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    listed = makefile.split("EVIDENCE_TABLE1 :=")[1].split("\nevidence:")[0].replace("\\", " ").split()
    table1 = [name for name in evidence.names() if name.startswith("table1_")]
    assert sorted(listed) == table1 and len(listed) >= 13


@pytest.mark.parametrize("name", evidence.names())
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
