"""Per-run result files, reading them back (from disk or W&B), and Table 1 rendered against the paper.

    python -m stn.results table1 [--runs runs/table1] [--source local|wandb] [--wandb-path ENTITY/PROJECT]
                                 [--recipe NAME] [--name table1] [--missing TEXT] [--out results]

writes results/<name>.md, .csv and .tex: for each model x column the paper's % test error, ours as mean ± std
over seeds (with n), and the difference; a cell without runs shows "—" (or --missing, e.g. "GPU", where the paper
has a number). The caption names the training recipe (optimiser, schedule, samples, fixed or fresh data); one cell
never averages runs of different recipes. Only runs with status "finished" count.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import struct
import sys
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stn.atomic import write_atomic
from stn.checkpoint import RESULT, read_result, write_result

log = logging.getLogger(__name__)

MISSING = "—"
T = TypeVar("T")


# --- Failed sweep jobs ---------------------------------------------------------------------------------------


def _finish_open_wandb_run_as_failed(error: str) -> None:
    """Mark the W&B run a crashed job left open as failed, so the W&B record agrees with result.json."""
    wandb = sys.modules.get("wandb")  # never import wandb just to learn that no run is open
    if wandb is None or wandb.run is None:
        return
    wandb.run.summary.update({"status": "failed", "error": error})
    wandb.run.finish(exit_code=1)
    wandb.teardown()  # wait until the run's file is complete (see stn.loggers.WandbLogger.finish)


def record_failure(run_dir: Path, cfg: DictConfig, exc: BaseException) -> Path:
    """Give the run a result.json with status "failed" and the error, so the table lists it instead of losing it.

    A finished result already there is never overwritten (the error may be that the folder belongs to another
    run); a failed record the trainer wrote for this same error is kept, as it knows more, and gets the traceback.
    """
    run_dir = Path(run_dir)
    error = f"{type(exc).__name__}: {exc}"
    _finish_open_wandb_run_as_failed(error)
    trace = "".join(traceback.format_exception(exc))
    existing = read_result(run_dir)
    if existing is not None and existing.get("status") == "finished":
        log.error("%s holds a finished run, left as it is; this attempt failed with %s", run_dir, error)
        return run_dir / RESULT
    if existing is not None and existing.get("status") == "failed" and existing.get("error") == error:
        write_result({**existing, "traceback": trace}, run_dir)
        return run_dir / RESULT

    def value(key: str) -> Any:  # the config itself may be what failed: never let reading it raise here
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)

    result = {
        "experiment": value("experiment_name"),
        "data": value("data.name"),
        "column": value("data.column"),
        "model": value("model.name"),
        "seed": value("seed"),
        "budget": value("budget.name"),
        "status": "failed",
        "error": error,
        "traceback": trace,
        "config": OmegaConf.to_container(cfg, resolve=False),
    }
    write_result(result, run_dir)
    return run_dir / RESULT


def run_sweep_job(task: Callable[[DictConfig], T], cfg: DictConfig, run_dir: Path) -> T | None:
    """Run `task(cfg)`; on an exception record a failed result, then re-raise in a single run but return None
    in a multirun, so one failing job never stops the rest of a sweep (whatever the launcher)."""
    try:
        return task(cfg)
    except Exception as exc:
        record_failure(run_dir, cfg, exc)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.exception("run %s failed; its result.json records the error and the sweep goes on", run_dir)
            return None
        raise


# --- Reading results back ------------------------------------------------------------------------------------


def load_local_results(runs_dir: Path) -> list[dict[str, Any]]:
    """Every result.json under `runs_dir` (any depth), each with its `path`."""
    results = []
    for path in sorted(Path(runs_dir).rglob(RESULT)):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it or rerun that run") from exc
        results.append({**result, "path": str(path)})
    return results


# wandb 0.31 ships no Python reader for its offline .wandb files (wandb.sdk.internal.datastore is gone and
# `wandb sync --view` was removed), so we read the format directly: a 7-byte header (":W&B", magic 0xBEE1,
# version 0), then LevelDB-log records (crc32, length, type) in 32 KiB blocks, each payload a
# wandb.proto.wandb_internal_pb2.Record.
_WANDB_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_BLOCK = 32768
_RECORD_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _record_payloads(path: Path) -> Iterator[bytes]:
    """The payloads of a .wandb file, chunks reassembled and checksums verified."""
    data = path.read_bytes()
    if not data.startswith(_WANDB_HEADER):
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r}, expected {_WANDB_HEADER!r})")
    position, pending = len(_WANDB_HEADER), b""
    while position < len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _RECORD_HEADER.size:  # too little room left for a record header: zero padding
            position += left_in_block
            continue
        if position + _RECORD_HEADER.size > len(data):
            return  # a header cut off: the run is still writing or was killed
        checksum, length, kind = _RECORD_HEADER.unpack_from(data, position)
        position += _RECORD_HEADER.size
        chunk = data[position : position + length]
        position += length
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            return  # a torn last record: keep everything before it
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {position - length}")


@dataclass
class WandbRun:
    """What a W&B run holds: its id, project, group, config, final summary and history rows."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _path_of(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _apply_items(target: dict[str, Any], items: Iterable[Any]) -> None:
    for item in items:
        *parents, last = _path_of(item)
        node = target
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = json.loads(item.value_json)


