"""Throughput benchmarks (not timed tests): `python -m stn.bench.transformer`, `python -m stn.bench.data`."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from stn.atomic import write_atomic
from stn.runinfo import git_state


def save_report(
    name: str, device: torch.device, table: str, args: argparse.Namespace, env: dict, rows: list, **extra: Any
) -> None:
    """Print the markdown table and save it with a JSON record (args, machine, commit, date, rows) in args.out."""
    commit, dirty = git_state()
    record = {
        "args": {**vars(args), "out": str(args.out)},
        "device": str(device),
        "environment": env,
        "git_commit": commit,
        "git_dirty": dirty,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
        "results": rows,
    }
    stem = Path(args.out) / f"{name}_{device.type}"
    write_atomic(stem.with_suffix(".md"), table)
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    print()
    print(table)
    print(f"written to {stem.with_suffix('.md')} and .json")
