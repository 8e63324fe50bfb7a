"""A run's training recipe: its folder name (optim-budget) and the recipe in words, as table captions print it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


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


def recipe_of(record: Mapping[str, Any], paper_samples: int | None = None) -> str:
    """A run's training recipe in words: optimiser, lr schedule, samples seen (and their share of `paper_samples`,
    the paper's per-run samples for the run's table), for generated data the training data stream, and bf16 when the
    run trained under bf16 autocast."""
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
    share = ""
    if paper_samples:
        ratio = samples / paper_samples
        percent = f"{ratio:.0%}" if ratio >= 0.01 else f"{ratio:.2%}"  # a short CPU budget is not "0%"
        share = f" ({percent} of the paper's {paper_samples / 1e6:.1f}M)"
    words.append(f"{budget['iterations']:,} iterations x {budget['batch_size']} = {samples / 1e6:.2f}M samples{share}")
    data = config.get("data") or {}
    if "redraw_train" in data:  # generated data (distorted MNIST): a fixed stored training set or fresh draws
        fresh = data["redraw_train"]
        words.append("fresh training distortions every epoch" if fresh else "one fixed distorted training set")
    if trained_precision(record) == "bf16":
        words.append("bf16 autocast")
    return ", ".join(words)


def trained_precision(record: Mapping[str, Any]) -> str:
    """The precision a run trained in: its config's `precision` on CUDA, `cpu_precision` (fp32 before the key
    existed) on the CPU."""
    config = record.get("config") or {}
    if str(record.get("device", "")).startswith("cuda"):
        return config.get("precision", "fp32")
    return config.get("cpu_precision", "fp32")


def run_command(record: Mapping[str, Any]) -> str | None:
    """The command line that made a local run: its Hydra overrides (saved beside result.json by Hydra), or the one an
    archived record carries (stn.results.archive)."""
    if record.get("command"):
        return str(record["command"])
    path = record.get("path", "")
    overrides = Path(path).parent / "hydra" / ".hydra" / "overrides.yaml"
    if not path or path.startswith("wandb:") or not overrides.is_file():
        return None
    words = [str(word) for word in OmegaConf.load(overrides) if not str(word).startswith(("paths.", "hydra/"))]
    return "python -m stn.train " + " ".join(words)