def _remove_items(target: dict[str, Any], items: Iterable[Any]) -> None:
    for item in items:
        *parents, last = _path_of(item)
        node = target
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)


def read_offline_run(run_files: Sequence[Path]) -> WandbRun:
    """Replay the .wandb files of one offline run (several when it was resumed), oldest first."""
    from wandb.proto import wandb_internal_pb2

    run = WandbRun()
    for path in run_files:
        for payload in _record_payloads(Path(path)):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run_id, run.project, run.group = record.run.run_id, record.run.project, record.run.run_group
                _apply_items(run.config, record.run.config.update)
                _apply_items(run.summary, record.run.summary.update)
            elif kind in ("config", "summary"):
                values = run.config if kind == "config" else run.summary
                _apply_items(values, getattr(record, kind).update)
                _remove_items(values, getattr(record, kind).remove)
            elif kind == "history":
                row: dict[str, Any] = {}
                _apply_items(row, record.history.item)
                run.history.append(row)
    for values in (run.config, run.summary):
        values.pop("_wandb", None)
    return run


def offline_wandb_runs(root: Path) -> list[WandbRun]:
    """Every offline W&B run under `root`; the files of a resumed run are merged in the order they were written."""
    files_by_id: dict[str, list[Path]] = {}
    # Run folders are named offline-run-<YYYYmmdd_HHMMSS>-<id>: sorting by folder name sorts by start time.
    for path in sorted(Path(root).rglob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name):
        files_by_id.setdefault(path.parent.name.rsplit("-", 1)[-1], []).append(path)
    return [read_offline_run(paths) for paths in files_by_id.values()]


def online_wandb_runs(wandb_path: str, group: str | None) -> list[WandbRun]:
    """The runs of W&B project `entity/project` (through wandb.Api; needs a login), optionally one group only."""
    import wandb

    filters = {"group": group} if group else {}
    return [
        WandbRun(run.id, run.project, run.group or "", dict(run.config), dict(run.summary_metrics))
        for run in wandb.Api().runs(wandb_path, filters=filters)
    ]


def result_from_wandb(run: WandbRun) -> dict[str, Any]:
    """The result record a W&B run carries: the trainer's logger puts the result.json fields in the summary;
    a run that never finished (crashed, still running) has no status there and is reported as such."""
    config = run.config
    return {
        "experiment": config.get("experiment_name"),
        "data": config.get("data", {}).get("name"),
        "column": config.get("data", {}).get("column"),
        "model": config.get("model", {}).get("name"),
        "seed": config.get("seed"),
        "budget": config.get("budget", {}).get("name"),
        "status": "unfinished",
        **{key: value for key, value in run.summary.items() if not key.startswith("_")},
        "path": f"wandb:{run.project}/{run.run_id}",
    }


