"""The paper's tables rendered from our runs against the paper, and comparisons of recipes.

    python -m stn.results table1 [--runs runs/table1] [--source local|wandb] [--wandb-path ENTITY/PROJECT]
                                 [--recipe NAME] [--name table1] [--missing TEXT] [--note TEXT] [--out results]
                                 [--archive FILE] [--explain FILE]

writes results/<name>.md, .csv and .tex: for each model x column the paper's number (% test error for Table 1),
ours as mean ± std over seeds (with n), and the difference; a cell without runs shows "—" (or --missing, e.g.
"GPU", where the paper has a number). The caption names the training recipe (optimiser, schedule, samples, fixed or
fresh data); one cell never averages runs of different recipes. Only runs with status "finished" count. With
--archive, the finished runs are also kept in FILE (one JSON line each, no path of this machine) and the table counts
the archived runs too: a table longer than one machine's life is filled over several (stn.results.archive). With
--explain, every cell more than 0.3 pp from the paper is listed under the table with the experiment that explains it
(or "not explained yet").

    python -m stn.results compare --runs DIR [--runs DIR ...] --title TEXT [--common] [--out FILE]

compares the arms (experiment/recipe folders) of the runs, one row per (column, model).

    python -m stn.results learned --runs DIR [--runs DIR ...] [--title TEXT] [--note TEXT] [--out FILE]

reads each finished Table 1 run's input transformer against its test digits' known distortions: how much of their
rotation, scale and offset it undoes (stn.analysis.learned).

    python -m stn.results windows --runs DIR [--runs DIR ...] [--title TEXT] [--note TEXT] [--out FILE]

reads how much of each input channel's ink each input transformer's window holds on its test set: a window left on
blank canvas (a dead transformer) holds ~0 (stn.analysis.windows).

    python -m stn.results colocalisation --arm OVERRIDES@FOLDER [--arm ...] --title TEXT [--note TEXT] [--out FILE]

puts co-localisation arms side by side (each `python -m stn.colocalisation OVERRIDES out=FOLDER`): % localised per
class on T and TC (stn.results.colocalisation).

    python -m stn.results probe --data mnist_r mnist_rts [--model st_fcn_aff] [--hidden 32,32,32 ...]
                                [--iterations 15000] [--seeds 0 1 2] [--override KEY=VALUE ...] [--out FILE]

trains the model's loc net body, with supervision, to regress the digits' known distortions: could it see them
(stn.analysis.probe)?
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stn.analysis.learned import render_learned
from stn.analysis.probe import compose_cfg, probe, render_probe
from stn.analysis.windows import render_windows
from stn.atomic import write_atomic
from stn.checkpoint import DamagedFileError
from stn.results.archive import update_archive
from stn.results.colocalisation import parse_arm, render_colocalisation
from stn.results.compare import render_comparison
from stn.results.runs import load_local_results, load_results
from stn.results.specs import TABLES
from stn.results.tables import (
    MISSING,
    build_table,
    display_name,
    load_explanations,
    load_paper_table,
    not_counted_lines,
    runs_count,
    write_table,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stn.results", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for spec in TABLES.values():
        table = commands.add_parser(spec.name, help=f"render {spec.title} against the paper")
        table.add_argument("--runs", type=Path, default=Path(f"runs/{spec.name}"), help="the sweep's runs folder")
        table.add_argument(
            "--source", choices=("local", "wandb"), default="local", help="result.json files or W&B runs"
        )
        table.add_argument("--wandb-path", help="ENTITY/PROJECT to read online W&B runs (group = the runs folder name)")
        table.add_argument("--recipe", help="count only runs of this recipe folder (e.g. fast-fast, sgd_table1-paper)")
        table.add_argument("--name", default=spec.name, help="output file name (without suffix)")
        table.add_argument("--missing", default=MISSING, help='what an unrun cell the paper reports shows (e.g. "GPU")')
        table.add_argument("--note", default="", help="a paragraph under the table (e.g. where unrun cells are)")
        table.add_argument(
            "--archive",
            type=Path,
            help="a JSON-lines file of finished runs kept across machines: the finished runs of --runs are added to it "
            "and the table is rendered from all of them (stn.results.archive)",
        )
        table.add_argument(
            "--explain",
            type=Path,
            help="a YAML list of {cells, evidence, text}: under the table, every cell more than 0.3 pp from the "
            "paper with the experiment that explains it (or 'not explained yet')",
        )
        table.add_argument("--paper", type=Path, default=spec.paper_csv)
        table.add_argument("--out", type=Path, default=Path("results"))
    compare = commands.add_parser("compare", help="compare the recipes (arms) of the runs under a folder")
    compare.add_argument("--runs", type=Path, action="append", required=True, help="a runs folder (repeatable)")
    compare.add_argument("--common", action="store_true", help="only the (column, model) rows that every arm has")
    compare.add_argument("--title", required=True, help="the comparison's title")
    compare.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    compare.add_argument("--note", help="a paragraph printed under the title (e.g. the machine and its load)")
    compare.add_argument("--table", choices=sorted(TABLES), default="table1", help="the paper table the runs belong to")
    learned = commands.add_parser("learned", help="how much of the test digits' distortions the transformers undo")
    learned.add_argument("--runs", type=Path, action="append", required=True, help="a runs folder (repeatable)")
    learned.add_argument("--title", default="What the trained transformers undo (Table 1 test sets)")
    learned.add_argument("--note", help="a paragraph printed under the title")
    learned.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    windows = commands.add_parser("windows", help="how much of each input channel the transformers' windows hold")
    windows.add_argument("--runs", type=Path, action="append", required=True, help="a runs folder (repeatable)")
    windows.add_argument("--title", default="What each transformer's window holds (share of each channel's ink)")
    windows.add_argument("--note", help="a paragraph printed under the title")
    windows.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    coloc = commands.add_parser("colocalisation", help="co-localisation arms side by side (% localised per class)")
    coloc.add_argument("--arm", action="append", required=True, help="OVERRIDES@FOLDER (OVERRIDES: space-separated)")
    coloc.add_argument("--title", required=True, help="the comparison's title")
    coloc.add_argument("--note", default="", help="a paragraph printed under the title")
    coloc.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    probe = commands.add_parser("probe", help="could a loc net see the distortions? (supervised regression)")
    probe.add_argument("--data", nargs="+", required=True, help="data configs, e.g. mnist_r mnist_rts")
    probe.add_argument("--model", default="st_fcn_aff", help="the model config whose loc net is probed")
    probe.add_argument("--hidden", nargs="+", help="FC loc net widths to try instead of the model's, e.g. 32,32,32")
    probe.add_argument("--iterations", type=int, default=15000, help="training iterations of batch 256")
    probe.add_argument("--seeds", type=int, nargs="+", default=[0])
    probe.add_argument("--override", nargs="*", default=[], help="Hydra overrides, e.g. paths.data_dir=...")
    probe.add_argument("--title", default="Could the loc net see the distortions? (supervised probe, test set)")
    probe.add_argument("--note", help="a paragraph printed under the title")
    probe.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, DamagedFileError) as error:  # no runs folder, a misspelt path, a damaged result.json
        parser.exit(2, f"python -m stn.results: {error}\n")


def _write_or_print(text: str, out: Path | None) -> None:
    if out:
        write_atomic(out, text)
        print(f"wrote {out}")
    else:
        print(text, end="")


def probe_arms(args: argparse.Namespace) -> str:
    """Run the probe for every (data, loc net widths) arm over the seeds; the rendered table."""
    widths = [None] if not args.hidden else [[int(w) for w in spec.split(",")] for spec in args.hidden]
    arms = {}
    for data in args.data:
        cfg = compose_cfg(data, args.model, args.override)
        for hidden in widths:
            label = "the model's" if hidden is None else "x".join(map(str, hidden))
            arm = f"{cfg.data.column} · {display_name(args.model)} loc net ({label}) · {args.iterations} it"
            arms[arm] = [probe(cfg, hidden, args.iterations, seed) for seed in args.seeds]
            print(f"probed {arm}", file=sys.stderr)
    command = " ".join(
        [f"python -m stn.results probe --data {' '.join(args.data)} --model {args.model}"]
        + ([f"--hidden {' '.join(args.hidden)}"] if args.hidden else [])
        + [f"--iterations {args.iterations} --seeds {' '.join(map(str, args.seeds))}"]
    )
    return render_probe(arms, args.title, command, args.note)


def run(args: argparse.Namespace) -> None:
    if args.command == "colocalisation":
        _write_or_print(render_colocalisation([parse_arm(arm) for arm in args.arm], args.title, args.note), args.out)
        return
    if args.command == "probe":
        _write_or_print(probe_arms(args), args.out)
        return
    if args.command in ("compare", "learned", "windows"):
        records = [record for runs in args.runs for record in load_local_results(runs)]
        if args.command == "compare":
            text = render_comparison(records, args.title, args.common, args.note, TABLES[args.table])
        elif args.command == "learned":
            text = render_learned(records, args.title, args.note)
        else:
            text = render_windows(records, args.title, args.note)
        _write_or_print(text, args.out)
        return
    columns, paper = load_paper_table(args.paper)
    if args.archive is None:
        records = load_results(args.source, args.runs, args.wandb_path)
    else:  # the archive may be all there is on a fresh machine
        if args.source != "local":
            raise SystemExit("python -m stn.results: --archive keeps local runs (result.json files); drop --source")
        found = load_local_results(args.runs) if args.runs.is_dir() else []
        archived = update_archive(args.archive, found, args.runs)
        print(f"{args.archive}: {len(archived)} finished runs ({len(found)} read from {args.runs})")
        records = [*archived, *(record for record in found if record["status"] != "finished")]  # listed, not counted
    table = build_table(records, columns, paper, args.recipe, args.missing, TABLES[args.command])
    table.note = args.note
    table.explanations = load_explanations(args.explain) if args.explain else {}
    for path in write_table(table, args.out, args.name):
        print(f"wrote {path}")
    if table.not_counted:
        print(
            f"{runs_count(len(table.not_counted))} not counted (failed or unfinished):",
            *not_counted_lines(table),
            sep="\n",
            file=sys.stderr,
        )
