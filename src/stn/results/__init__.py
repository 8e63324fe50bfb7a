"""Per-run result files, reading them back (from disk or W&B), and the paper's tables rendered against the paper
(`python -m stn.results`, see stn.results.cli; the library never imports it).

Modules: runs (reading results back), wandb_offline (W&B runs as result records),
recipes (a run's recipe), specs (what differs between tables), tables (building and rendering a table), compare
(recipe comparisons), cli (the command line).
"""

from stn.results.compare import render_comparison
from stn.results.runs import load_local_results, load_results
from stn.results.specs import TABLE1, TABLES, TableSpec
from stn.results.tables import (
    MISSING,
    Cell,
    Table,
    build_table,
    caption,
    display_name,
    format_ours,
    load_paper_table,
    params_label,
    render_csv,
    render_latex,
    render_markdown,
    write_table,
)
from stn.results.wandb_offline import offline_wandb_runs

__all__ = [
    "MISSING",
    "TABLE1",
    "TABLES",
    "Cell",
    "Table",
    "TableSpec",
    "build_table",
    "caption",
    "display_name",
    "format_ours",
    "load_local_results",
    "load_paper_table",
    "load_results",
    "offline_wandb_runs",
    "params_label",
    "render_comparison",
    "render_csv",
    "render_latex",
    "render_markdown",
    "write_table",
]