def load_results(source: str, runs_dir: Path, wandb_path: str | None = None) -> list[dict[str, Any]]:
    """Result records from result.json files (source local) or from W&B runs (source wandb: the offline runs
    under `runs_dir`, or with `wandb_path` the online project, filtered to the experiment's group)."""
    if source not in ("local", "wandb"):
        raise ValueError(f"unknown source {source!r}; use local or wandb")
    if source == "wandb" and wandb_path:
        results = [result_from_wandb(run) for run in online_wandb_runs(wandb_path, Path(runs_dir).name)]
    elif not Path(runs_dir).is_dir():
        raise FileNotFoundError(f"no runs folder {runs_dir}; run the sweep first or pass --runs")
    elif source == "local":
        results = load_local_results(runs_dir)
    else:
        results = [result_from_wandb(run) for run in offline_wandb_runs(runs_dir)]
    if not results:
        where = wandb_path or runs_dir
        raise FileNotFoundError(f"no {source} results in {where} (W&B runs exist only for runs made with logger=wandb)")
    return results


# --- Table 1 against the paper -------------------------------------------------------------------------------


def load_paper_table(path: Path) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """The paper's CSV (rows model, one column per dataset; empty = not reported) -> (columns, values)."""
    with Path(path).open(newline="") as file:
        reader = csv.DictReader(file)
        columns = [name for name in reader.fieldnames or [] if name != "model"]
        table = {row["model"]: {c: float(row[c]) if row[c].strip() else None for c in columns} for row in reader}
    if not columns or not table:
        raise ValueError(f"{path} has no paper numbers (expected a header 'model,<columns...>' and rows)")
    return columns, table


PAPER_SAMPLES = 150_000 * 256  # Table 1's training samples per run [appendix]


def recipe_name(record: Mapping[str, Any]) -> str:
    """The recipe folder name of a run (configs/train.yaml's `recipe`: optim name - budget name)."""
    config = record.get("config") or {}
    return config.get("recipe") or f"{config.get('optim', {}).get('name', '?')}-{record.get('budget')}"


def _schedule_words(optim: Mapping[str, Any]) -> str:
    kind, warmup = optim.get("lr_schedule", "step"), float(optim.get("lr_warmup", 0.0))
    if kind == "cosine":
        words = "cosine decay to 0"
    else:
        milestones = ", ".join(f"{m:.0%}" for m in optim.get("lr_milestones") or [])
        words = f"x{optim.get('lr_gamma', 0.1):g} at {milestones} of the budget" if milestones else "constant lr"
    return f"{warmup:.0%} linear warm-up, {words}" if warmup else words


def recipe_of(record: Mapping[str, Any]) -> str:
    """A run's training recipe in words: optimiser, lr schedule, samples seen and the training data stream."""
    config = record.get("config") or {}
    optim, budget = config.get("optim"), config.get("budget")
    if not optim or not budget:  # a record without its config (e.g. from an old W&B run): the budget is all we know
        return f"budget {record.get('budget')}"
    optimizer = optim["optimizer"]
    words = [f"{optimizer['_target_'].rsplit('.', 1)[-1]} lr {optimizer['lr']:g}"]
    if optimizer.get("momentum") is not None:
        words.append(f"{'Nesterov ' if optimizer.get('nesterov') else ''}momentum {optimizer['momentum']:g}")
    words.append(f"weight decay {optimizer.get('weight_decay') or 0:g}")
    if optim.get("loc_lr_mult", 1.0) != 1.0:
        words.append(f"loc-net lr x{optim['loc_lr_mult']:g}")
    words.append(_schedule_words(optim))
    samples = budget["iterations"] * budget["batch_size"]
    words.append(
        f"{budget['iterations']:,} iterations x {budget['batch_size']} = {samples / 1e6:.2f}M samples "
        f"({samples / PAPER_SAMPLES:.0%} of the paper's {PAPER_SAMPLES / 1e6:.1f}M)"
    )
    redraw = (config.get("data") or {}).get("redraw_train")
    words.append("fresh training distortions every epoch" if redraw else "one fixed distorted training set")
    return ", ".join(words)


def run_command(record: Mapping[str, Any]) -> str | None:
    """The command line that made a local run: its Hydra overrides (saved beside result.json by Hydra)."""
    path = record.get("path", "")
    overrides = Path(path).parent / "hydra" / ".hydra" / "overrides.yaml"
    if not path or path.startswith("wandb:") or not overrides.is_file():
        return None
    words = [str(word) for word in OmegaConf.load(overrides) if not str(word).startswith(("paths.", "hydra/"))]
    return "python -m stn.train " + " ".join(words)


