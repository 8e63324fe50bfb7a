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
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stn.models.params import CONFIG_DIR

EVIDENCE_DIR = CONFIG_DIR / "evidence"
RENDERERS = ("compare", "learned", "probe", "colocalisation")
COLOC_FOLDER = "colocalisation_evidence"
OUT_DIR = Path("results/evidence")


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


def finished(command: list[str]) -> bool:
    """A co-localisation arm whose folder already holds its table (it is reported, not rerun)."""
    if command[2] != "stn.colocalisation":
        return False
    folder = next(word for word in command if word.startswith("out="))[len("out=") :]
    return (Path(folder) / "colocalisation.csv").is_file()


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
    for command in commands(args.name, args.runs):
        if finished(command):
            print(f"finished, not rerun: {shlex.join(command)}", flush=True)
            continue
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
