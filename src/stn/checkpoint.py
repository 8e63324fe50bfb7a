"""Atomic files of a run: checkpoint.pt (to resume) and result.json (the record tables are built from).

Both are written to a temporary file in the same folder, flushed to disk and renamed over the old one, so a run
killed at any moment (even kill -9) leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from stn.atomic import atomic_path, write_atomic

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


class DamagedFileError(ValueError):
    """A run's checkpoint.pt or result.json exists but cannot be read; the message says what to do."""


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    with atomic_path(run_dir / CHECKPOINT) as temporary:
        torch.save(state, temporary)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint (tensors on the CPU), or None when it has none yet."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # not damaged: torch's error says so
        raise
    except Exception as error:  # torch raises all sorts (RuntimeError, UnpicklingError, EOFError, OSError, ...)
        # `from None`: torch's own message advises weights_only=False, i.e. running whatever the file holds.
        raise DamagedFileError(
            f"{path} is damaged or not a checkpoint of this code ({type(error).__name__}): the run cannot resume "
            f"from it. Delete it (and the run's {RESULT}, if the run had finished) and rerun the same command: the "
            f"run restarts from scratch."
        ) from None


def write_result(result: dict[str, Any], run_dir: Path) -> None:
    text = json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(run_dir / RESULT, text)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result record, or None when it has none yet."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:  # invalid JSON or not UTF-8
        raise DamagedFileError(
            f"{path} is damaged ({error}). Delete it and rerun the same command: the run resumes from its "
            f"{CHECKPOINT} (a finished run is evaluated again), or restarts from scratch without one."
        ) from None


def load_model(run_dir: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a run as last checkpointed (the trained model once the run finished), in eval mode."""
    run_dir = Path(run_dir)
    result, state = read_result(run_dir), load_checkpoint(run_dir)
    if result is None or state is None:
        raise FileNotFoundError(f"{run_dir} holds no {RESULT} and {CHECKPOINT}: is it a finished run's folder?")
    model = instantiate(OmegaConf.create(result["config"]).model.net)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
