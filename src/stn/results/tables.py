"""A paper table rendered from our runs (markdown, CSV, LaTeX), cell by cell against the paper's numbers; what
differs between Tables 1-3 is a TableSpec (stn.results.specs)."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stn.atomic import write_atomic
from stn.results.recipes import recipe_name, recipe_of, run_command
from stn.results.specs import TABLE1, TableSpec

MISSING = "—"


def load_paper_table(path: Path) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """The paper's CSV (rows model, one column per dataset; empty = not reported) -> (columns, values)."""
    with Path(path).open(newline="") as file:
        reader = csv.DictReader(file)
        columns = [name for name in reader.fieldnames or [] if name != "model"]
        table = {row["model"]: {c: float(row[c]) if row[c].strip() else None for c in columns} for row in reader}
    if not columns or not table:
        raise ValueError(f"{path} has no paper numbers (expected a header 'model,<columns...>' and rows)")
    return columns, table


@dataclass
class Cell:
    """One model x column: the paper's number and ours over seeds (all of one recipe)."""

    paper: float | None
    errors: list[float] = field(default_factory=list)  # % test metric (the spec's error or accuracy), one per seed
    seeds: list[int] = field(default_factory=list)
    params: int | None = None
    recipe: str | None = None
    iterations: int | None = None
    samples: int | None = None  # training samples per run
    wall_times: list[float] = field(default_factory=list)  # s per run
    devices: set[str] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.errors)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.errors) if self.errors else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None below two seeds)."""
        return statistics.stdev(self.errors) if self.n > 1 else None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


@dataclass
class Table:
    columns: list[str]
    models: list[str]
    cells: dict[tuple[str, str], Cell]
    recipes: list[str]
    not_counted: list[dict[str, Any]]  # failed / unfinished runs, listed under the table
    commits: list[str]
    missing: str = MISSING  # what a cell the paper reports but we have not run shows (e.g. "GPU")
    spec: TableSpec = TABLE1
    note: str = ""  # a paragraph under the table (e.g. which cells a recipe runs and where the others are)
    # (model, column) -> the experiment that explains the cell's distance from the paper (load_explanations)
    explanations: dict[tuple[str, str], str] = field(default_factory=dict)


def build_table(
    records: Iterable[Mapping[str, Any]],
    columns: list[str],
    paper: Mapping[str, Mapping[str, float | None]],
    recipe: str | None = None,
    missing: str = MISSING,
    spec: TableSpec = TABLE1,
) -> Table:
    """Group finished runs by (model, column), each counting its test_<spec.metric>; mixing recipes in one cell is
    an error unless `recipe` (a recipe folder name, e.g. fast-fast or sgd_table1-paper) picks one."""
    key = f"test_{spec.metric}"
    cells = {(model, column): Cell(paper[model][column]) for model in paper for column in columns}
    models = list(paper)
    not_counted, commits = [], set()
    for record in records:
        where = record.get("path", "?")
        if recipe is not None and recipe_name(record) != recipe:
            continue
        if record.get("status") != "finished":
            not_counted.append(dict(record))
            continue
        model, column = record.get("model"), record.get("column")
        if column not in columns:
            raise ValueError(f"{where}: column {column!r} is not one of the paper's columns {columns}")
        if model not in models:
            models.append(model)
            cells.update({(model, c): Cell(None) for c in columns})
        cell = cells[model, column]
        if record["seed"] in cell.seeds:
            raise ValueError(
                f"{where}: a second finished run of {model} on {column} with seed {record['seed']}; "
                "keep one (use a fresh runs folder / W&B group per sweep)"
            )
        words = recipe_of(record, spec.paper_samples)
        if cell.recipe is not None and words != cell.recipe:
            raise ValueError(
                f"{where}: {model} on {column} mixes recipes ({cell.recipe}) and ({words}); pass --recipe to pick one"
            )
        if not isinstance(record.get(key), int | float) or not math.isfinite(record[key]):
            raise ValueError(f"{where}: finished run without a finite {key} ({record.get(key)!r})")
        cell.errors.append(float(record[key]))
        cell.seeds.append(record["seed"])
        cell.recipe, cell.params, cell.iterations = words, record.get("params"), record.get("iterations")
        budget = (record.get("config") or {}).get("budget") or {}
        cell.samples = budget.get("batch_size", 0) * (record.get("iterations") or 0) or None
        if isinstance(record.get("wall_time_s"), int | float):
            cell.wall_times.append(float(record["wall_time_s"]))
        if record.get("device"):
            cell.devices.add(device_label(record))
        command = run_command(record)
        if command:
            cell.commands.append(command)
        if record.get("git_commit"):
            commits.add(record["git_commit"][:10] + ("+dirty" if record.get("git_dirty") else ""))
    recipes = sorted({cell.recipe for cell in cells.values() if cell.recipe})
    return Table(columns, models, cells, recipes, not_counted, sorted(commits), missing, spec)


def device_label(record: Mapping[str, Any]) -> str:
    """'cuda:0', or for a CPU run the kernels torch chose and its threads ('cpu AVX512, 1 thread'): CPU numbers
    differ between kernel sets and wall times with the threads, so a table filled on several machines and layouts
    says which cells ran how."""
    device = str(record["device"])
    if device != "cpu":
        return device
    environment = record.get("environment") or {}
    kernels = (environment.get("cpu_kernels") or {}).get("cpu_capability")
    threads = environment.get("torch_threads")
    label = f"{device} {kernels}" if kernels else device
    return f"{label}, {threads} thread{'' if threads == 1 else 's'}" if threads else label


def display_name(model: str) -> str:
    """'st_cnn_tps' -> 'ST-CNN TPS', 'fcn' -> 'FCN', '2st_cnn_448' -> '2xST-CNN 448px', '2st_fcn_aff' -> '2xST-FCN Aff',
    'lin2015' -> 'Lin 2015', 'vol_st_cnn' -> 'Volume ST-CNN' (the paper's row names)."""
    if cub := re.fullmatch(r"(?:(\d+)st_)?cnn_(\d+)", model):  # Table 3: [N transformers,] input size
        return f"{f'{cub[1]}xST-' if cub[1] else ''}CNN {cub[2]}px"
    if several := re.fullmatch(r"(\d+)(st_\w+)", model):  # MNIST addition's 2xST-FCNs: 2st_fcn_aff
        return f"{several[1]}x{display_name(several[2])}"
    if volume := re.fullmatch(r"vol_(st_)?cnn", model):  # the 3D experiment: a CNN of the flattened volume
        return f"Volume {'ST-' if volume[1] else ''}CNN"
    if cited := re.fullmatch(r"([a-z]+)(\d{4})", model):  # Table 3's published methods
        return f"{cited[1].capitalize()} {cited[2]}"
    parts = model.split("_")
    if parts[0] == "st" and len(parts) == 3:
        return f"ST-{parts[1].upper()} {parts[2].capitalize() if parts[2] != 'tps' else 'TPS'}"
    return model.upper()


def format_number(value: float | None, signed: bool = False, digits: int = 2) -> str:
    if value is None:
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_params(count: int | None) -> str:
    if count is None:
        return MISSING
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


def format_ours(cell: Cell) -> str:
    """'0.85 ± 0.05 (n=3)', '0.85 (n=1)' or '—'."""
    if cell.mean is None:
        return MISSING
    spread = f" ± {format_number(cell.std)}" if cell.std is not None else ""
    return f"{format_number(cell.mean)}{spread} (n={cell.n})"


def versus_paper(cell: Cell, digits: int = 2) -> str:
    """'paper 0.7, Δ +0.15'; 'paper 0.7' without our number; 'paper —' without the paper's; '' without both."""
    if cell.paper is None:
        return "" if cell.mean is None else f"paper {MISSING}"
    text = f"paper {format_number(cell.paper, digits=1)}"
    return text if cell.diff is None else f"{text}, Δ {format_number(cell.diff, signed=True, digits=digits)}"


def params_label(table: Table, model: str) -> str:
    """Parameter counts of a model across columns (they differ with the input size), grouped: '146k (R, P, E)'."""
    by_count: dict[int, list[str]] = {}
    for column in table.columns:
        count = table.cells[model, column].params
        if count is not None:
            by_count.setdefault(count, []).append(column)
    if len(by_count) == 1:
        return format_params(next(iter(by_count)))
    return "; ".join(f"{format_params(count)} ({', '.join(cols)})" for count, cols in by_count.items()) or MISSING


def caption(table: Table) -> str:
    text = f"{table.spec.title}, % test {table.spec.metric}. Ours: mean ± sample std over seeds (n = number of seeds)"
    if len(table.recipes) == 1:
        text += f"; recipe: {table.recipes[0]}"
    elif table.recipes:
        text += "; recipes differ between cells (see the per-cell list and the CSV's recipe column)"
    else:
        text += "; no finished runs"
    text += f"; {table.spec.paper_note}; Δ = ours - paper; — = no finished run / not reported"
    if table.missing != MISSING:
        text += f"; {table.missing} = reported by the paper, not run by this recipe (see the note below the table)"
    text += "."
    if table.commits:
        text += f" Code: {', '.join(table.commits)}."
    return text


def runs_count(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def not_counted_lines(table: Table) -> list[str]:
    return [
        f"- {r.get('model')} on {r.get('column')} seed {r.get('seed')}: {r.get('status')}"
        + "".join(f" — {' '.join(str(r[key]).split())}" for key in ("error", "progress") if r.get(key))  # one line
        for r in table.not_counted
    ]


def _markdown_cell(table: Table, cell: Cell) -> str:
    if cell.mean is None and cell.paper is not None and table.missing != MISSING:
        return f"{table.missing}<br>{versus_paper(cell)}"
    return "<br>".join(part for part in (format_ours(cell), versus_paper(cell)) if part) or MISSING


def format_minutes(seconds: Sequence[float]) -> str:
    return f"{statistics.fmean(seconds) / 60:.1f} min" if seconds else MISSING


def _per_cell_lines(table: Table) -> list[str]:
    """Every cell with runs: the numbers, what they cost, where they ran and the command that made them."""
    rows = [(model, column, table.cells[model, column]) for model in table.models for column in table.columns]
    rows = [row for row in rows if row[2].n]
    if not rows:
        return []
    lines = [
        "",
        "| Model | Column | Paper | Ours | Δ | Samples / run | Wall time / run | Device | Command |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for model, column, cell in rows:
        commands = sorted(set(cell.commands))
        lines.append(
            f"| {display_name(model)} | {column} | {format_number(cell.paper, digits=1)} | {format_ours(cell)} "
            f"| {format_number(cell.diff, signed=True)} "
            f"| {f'{cell.samples / 1e6:.2f}M' if cell.samples else MISSING} | {format_minutes(cell.wall_times)} "
            f"| {', '.join(sorted(cell.devices)) or MISSING} | {'<br>'.join(f'`{c}`' for c in commands) or MISSING} |"
        )
    if len(table.recipes) > 1:
        lines += ["", "Recipes:", *(f"- {recipe}" for recipe in table.recipes)]
    return lines


AGREEMENT_PP = (0.3, 1.0)  # the tolerances a reproduction is judged by (issue: fast recipe ±0.3, CPU table ±1)


def agreement_lines(table: Table) -> list[str]:
    """How many run cells land within 0.3 and 1 pp of the paper, and which miss by more than 1 pp (named, with Δ)."""
    compared = [(m, c, cell) for (m, c), cell in table.cells.items() if cell.diff is not None]
    if not compared:
        return []
    counts = [sum(abs(cell.diff) <= tol + 1e-9 for *_, cell in compared) for tol in AGREEMENT_PP]
    misses = [
        f"{display_name(m)} {c} ({format_number(cell.diff, signed=True)})"
        for m, c, cell in compared
        if abs(cell.diff) > AGREEMENT_PP[1] + 1e-9
    ]
    text = (
        f"Agreement with the paper over the {len(compared)} cells run here: "
        + ", ".join(f"{n} within {tol:g} pp" for n, tol in zip(counts, AGREEMENT_PP, strict=True))
        + (f"; more than {AGREEMENT_PP[1]:g} pp off: {', '.join(misses)}." if misses else ".")
    )
    return ["", text]


def cost_lines(table: Table) -> list[str]:
    """What one run of every cell shown cost: the sum over cells of each cell's mean wall time per run."""
    times = [statistics.fmean(cell.wall_times) for cell in table.cells.values() if cell.wall_times]
    if not times:
        return []
    total = f"{sum(times) / 3600:.1f} h" if sum(times) >= 3600 else f"{sum(times) / 60:.0f} min"
    return [
        "",
        f"Cost: one run of each of the {len(times)} cells shown took {total} of wall time in all "
        "(the sum of each cell's mean wall time per run; runs trained side by side overlap in time).",
    ]


def load_explanations(path: Path) -> dict[tuple[str, str], str]:
    """A YAML list of {cells: ["<model> <column>", ...], evidence: <file>, text: <what it measured>} -> (model,
    column) -> "text (evidence)"."""
    from omegaconf import OmegaConf

    explanations = {}
    for number, entry in enumerate(OmegaConf.to_container(OmegaConf.load(path)) or [], 1):
        if not isinstance(entry, dict) or not {"cells", "evidence", "text"} <= entry.keys():
            raise ValueError(f"{path}: entry {number} needs cells, evidence and text")
        for name in entry["cells"]:
            model, _, column = str(name).partition(" ")
            explanations[model, column] = f"{entry['text']} ([evidence]({entry['evidence']}))"
    return explanations


def miss_lines(table: Table) -> list[str]:
    """Every run cell more than 0.3 pp from the paper, with the experiment that explains it or 'not explained'."""
    tolerance = AGREEMENT_PP[0]
    misses = [(m, c, cell) for (m, c), cell in table.cells.items() if cell.diff is not None]
    misses = [(m, c, cell) for m, c, cell in misses if abs(cell.diff) > tolerance + 1e-9]
    if not misses:
        return []
    lines = ["", f"Cells more than {tolerance:g} pp from the paper:", "", "| Cell | Δ | Explained by |"]
    lines.append("|---|---:|---|")
    for model, column, cell in misses:
        why = table.explanations.get((model, column), "not explained yet")
        lines.append(f"| {display_name(model)} {column} | {format_number(cell.diff, signed=True)} | {why} |")
    return lines


def render_markdown(table: Table) -> str:
    header = ["Model", "Params", *table.columns]
    lines = [f"**{caption(table)}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in table.models:
        row = [display_name(model), params_label(table, model)]
        for column in table.columns:
            cell = table.cells[model, column]
            row.append(_markdown_cell(table, cell))
        lines.append("| " + " | ".join(row) + " |")
    lines += agreement_lines(table)
    lines += cost_lines(table)
    if table.explanations:
        lines += miss_lines(table)
    if table.note:
        lines += ["", table.note]
    lines += _per_cell_lines(table)
    if table.not_counted:
        lines += ["", f"Not counted ({runs_count(len(table.not_counted))}):", *not_counted_lines(table)]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["model", "column", "paper", "mean", "std", "n", "diff", "params", "samples", "wall_time_s", "seeds", "recipe"]
    )
    for model in table.models:
        for column in table.columns:
            cell = table.cells[model, column]
            wall = statistics.fmean(cell.wall_times) if cell.wall_times else None
            values = (cell.paper, cell.mean, cell.std, cell.n or None, cell.diff, cell.params, cell.samples, wall)
            writer.writerow(
                [
                    model,
                    column,
                    *("" if v is None else v for v in values),
                    " ".join(map(str, cell.seeds)),
                    cell.recipe or "",
                ]
            )
    return buffer.getvalue()


def to_tex(text: str) -> str:
    """Plain table text -> LaTeX: escape specials, spell out the non-ASCII symbols."""
    for plain, tex in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(plain, tex)
    return text.replace("—", "---").replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def render_latex(table: Table) -> str:
    def tex_cell(cell: Cell) -> str:
        against = versus_paper(cell)
        return to_tex(format_ours(cell)) + (f" \\tiny{{[{to_tex(against)}]}}" if against else "")

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + to_tex(caption(table)) + "}",
        r"\begin{tabular}{ll" + "c" * len(table.columns) + "}",
        r"\toprule",
        "Model & Params & " + " & ".join(table.columns) + r" \\",
        r"\midrule",
    ]
    for model in table.models:
        cells = [tex_cell(table.cells[model, column]) for column in table.columns]
        lines.append(f"{display_name(model)} & {to_tex(params_label(table, model))} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: Path, name: str) -> list[Path]:
    """results/<name>.md, .csv and .tex, each written atomically."""
    paths = []
    for suffix, render in (("md", render_markdown), ("csv", render_csv), ("tex", render_latex)):
        path = Path(out_dir) / f"{name}.{suffix}"
        write_atomic(path, render(table))
        paths.append(path)
    return paths
