"""HDF5 storage of generated datasets: written atomically, with a sha256 over every dataset checked on load.

A file only ever appears under its final name complete (written to a temporary name in the same folder, synced,
then renamed), and its `sha256` attribute is written last, so an interrupted write never leaves a file that
loads. A file whose content no longer matches its checksum raises CorruptDatasetError: it is never silently
regenerated (something damaged it, and a person should know), and the message says how to regenerate it. A second
checksum, `provenance_sha256`, covers the other attributes (source checksums, name, version, generation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from stn.atomic import atomic_path
from stn.runinfo import cpu_kernels

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]  # "split/name" -> array
# sha256 over the arrays' checksum and every other attribute; sets stored before it existed verify their arrays only
PROVENANCE = "provenance_sha256"


class StoredConfig(Protocol):
    """What every dataset config gives the store: where its file lives and what it must have been made with."""

    path: Path
    seed: int

    def generation(self) -> dict: ...


class CorruptDatasetError(RuntimeError):
    """A stored dataset cannot be read or does not match its checksum."""


def checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object]) -> str:
    """Write arrays (as datasets) and JSON-able attrs to `path` atomically; return the stored checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = checksum(arrays)
    with atomic_path(path) as partial, h5py.File(partial, "w") as file:
        for name, array in arrays.items():
            file.create_dataset(name, data=array)
        for key, value in attrs.items():
            file.attrs[key] = json.dumps(value)
        # generated pixels can differ by one grey level in a few per million between hosts' float kernels
        file.attrs["cpu_kernels"] = json.dumps(cpu_kernels())
        provenance = {key: json.loads(value) for key, value in file.attrs.items()}
        file.attrs[PROVENANCE] = json.dumps(provenance_checksum(digest, provenance))
        file.attrs["sha256"] = json.dumps(digest)  # last: a file without it is incomplete
    return digest


def provenance_checksum(digest: str, attrs: Mapping[str, object]) -> str:
    """sha256 over the arrays' checksum and every other attribute (source md5s, name, version, generation ...)."""
    others = {key: value for key, value in attrs.items() if key not in ("sha256", PROVENANCE)}
    return hashlib.sha256(json.dumps([digest, others], sort_keys=True).encode()).hexdigest()


def read_verified(path: str | os.PathLike) -> tuple[Arrays, dict]:
    """Read every dataset and attribute of `path`; raise CorruptDatasetError unless the checksum matches."""
    path = Path(path)
    arrays: Arrays = {}

    def collect(name: str, item: object) -> None:
        if not isinstance(name, str):  # h5py gives a damaged (non-UTF-8) name as bytes
            raise ValueError(f"a dataset name is not text: {name!r}")
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    try:
        with h5py.File(path, "r") as file:
            file.visititems(collect)
            attrs = {key: json.loads(value) for key, value in file.attrs.items()}
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:  # h5py raises all of these
        raise _corrupt(path, f"unreadable: {type(error).__name__}: {error}") from error
    stored = attrs.get("sha256")
    if stored is None:
        raise _corrupt(path, "no sha256 attribute (an incomplete write)")
    if checksum(arrays) != stored:
        raise _corrupt(path, "its content does not match its sha256 attribute")
    if PROVENANCE not in attrs:
        log.warning(
            "%s was stored before its provenance (source checksums, name, version) was checksummed: its arrays are "
            "verified, its attributes cannot be. Delete it and run again to store it with both checked.",
            path,
        )
    elif provenance_checksum(stored, attrs) != attrs[PROVENANCE]:
        raise _corrupt(path, f"its attributes do not match its {PROVENANCE} attribute")
    return arrays, attrs


def _corrupt(path: Path, why: str) -> CorruptDatasetError:
    return CorruptDatasetError(
        f"{path} is corrupted ({why}). Delete it and run again: it is rebuilt from its source dataset on the "
        f"next load (distorted MNIST also with `python -m stn.data.make`)."
    )


def ensure_stored(cfg: StoredConfig, build: Callable[[], object]) -> Path:
    """The stored file of `cfg`, built first by `build()` if it does not exist (an existing file is left untouched)."""
    if not cfg.path.exists():
        build()
    return cfg.path


def read_matching(cfg: StoredConfig) -> tuple[Arrays, dict]:
    """Read and verify (sha256) the stored set of `cfg`, and check that it was made with cfg's generation and seed."""
    arrays, attrs = read_verified(cfg.path)
    if attrs.get("generation") != cfg.generation() or attrs.get("seed") != cfg.seed:
        raise ValueError(f"{cfg.path} was made with other parameters than the config asks for; delete it")
    return arrays, attrs


def stored_meta(cfg: StoredConfig, attrs: Mapping, **extra: object) -> dict:
    """What a run records about the stored set it trained on: the file, its checksum, seed, generation and code
    version, then each loader's own fields (`extra`)."""
    return {
        "name": attrs["name"],
        "path": str(cfg.path.resolve()),
        "sha256": attrs["sha256"],
        "seed": attrs["seed"],
        "generation": attrs["generation"],
        "stn_version": attrs["stn_version"],
        "cpu_kernels": attrs.get("cpu_kernels"),  # absent from sets stored before it was recorded
        **extra,
    }