@dataclass
class Cell:
    """One model x column: the paper's number and ours over seeds (all of one recipe)."""

    paper: float | None
    errors: list[float] = field(default_factory=list)  # % test error, one per seed
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
    missing: str = "—"  # what a cell the paper reports but we have not run shows (e.g. "GPU")


def build_table(
    records: Iterable[Mapping[str, Any]],
    columns: list[str],
    paper: Mapping[str, Mapping[str, float | None]],
    recipe: str | None = None,
    missing: str = MISSING,
) -> Table:
    """Group finished runs by (model, column); mixing recipes in one cell is an error unless `recipe` (a recipe
    folder name, e.g. fast-fast or sgd_table1-paper) picks one."""
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
        words = recipe_of(record)
        if cell.recipe is not None and words != cell.recipe:
            raise ValueError(
                f"{where}: {model} on {column} mixes recipes ({cell.recipe}) and ({words}); pass --recipe to pick one"
            )
        if not isinstance(record.get("test_error"), int | float) or not math.isfinite(record["test_error"]):
            raise ValueError(f"{where}: finished run without a finite test_error ({record.get('test_error')!r})")
        cell.errors.append(float(record["test_error"]))
        cell.seeds.append(record["seed"])
        cell.recipe, cell.params, cell.iterations = words, record.get("params"), record.get("iterations")
        budget = (record.get("config") or {}).get("budget") or {}
        cell.samples = budget.get("batch_size", 0) * (record.get("iterations") or 0) or None
        if isinstance(record.get("wall_time_s"), int | float):
            cell.wall_times.append(float(record["wall_time_s"]))
        if record.get("device"):
            cell.devices.add(str(record["device"]))
        command = run_command(record)
        if command:
            cell.commands.append(command)
        if record.get("git_commit"):
            commits.add(record["git_commit"][:10] + ("+dirty" if record.get("git_dirty") else ""))
    recipes = sorted({cell.recipe for cell in cells.values() if cell.recipe})
    return Table(columns, models, cells, recipes, not_counted, sorted(commits), missing)


def display_name(model: str) -> str:
    """'st_cnn_tps' -> 'ST-CNN TPS', 'fcn' -> 'FCN' (the paper's row names)."""
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
    text = "Table 1 — distorted MNIST, % test error. Ours: mean ± sample std over seeds (n = number of seeds)"
    if len(table.recipes) == 1:
        text += f"; recipe: {table.recipes[0]}"
    elif table.recipes:
        text += "; recipes differ between cells (see the per-cell list and the CSV's recipe column)"
    else:
        text += "; no finished runs"
    text += "; paper: mean of 3 seeds; Δ = ours - paper; — = no finished run / not reported"
    if table.missing != MISSING:
        text += f"; {table.missing} = reported by the paper, not run here (see the command below the table)"
    text += "."
    if table.commits:
        text += f" Code: {', '.join(table.commits)}."
    return text


