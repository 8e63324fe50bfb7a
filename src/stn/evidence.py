"""The measured comparisons behind the defaults, one config each: configs/evidence/<name>.yaml.

    python -m stn.evidence                    # list them
    python -m stn.evidence NAME [--runs runs] [--dry-run]

A comparison's config holds
    title, note   the rendered file's heading and its reading (machine, numbers, conclusion)
    runs          the sweeps it trains, in order: each the overrides of one
                  `python -m stn.train --multirun experiment=table1 ... paths.runs_dir=<runs>` (finished runs are
                  reported, not retrained, so sweeps shared between comparisons cost once); a sweep that names its
                  own experiment= (e.g. experiment=addition) runs that one instead of table1
    render        compare | learned | probe: the `python -m stn.results` command that renders it into
                  results/evidence/<name>.md; colocalisation: `runs` are instead the arms of
                  `python -m stn.colocalisation <overrides> runs_dir=<runs> out=<runs>/colocalisation_evidence/<arm>`
                  (an arm whose folder holds its colocalisation.csv is reported, not rerun), rendered side by side
    inputs        the run folders (under <runs>) it renders, each passed as --runs
    args          the render command's other arguments (e.g. --common)

A compare comparison keeps its finished runs in results/evidence/<name>_runs.jsonl (stn.results.archive), so one
that takes longer than a machine lives is filled over several: before training, each job whose run is archived
(there, or in another committed archive such as Table 1's) with the configuration the sweep composes today is
restored into its folder as a finished run, and every run the sweeps finish is added to that file.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from stn.checkpoint import RESULT, read_result
from stn.models.params import CONFIG_DIR
from stn.results.archive import archived_run_of, load_archive, restore, update_archive

EVIDENCE_DIR = CONFIG_DIR / "evidence"
RENDERERS = ("compare", "learned", "probe", "colocalisation")
COLOC_FOLDER = "colocalisation_evidence"
OUT_DIR = Path("results/evidence")
RESULTS_DIR = Path("results")  # where the committed archives are: results/*_runs.jsonl, results/evidence/*_runs.jsonl


def names() -> list[str]:
    return sorted(path.stem for path in EVIDENCE_DIR.glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    path = EVIDENCE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no comparison {name!r} in {EVIDENCE_DIR}; the comparisons: {', '.join(names())}")
    spec = OmegaConf.to_container(OmegaConf.load(path))
    unknown = set(spec) - {"title", "note", "runs", "render", "inputs", "args"}
    if unknown or "title" not in spec or spec.get("render") not in RENDERERS:
        raise ValueError(
            f"{path}: needs a title and a render in {RENDERERS}, and only the fields title, note, runs, render, "
            f"inputs, args (see stn.evidence); got {sorted(spec)}"
        )
    return spec


def commands(name: str, runs: Path, python: str = sys.executable) -> list[list[str]]:
    """The commands that train and render comparison `name`, in order."""
    spec = load(name)
    if spec["render"] == "colocalisation":
        return colocalisation_commands(spec, name, runs, python)
    train = [python, "-m", "stn.train", "--multirun"]
    sweeps = []
    for overrides in spec.get("runs", []):
        words = shlex.split(overrides)
        experiment = [] if any(word.startswith("experiment=") for word in words) else ["experiment=table1"]
        sweeps.append([*train, *experiment, *words, f"paths.runs_dir={runs}"])
    render = [python, "-m", "stn.results", spec["render"]]
    for folder in spec.get("inputs", []):
        render += ["--runs", str(runs / folder)]
    render += [*spec.get("args", []), "--title", spec["title"]]
    if spec.get("note"):
        render += ["--note", spec["note"]]
    return [*sweeps, [*render, "--out", str(OUT_DIR / f"{name}.md")]]


def colocalisation_commands(spec: dict[str, Any], name: str, runs: Path, python: str) -> list[list[str]]:
    """One `python -m stn.colocalisation` per arm, each into its own folder, then the side-by-side render."""
    arms = [(overrides, runs / COLOC_FOLDER / "_".join(shlex.split(overrides))) for overrides in spec["runs"]]
    commands = [
        [python, "-m", "stn.colocalisation", *shlex.split(overrides), f"runs_dir={runs}", f"out={folder}"]
        for overrides, folder in arms
    ]
    render = [python, "-m", "stn.results", "colocalisation"]
    for overrides, folder in arms:
        render += ["--arm", f"{overrides}@{folder}"]
    render += ["--title", spec["title"], *(["--note", spec["note"]] if spec.get("note") else [])]
    return [*commands, [*render, "--out", str(OUT_DIR / f"{name}.md")]]


def archive_of(name: str) -> Path:
    return OUT_DIR / f"{name}_runs.jsonl"


def job_configs(name: str, runs: Path) -> list[DictConfig]:
    """The composed config of every job the comparison's sweeps train, expanded as Hydra's basic sweeper expands
    them: the experiment's hydra.sweeper.params first, the sweep's own overrides after (a key given twice: the
    last), comma lists into their product."""
    parser = OverridesParser.create()
    configs = []
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="evidence"):
        for sweep in commands(name, runs)[:-1]:
            overrides = sweep[4:]
            fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
            params = compose(config_name="train", overrides=fixed, return_hydra_config=True).hydra.sweeper.params
            grid = [f"{key}={value}" for key, value in (params or {}).items()] + overrides
            for batch in BasicSweeper.split_arguments(parser.parse_overrides(grid), None):
                configs += [compose(config_name="train", overrides=job) for job in batch]
    return configs


def restore_archived(name: str, jobs: list[DictConfig]) -> None:
    """Restore the archived run of each job that has one, from the comparison's own archive first."""
    own = archive_of(name)
    others = sorted({*RESULTS_DIR.glob("*_runs.jsonl"), *OUT_DIR.glob("*_runs.jsonl")} - {own})
    archives = [(path, load_archive(path)) for path in (own, *others)]
    for cfg in jobs:
        for path, records in archives:
            record = archived_run_of(cfg, records)
            if record is not None:
                if restore(record, cfg, path):
                    print(f"restored from {path}: {cfg.run_dir}", flush=True)
                break


