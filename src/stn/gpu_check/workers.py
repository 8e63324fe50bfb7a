"""The GPU check's subprocess workers (`python -m stn.gpu_check --worker SPEC`): steady-state training throughput
of the models, measured in a process of their own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from stn.atomic import write_atomic
from stn.data import load_splits
from stn.gpu_check.plan import MODES, Plan
from stn.models.params import CONFIG_DIR
from stn.optim import build_optimizer, train_step
from stn.precision import use_precision, wants_channels_last
from stn.runtime import pick_device, seed_everything
from stn.stream import epoch_batches


def compose_run(spec: dict, column: str, model: str, mode: str = "bf16") -> DictConfig:
    precision, compiled = MODES[mode]
    overrides = [f"data={column}", f"model={model}", f"precision={precision}", f"compile={compiled}"]
    return compose(config_name="train", overrides=[*overrides, "data.redraw_train=true", *spec["overrides"]])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor, plan: Plan, barrier=None) -> dict:
    """Steady-state images/s of the trainer's step (stn.optim.train_step) (autocast forward, float32 loss, backward,
    optimiser and lr steps) after `plan.warmup` steps, over `plan.measure_s` (or a barrier's window)."""
    device = images.device
    use_precision(cfg.precision, device)
    seed_everything(0)
    model = instantiate(cfg.model.net).to(device)
    if wants_channels_last(device, cfg.precision):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh compile per model, as a run gets (and no recompile limit across models)
    step_model = torch.compile(model) if cfg.compile else model
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.budget.iterations)
    batches = epoch_batches(images, labels, plan.batch, 0, 0, None)

    def step() -> torch.Tensor:
        return train_step(step_model, optimizer, scheduler, *next(batches), cfg.precision)

    started = time.perf_counter()
    for _ in range(plan.warmup):
        step()
    synchronise(device)
    warmup_s = time.perf_counter() - started
    window = plan.measure_s
    if barrier is not None:
        window = plan.window_s
        barrier()
    steps, began, wall_began = 0, time.perf_counter(), time.time()
    while True:
        for _ in range(plan.chunk):
            loss = step()
        steps += plan.chunk
        synchronise(device)
        seconds = time.perf_counter() - began
        if seconds >= window:
            break
    return {
        "images_per_s": steps * plan.batch / seconds,
        "steps": steps,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "final_loss": loss.item(),
        "started_at": wall_began,
        "ended_at": wall_began + seconds,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def redraw_seconds(redraw, device: torch.device) -> float:
    """Seconds of one redraw of the training distortions (the second call: the first moves the digits)."""
    for seed in (1, 2):
        synchronise(device)
        started = time.perf_counter()
        redraw(seed, device)
        synchronise(device)
    return time.perf_counter() - started


def wait_at_barrier(folder: Path, count: int, stop_at: float) -> None:
    """Announce readiness, then wait until all `count` workers are ready (or stop_at: then time alone)."""
    (folder / f"ready{os.getpid()}").touch()
    while len(list(folder.glob("ready*"))) < count and time.time() < stop_at:
        time.sleep(0.005)


def worker(spec_path: Path) -> None:
    """Run one worker spec (written by the orchestrator), saving its output after every item."""
    spec = json.loads(Path(spec_path).read_text())
    device, plan, out = pick_device(spec["device"]), Plan(**spec["plan"]), Path(spec["out"])
    output: dict[str, Any] = {}

    def save_output() -> None:
        write_atomic(out, json.dumps(output, indent=2))

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="gpu_check"):
        if spec["kind"] == "data":
            output["columns"] = {}
            for column in spec["columns"]:
                started = time.perf_counter()
                load_splits(compose_run(spec, column, "cnn").data)  # generates the stored file if missing
                output["columns"][column] = time.perf_counter() - started
                save_output()
        elif spec["kind"] == "throughput":
            throughput_worker(spec, device, plan, output, save_output)
        else:  # one process of a concurrency level
            column, model, mode = spec["item"]
            cfg = compose_run(spec, column, model, mode)
            splits = load_splits(cfg.data)
            barrier = Path(spec["barrier"])
            images, labels = splits.train_x.to(device), splits.train_y.to(device)
            row = measure(cfg, images, labels, plan, lambda: wait_at_barrier(barrier, spec["count"], spec["stop_at"]))
            output |= {"data": column, "model": model, "mode": mode, **row}
            save_output()


def throughput_worker(spec: dict, device: torch.device, plan: Plan, output: dict, save_output) -> None:
    output |= {"items": [], "redraw_s": {}, "train_images": {}}
    loaded: dict[str, Any] = {}
    for column, model, mode in spec["items"]:
        if time.time() > spec["stop_at"]:
            break
        item = {"data": column, "model": model, "mode": mode}
        try:
            if column not in loaded:
                loaded.clear()  # one column's images on the device at a time
                splits = load_splits(compose_run(spec, column, model).data)
                loaded[column] = (splits.train_x.to(device), splits.train_y.to(device))
                output["redraw_s"][column] = redraw_seconds(splits.redraw, device)
                output["train_images"][column] = len(splits.train_x)
            item |= measure(compose_run(spec, column, model, mode), *loaded[column], plan)
        except Exception as error:  # recorded; the next item goes on
            item["error"] = f"{type(error).__name__}: {error}"[:500]
        output["items"].append(item)
        save_output()
