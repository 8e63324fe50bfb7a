"""A table's finished runs kept as one committed file, so a table that takes longer than one machine keeps its runs
folder (the whole-table CPU recipe: ~13 h on 2 cores) can be filled over several sessions on fresh machines.

An archive (JSON lines, one finished run each) holds each run's result record as result.json has it, with the
paths of the machine that made it left out (each absolute path reads "<local>"; the stored set keeps its file name)
and the command that made the run added. `python -m stn.results table1 --archive FILE` adds the finished runs of
--runs to the archive (a run of the same cell and seed replaces the archived one) and renders the table from all.
An evidence comparison (stn.evidence) keeps its runs the same way and, on a fresh machine, restores an archived run
into the folder its sweep would train it in when the run's configuration is still the one the sweep composes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stn.atomic import write_atomic
from stn.checkpoint import read_result, write_result
from stn.results.recipes import recipe_name, run_command
from stn.run_folder import IDENTITY_KEYS, WIRING_KEYS, run_identity

ARCHIVE_PREFIX = "archive:"  # an archived record's `path`: archive:<archive file name>:<run folder under --runs>


def run_key(record: Mapping[str, Any]) -> tuple[str, str, str, str, int]:
    """What a run measures: (experiment, recipe, column, model, seed); one archived run per key."""
    return (
        str(record.get("experiment")),
        recipe_name(record),
        str(record.get("column")),
        str(record.get("model")),
        int(record["seed"]),
    )


LOCAL = "<local>"  # what an absolute path of the machine that made the run reads as in the archive


def without_local_paths(value: Any) -> Any:
    """`value` with every absolute path string (data and runs folders, MNIST sources) replaced by LOCAL."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    return LOCAL if isinstance(value, str) and Path(value).is_absolute() else value


def archived(record: Mapping[str, Any], runs_dir: Path, archive: Path) -> dict[str, Any]:
    """A finished run's record as the archive keeps it: no path of this machine, its command written out."""
    folder = Path(record["path"]).parent
    where = folder.relative_to(runs_dir) if folder.is_relative_to(runs_dir) else Path(folder.name)
    meta = dict(record.get("data_meta") or {})
    if "path" in meta:  # the stored set: its file name (and sha256) name it; the folder was this machine's
        meta["path"] = Path(meta["path"]).name
    # identity: the config; restored_from: where this machine found a run that an archive already holds
    kept = {key: value for key, value in record.items() if key not in ("path", "run_identity", "restored_from")}
    return {
        **without_local_paths({**kept, "data_meta": meta}),
        "command": record.get("command") or run_command(record),
        "path": f"{ARCHIVE_PREFIX}{archive.name}:{where.as_posix()}",
    }


def load_archive(archive: Path) -> list[dict[str, Any]]:
    """The archived records (none when the file does not exist yet); a damaged line is an error naming it."""
    if not archive.exists():
        return []
    records = []
    for number, line in enumerate(archive.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{archive}:{number} is not a JSON record ({error}); restore the file from git") from None
        if not isinstance(record, dict) or record.get("status") != "finished" or "seed" not in record:
            raise ValueError(f"{archive}:{number} is not a finished run's record; restore the file from git")
        records.append(record)
    return records


def update_archive(archive: Path, records: Iterable[Mapping[str, Any]], runs_dir: Path) -> list[dict[str, Any]]:
    """Add the finished runs among `records` (read from `runs_dir`) to the archive, replacing an archived run of the
    same key; write it back atomically (sorted, one run per line) and return every archived record."""
    by_key = {run_key(record): record for record in load_archive(archive)}
    for record in records:
        if record.get("status") == "finished":
            by_key[run_key(record)] = archived(record, Path(runs_dir), archive)
    kept = [by_key[key] for key in sorted(by_key)]
    write_atomic(archive, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))
    return kept


def same_configuration(archived_config: Any, config: Any) -> bool:
    """Whether an archived config equals a composed, resolved one; an archived "<local>" (a path of the machine
    that made the run) matches any path setting, a string or unset, as run identities compare paths unresolved."""
    if isinstance(archived_config, dict) and isinstance(config, dict):
        return archived_config.keys() == config.keys() and all(
            same_configuration(archived_config[key], config[key]) for key in config
        )
    if isinstance(archived_config, list) and isinstance(config, list):
        return len(archived_config) == len(config) and all(map(same_configuration, archived_config, config))
    return (archived_config == LOCAL and (config is None or isinstance(config, str))) or archived_config == config


def archived_run_of(cfg: DictConfig, records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The archived run that `cfg` (a composed training config) would train: same experiment, recipe folder and
    identity sections (stn.run_folder.IDENTITY_KEYS, CPU precision included) as a run made today; None if none."""
    config = OmegaConf.to_container(cfg, resolve=True)

    def identity(conf: Mapping[str, Any]) -> dict[str, Any]:
        sections = {key: conf.get(key) for key in IDENTITY_KEYS}
        sections["data"] = {key: value for key, value in (conf.get("data") or {}).items() if key not in WIRING_KEYS}
        return {**sections, "cpu_precision": conf.get("cpu_precision", "fp32")}

    for record in records:
        archived_config = record.get("config") or {}
        if (
            record.get("experiment") == config["experiment_name"]
            and archived_config.get("recipe") == config["recipe"]
            and same_configuration(identity(archived_config), identity(config))
        ):
            return record
    return None


def restore(record: Mapping[str, Any], cfg: DictConfig, source: Path) -> bool:
    """Write an archived run's record as the finished result.json of cfg.run_dir, so the sweep reports it instead of
    training it again; False (nothing written) when that folder already holds a finished run."""
    run_dir = Path(cfg.run_dir)
    previous = read_result(run_dir)
    if previous is not None and previous["status"] == "finished":
        return False
    kept = {key: value for key, value in record.items() if key != "path"}
    write_result({**kept, "run_identity": run_identity(cfg), "restored_from": source.as_posix()}, run_dir)
    return True
