"""Co-localisation arms side by side: % localised per class on T and TC, one column pair per arm.

Each arm is the overrides it ran with (`python -m stn.colocalisation <overrides> out=FOLDER`) and the folder holding
its colocalisation.csv and colocalisation.md; the table is read from the CSV, the encoder, machine and wall time from
the markdown's last lines. `python -m stn.results colocalisation --arm OVERRIDES@FOLDER ...` renders it; the
comparisons behind the co-localisation defaults are configs (configs/evidence/colocalisation_*.yaml, stn.evidence).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np


def read_arm(label: str, folder: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """class -> row of the arm's CSV, and the description lines (Command:, Machine:) of its markdown, the command
    shown as the arm's overrides (the folders it was given are this machine's)."""
    with (folder / "colocalisation.csv").open(newline="") as handle:
        rows = {row["class"]: row for row in csv.DictReader(handle)}
    lines = (folder / "colocalisation.md").read_text().splitlines()
    command = f"Command: `python -m stn.colocalisation {label}`"
    described = [re.sub(r"^Command: `[^`]*`", command, line) for line in lines]
    return rows, [line for line in described if line.startswith(("Command:", "Machine:"))]


def percent(cell: str) -> str:
    """A CSV cell as the tables print it: whole numbers (one seed's %) without decimals, means with one."""
    value = float(cell)
    return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"


def render_colocalisation(arms: list[tuple[str, Path]], title: str, note: str) -> str:
    tables = [read_arm(label, folder) for label, folder in arms]
    classes = list(tables[0][0])
    variants = [key[: -len("_ours")] for key in tables[0][0][classes[0]] if key.endswith("_ours")]
    header = [f"`{label}` {variant}" for label, _ in arms for variant in variants]
    lines = [
        f"# {title}",
        "",
        note,
        "",
        f"| Class | {' | '.join(header)} | Paper |",
        "|---|" + "---:|" * len(header) + "---|",
    ]
    for digit in classes:
        values = [percent(rows[digit][f"{variant}_ours"]) for rows, _ in tables for variant in variants]
        paper = " / ".join(tables[0][0][digit][f"{variant}_paper"] for variant in variants)
        lines.append(f"| {digit} | {' | '.join(values)} | {paper} |")
    means = [f"{np.mean([float(rows[d][f'{v}_ours']) for d in classes]):.1f}" for rows, _ in tables for v in variants]
    lines += [f"| mean | {' | '.join(means)} | |", "", "Arms:"]
    for (label, _), (_, described) in zip(arms, tables, strict=True):
        lines.append(f"- `{label}`:")
        lines += [f"  - {line}" for line in described]
    return "\n".join(lines) + "\n"


def parse_arm(arm: str) -> tuple[str, Path]:
    """OVERRIDES@FOLDER -> (overrides, folder); the folder must hold the arm's colocalisation.csv."""
    label, separator, folder = arm.rpartition("@")
    if not separator or not (Path(folder) / "colocalisation.csv").is_file():
        raise FileNotFoundError(f"--arm {arm!r}: expected OVERRIDES@FOLDER, FOLDER holding a colocalisation.csv")
    return label, Path(folder)
