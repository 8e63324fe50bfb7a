"""Comparisons of recipes: the evidence behind a default (results/evidence/*.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stn.results.recipes import recipe_name, recipe_of, run_command
from stn.results.specs import TABLE1, TableSpec
from stn.results.tables import Cell, display_name, format_minutes, format_ours


def arm_of(record: Mapping[str, Any]) -> str:
    """The arm of a comparison a run belongs to: its experiment name and recipe folder."""
    return f"{record.get('experiment')}/{recipe_name(record)}"


def render_comparison(
    records: Iterable[Mapping[str, Any]],
    title: str,
    common: bool = False,
    note: str | None = None,
    spec: TableSpec = TABLE1,
) -> str:
    """A markdown table: one row per (column, model), one column per arm (experiment/recipe), each cell the mean
    ± sample std of the finished runs' % test metric (the spec's; n seeds), followed by each arm's recipe and
    commands (of the runs in the rows shown). With `common`, only the rows every arm has runs of."""
    runs = [record for record in records if record.get("status") == "finished"]
    names = sorted({arm_of(record) for record in runs})
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for record in runs:
        by_arm = cells.setdefault((record["column"], record["model"]), {})
        by_arm.setdefault(arm_of(record), []).append(record[f"test_{spec.metric}"])
    if common:
        cells = {row: by_arm for row, by_arm in cells.items() if len(by_arm) == len(names)}
    # An arm's recipe, commands and wall time come from the runs of the rows shown, not every run of its folder.
    arms: dict[str, tuple[set[str], set[str], list[float]]] = {arm: (set(), set(), []) for arm in names}
    for record in runs:
        if (record["column"], record["model"]) not in cells:
            continue
        recipes, commands, walls = arms[arm_of(record)]
        recipes.add(recipe_of(record, spec.paper_samples))
        command = run_command(record)
        if command:
            commands.add(command)
        walls.append(float(record.get("wall_time_s") or 0.0))
    lines = [f"**{title}** (% test {spec.metric}: mean ± sample std over seeds, n = seeds)", ""]
    if note:
        lines += [note, ""]
    lines += ["| Column | Model | " + " | ".join(f"`{a}`" for a in names) + " |", "|---|---|" + "---:|" * len(names)]
    for (column, model), by_arm in sorted(cells.items()):
        values = [format_ours(Cell(None, by_arm.get(arm, []))) for arm in names]
        lines.append(f"| {column} | {display_name(model)} | " + " | ".join(values) + " |")
    lines += ["", "Arms:"]
    for arm in names:
        recipes, commands, walls = arms[arm]
        lines.append(f"- `{arm}`: {'; '.join(sorted(recipes))} (mean wall time per run {format_minutes(walls)})")
        lines += [f"  - `{command}`" for command in sorted(commands)]
    return "\n".join(lines) + "\n"
