"""Atomic files of a run: checkpoint.pt (to resume) and result.json (the record tables are built from).

Both are written to a temporary file in the same folder, flushed to disk and renamed over the old one, so a run
killed at any moment (even kill -9) leaves either the previous complete file or the new complete file. A checkpoint
carries a sha256 over its content, verified on load with its weights checked finite, so that damage never resumes
into a run recorded as finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from stn.atomic import atomic_path, write_atomic

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"

log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A run's checkpoint.pt or result.json exists but cannot be read; the message says what to do."""


CHECKSUM = "sha256"  # the checkpoint key holding state_digest() of everything else
REQUIRED = ("iteration", "model")  # what every checkpoint of this code holds (a resumable one holds more)


def state_digest(state: Any) -> str:
    """sha256 over a checkpoint's content: every tensor's place, dtype, shape and bytes, every other value's repr."""
    digest = hashlib.sha256()

    def visit(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{where}|tensor|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"{where}|dict|{len(value)}\n".encode())
            for key in sorted(value, key=repr):
                visit(value[key], f"{where}/{key!r}")
        elif isinstance(value, list | tuple):
            digest.update(f"{where}|{type(value).__name__}|{len(value)}\n".encode())
            for index, item in enumerate(value):
                visit(item, f"{where}/{index}")
        else:
            digest.update(f"{where}|{value!r}\n".encode())

    visit(state, "")
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    """Write `state` atomically with its checksum (load_checkpoint verifies it)."""
    content = {key: value for key, value in state.items() if key != CHECKSUM}
    with atomic_path(run_dir / CHECKPOINT) as temporary:
        torch.save({**content, CHECKSUM: state_digest(content)}, temporary)


def _damaged(path: Path, why: str) -> DamagedFileError:
    return DamagedFileError(
        f"{path} is damaged or not a checkpoint of this code ({why}): the run cannot resume from it. Delete it (and "
        f"the run's {RESULT}, if the run had finished) and rerun the same command: the run restarts from scratch."
    )


def _non_finite(value: Any, where: str = "") -> str | None:
    """The place of the first floating tensor in `value` that holds a NaN or an infinity, else None."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    return next((found for key, item in items if (found := _non_finite(item, f"{where}/{key}"))), None)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint (tensors on the CPU), or None when it has none yet. Its checksum and finite weights are
    checked: flipped bytes or a foreign file raise DamagedFileError. A checkpoint written before checkpoints carried
    a checksum cannot be verified: it loads with a warning, its weights checked finite only."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # not damaged: torch's error says so
        raise
    except Exception as error:  # torch raises all sorts (RuntimeError, UnpicklingError, EOFError, OSError, ...)
        # `from None`: torch's own message advises weights_only=False, i.e. running whatever the file holds.
        raise _damaged(path, type(error).__name__) from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise _damaged(path, f"it holds a {type(state).__name__}, not a dict with {list(REQUIRED)}")
    stored = state.pop(CHECKSUM, None)
    if stored is None:
        log.warning("%s has no checksum (written before checkpoints carried one): it cannot be verified", path)
    elif stored != state_digest(state):
        raise _damaged(path, "its content does not match its sha256")
    place = _non_finite({key: state.get(key) for key in ("model", "optimizer")})
    if place is not None:
        raise _damaged(path, f"{place.lstrip('/')} holds NaN or infinite values")
    return state


def _finite_json(value: Any) -> Any:
    """`value` with every NaN or infinity written as its name ("nan", "inf"), which JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(item) for item in value]
    return value


def write_result(result: dict[str, Any], run_dir: Path) -> None:
    """Write a run's record atomically. A finished record must be finite JSON; a failed one is always written (a
    non-finite config value, perhaps what failed, is recorded by name)."""
    if result.get("status") != "finished":
        result = _finite_json(result)
    text = json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(run_dir / RESULT, text)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result record, or None when it has none yet."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError as error:  # invalid JSON or not UTF-8
        raise _damaged_result(path, str(error)) from None
    if not isinstance(result, dict) or not isinstance(result.get("status"), str):
        raise _damaged_result(path, f"a {type(result).__name__} without a status, not a run's result record")
    return result


def _damaged_result(path: Path, why: str) -> DamagedFileError:
    return DamagedFileError(
        f"{path} is damaged ({why}). Delete it and rerun the same command: the run resumes from its "
        f"{CHECKPOINT} (a finished run is evaluated again), or restarts from scratch without one."
    )


def load_model(run_dir: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a run as last checkpointed (the trained model once the run finished), in eval mode."""
    run_dir = Path(run_dir)
    result, state = read_result(run_dir), load_checkpoint(run_dir)
    if result is None or state is None:
        raise FileNotFoundError(f"{run_dir} holds no {RESULT} and {CHECKPOINT}: is it a finished run's folder?")
    config = result.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "net" not in config["model"]:
        raise _damaged_result(run_dir / RESULT, "it records no model config (config.model.net)")
    model = instantiate(OmegaConf.create(config).model.net)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as error:  # other layers or shapes than the config builds
        raise _damaged(run_dir / CHECKPOINT, f"its weights do not fit the recorded model: {error}") from None
    return model.to(device).eval()