def _not_counted_lines(table: Table) -> list[str]:
    return [
        f"- {r.get('model')} on {r.get('column')} seed {r.get('seed')}: {r.get('status')}"
        + (f" — {' '.join(str(r['error']).split())}" if r.get("error") else "")  # one line per run
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


def render_markdown(table: Table) -> str:
    header = ["Model", "Params", *table.columns]
    lines = [f"**{caption(table)}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in table.models:
        row = [display_name(model), params_label(table, model)]
        for column in table.columns:
            cell = table.cells[model, column]
            row.append(_markdown_cell(table, cell))
        lines.append("| " + " | ".join(row) + " |")
    lines += _per_cell_lines(table)
    if table.not_counted:
        lines += ["", f"Not counted ({len(table.not_counted)} runs):", *_not_counted_lines(table)]
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


def write_table1(table: Table, out_dir: Path, name: str = "table1") -> list[Path]:
    """results/<name>.md, .csv and .tex, each written atomically."""
    paths = []
    for suffix, render in (("md", render_markdown), ("csv", render_csv), ("tex", render_latex)):
        path = Path(out_dir) / f"{name}.{suffix}"
        write_atomic(path, render(table))
        paths.append(path)
    return paths


# --- Comparisons of recipes (the evidence behind a default) --------------------------------------------------


def arm_of(record: Mapping[str, Any]) -> str:
    """The arm of a comparison a run belongs to: its experiment name and recipe folder."""
    return f"{record.get('experiment')}/{recipe_name(record)}"


def render_comparison(
    records: Iterable[Mapping[str, Any]], title: str, common: bool = False, note: str | None = None
) -> str:
    """A markdown table: one row per (column, model), one column per arm (experiment/recipe), each cell the mean
    ± sample std of the finished runs' % test error (n seeds), followed by each arm's recipe and commands.
    With `common`, only the rows every arm has runs of."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    arms: dict[str, tuple[set[str], set[str], list[float]]] = {}
    for record in records:
        if record.get("status") != "finished":
            continue
        arm = arm_of(record)
        recipes, commands, walls = arms.setdefault(arm, (set(), set(), []))
        recipes.add(recipe_of(record))
        command = run_command(record)
        if command:
            commands.add(command)
        walls.append(float(record.get("wall_time_s") or 0.0))
        cells.setdefault((record["column"], record["model"]), {}).setdefault(arm, []).append(record["test_error"])
    names = sorted(arms)
    lines = [f"**{title}** (% test error: mean ± sample std over seeds, n = seeds)", ""]
    if note:
        lines += [note, ""]
    lines += ["| Column | Model | " + " | ".join(f"`{a}`" for a in names) + " |", "|---|---|" + "---:|" * len(names)]
    for (column, model), by_arm in sorted(cells.items()):
        if common and len(by_arm) < len(names):
            continue
        values = [format_ours(Cell(None, by_arm.get(arm, []))) for arm in names]
        lines.append(f"| {column} | {display_name(model)} | " + " | ".join(values) + " |")
    lines += ["", "Arms:"]
    for arm in names:
        recipes, commands, walls = arms[arm]
        lines.append(f"- `{arm}`: {'; '.join(sorted(recipes))} (mean wall time per run {format_minutes(walls)})")
        lines += [f"  - `{command}`" for command in sorted(commands)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stn.results", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table1 = commands.add_parser("table1", help="render Table 1 (distorted MNIST) against the paper")
    table1.add_argument("--runs", type=Path, default=Path("runs/table1"), help="the sweep's runs folder")
    table1.add_argument("--source", choices=("local", "wandb"), default="local", help="result.json files or W&B runs")
    table1.add_argument("--wandb-path", help="ENTITY/PROJECT to read online W&B runs (group = the runs folder name)")
    table1.add_argument("--recipe", help="count only runs of this recipe folder (e.g. fast-fast, sgd_table1-paper)")
    table1.add_argument("--name", default="table1", help="output file name (without suffix)")
    table1.add_argument("--missing", default=MISSING, help='what an unrun cell the paper reports shows (e.g. "GPU")')
    table1.add_argument("--paper", type=Path, default=Path("results/paper/table1.csv"))
    table1.add_argument("--out", type=Path, default=Path("results"))
    compare = commands.add_parser("compare", help="compare the recipes (arms) of the runs under a folder")
    compare.add_argument("--runs", type=Path, action="append", required=True, help="a runs folder (repeatable)")
    compare.add_argument("--common", action="store_true", help="only the (column, model) rows that every arm has")
    compare.add_argument("--title", required=True, help="the comparison's title")
    compare.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    compare.add_argument("--note", help="a paragraph printed under the title (e.g. the machine and its load)")
    args = parser.parse_args(argv)

    if args.command == "compare":
        records = [record for runs in args.runs for record in load_local_results(runs)]
        text = render_comparison(records, args.title, args.common, args.note)
        if args.out:
            write_atomic(args.out, text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return
    columns, paper = load_paper_table(args.paper)
    records = load_results(args.source, args.runs, args.wandb_path)
    table = build_table(records, columns, paper, args.recipe, args.missing)
    for path in write_table1(table, args.out, args.name):
        print(f"wrote {path}")
    if table.not_counted:
        print(
            f"{len(table.not_counted)} runs not counted (failed or unfinished):",
            *_not_counted_lines(table),
            sep="\n",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