def archive_finished(name: str, jobs: list[DictConfig], runs: Path) -> None:
    """Add the jobs' finished runs to the comparison's archive."""
    records = []
    for cfg in jobs:
        record = read_result(Path(cfg.run_dir))
        if record is not None and record["status"] == "finished":
            records.append({**record, "path": str(Path(cfg.run_dir) / RESULT)})
    if records:
        update_archive(archive_of(name), records, runs)


def finished(command: list[str]) -> bool:
    """A co-localisation arm whose folder already holds its table (it is reported, not rerun)."""
    if command[2] != "stn.colocalisation":
        return False
    folder = next(word for word in command if word.startswith("out="))[len("out=") :]
    return (Path(folder) / "colocalisation.csv").is_file()


def stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stn.evidence", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", help="the comparison (configs/evidence/<name>.yaml); none: list them")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default: runs)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)
    if args.name is None:
        for name in names():
            print(f"{name:28s} {load(name)['title']}")
        return
    archiving = load(args.name)["render"] == "compare" and not args.dry_run
    jobs = job_configs(args.name, args.runs) if archiving else []
    restore_archived(args.name, jobs)
    *steps, render = commands(args.name, args.runs)
    # stopped by SIGTERM (kill, a batch system; a background job ignores SIGINT): exit through the finally below
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for command in steps:
            if finished(command):
                print(f"finished, not rerun: {shlex.join(command)}", flush=True)
                continue
            print(shlex.join(command), flush=True)
            if not args.dry_run:
                subprocess.run(command, check=True)
    finally:  # once all sweeps ran (a changed archive file would mark later runs' checkout dirty), or interrupted
        signal.signal(signal.SIGTERM, previous)
        archive_finished(args.name, jobs, args.runs)
    print(shlex.join(render), flush=True)
    if not args.dry_run:
        subprocess.run(render, check=True)


if __name__ == "__main__":
    main()
