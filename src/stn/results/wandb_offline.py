"""W&B runs read back as result records: offline runs straight from their .wandb files, online ones via wandb.Api."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        "config": config,  # the full run config: the table's recipe and samples come from it
        **{key: value for key, value in run.summary.items() if not key.startswith("_")},
        "path": f"wandb:{run.project}/{run.run_id}",
    }
