"""The training loop: one function for every experiment (a data config + a model config + optim/budget configs).

    python -m stn.train data=mnist_rts model=st_cnn_aff optim=fast budget=fast seed=1

A run lives in `run_dir` (checkpoint.pt, result.json, Hydra's config and log). Rerunning the same command resumes
from the checkpoint (bit-identical to an uninterrupted run on the CPU) or, once finished, just reports the result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from stn import distributed
from stn.checkpoint import load_checkpoint, read_result, save_checkpoint, write_result
from stn.data import load_splits
from stn.distributed import SINGLE, World
from stn.loggers import NoLogger, build_logger, localisation_stats
from stn.models import count_parameters
from stn.results.runs import run_sweep_job
from stn.runinfo import environment, git_state
from stn.runtime import pick_device, seed_everything
from stn.tasks import Classification, Task, higher_is_better, metric_percent
from stn.transformers import SpatialTransformer
from stn.validation import check_config

log = logging.getLogger(__name__)

# The config sections that make two runs the same run; compared unresolved, so moving the data or runs folder
# (paths.*) does not matter, while any change of data, model, optimiser, budget, seed or precision (cpu_precision
# too, when it is not fp32) does.
IDENTITY_KEYS = ("seed", "data", "model", "optim", "budget", "precision")
# Data keys that say how a dataset is loaded and scored, not what is trained: each dataset has one of each, and the
# Table 1 runs made before these keys existed must still match their checkpoints and results.
WIRING_KEYS = ("loader", "task")
BUDGET_COUNTS = ("iterations", "batch_size", "eval_every", "checkpoint_every", "log_every", "eval_batch_size")
BUDGET_SUBSETS = ("train_subset", "val_subset", "test_subset")
PANEL_IMAGES = 16  # validation images whose transformations the logger draws at each evaluation
# The random streams derived from the run's seed: batch order and redraw per epoch, augmentation per iteration, and
# (several processes only) each rank's own stream for dropout.
BATCH_ORDER, REDRAW, AUGMENT, RANK = 0, 1, 2, 3
CLASSIFICATION = Classification()  # Table 1's task, the default of the building blocks gpu-check reuses


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=False)
    identity = {key: config[key] for key in IDENTITY_KEYS}
    identity["data"] = {key: value for key, value in identity["data"].items() if key not in WIRING_KEYS}
    cpu_precision = config.get("cpu_precision", "fp32")
    if cpu_precision != "fp32":  # left out at fp32, the CPU's only precision before the key existed: older runs match
        identity["cpu_precision"] = cpu_precision
    return identity


def stream_seed(seed: int, counter: int, stream: int) -> int:
    """A well-mixed 32-bit seed for one epoch (or iteration) of one random stream: resuming needs no generator
    state."""
    return int(np.random.SeedSequence([seed, counter, stream]).generate_state(1)[0])


Targets = Tensor | tuple[Tensor, ...]  # per-example targets of a split (see stn.data.splits)


def select(targets: Targets, index: Tensor | slice) -> Targets:
    """The targets of the examples `index`, whichever tensors the task scores."""
    return tuple(t[index] for t in targets) if isinstance(targets, tuple) else targets[index]


def to_device(targets: Targets, device: torch.device) -> Targets:
    return tuple(t.to(device) for t in targets) if isinstance(targets, tuple) else targets.to(device)


def check_budget(budget: DictConfig, seed: int) -> None:
    """Clear errors for budgets that cannot run."""
    for key in BUDGET_COUNTS:
        value = budget.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"budget.{key} must be a positive integer, got {value!r}")
    for key in BUDGET_SUBSETS:
        value = budget.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"budget.{key} must be null (all examples) or a positive integer, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def to_input(images: Tensor) -> Tensor:
    """uint8 [N, C, H, W] (on the device) -> float in [0, 1], channels_last on CUDA."""
    x = images.float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


PRECISIONS = ("bf16", "fp32")


def device_precision(cfg: DictConfig, device: torch.device) -> str:
    """The precision a run trains in on `device`: cfg.precision on CUDA, cfg.cpu_precision on the CPU (both checked,
    so a typo in either fails on any machine)."""
    for key in ("precision", "cpu_precision"):
        if cfg.get(key, "fp32") not in PRECISIONS:
            raise ValueError(
                f"{key} must be one of {PRECISIONS} (bf16: bf16 autocast, theta and grids stay float32; fp32: "
                f"float32, TF32 matmuls on CUDA), got {cfg.get(key)!r}"
            )
    return cfg.precision if device.type == "cuda" else cfg.get("cpu_precision", "fp32")


def use_precision(precision: str, device: torch.device) -> None:
    """Set the float32 matmul mode `precision` implies: TF32 for fp32 on CUDA (the fast float32 path), full float32
    otherwise (a bf16 run keeps its float32 theta and grids exact). Set either way, as it is process-wide and one
    process may train several runs."""
    torch.set_float32_matmul_precision("high" if precision == "fp32" and device.type == "cuda" else "highest")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for precision bf16 (the spatial transformer keeps theta and grids in float32), on either
    device; off for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def wants_channels_last(device: torch.device, precision: str) -> bool:
    """channels_last models: always on CUDA; on the CPU with bf16, whose oneDNN convolutions it speeds up (the CNN on
    R trains 2.7x faster in bf16 + channels_last than in float32: results/bench/train_cpu.md)."""
    return device.type == "cuda" or precision == "bf16"


def unchanged(images: Tensor) -> Tensor:
    """The eval transform of splits without one: the model sees the stored images."""
    return images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    batch_size: int,
    task: Task,
    precision: str = "fp32",
    transform: Callable[[Tensor], Tensor] = unchanged,
    world: World = SINGLE,
) -> float:
    """The task's % metric of `model` on uint8 images (seen through `transform`) already on the model's device;
    with several processes each scores its shard and the correct counts are summed."""
    was_training = model.training
    model.eval()
    total, part = len(images), distributed.shard(len(images), world)
    images, targets = images[part], select(targets, part)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        with autocast(images.device, precision):
            output = model(to_input(transform(images[batch])))
        correct += task.correct(output, select(targets, batch)).sum()
    model.train(was_training)
    return metric_percent(task.metric, distributed.sum_over_ranks(correct, world).item(), total)


def epoch_batches(
    images: Tensor,
    targets: Targets,
    batch_size: int,
    seed: int,
    start: int,
    redraw: Callable[[int, torch.device], Tensor] | None,
    transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Targets]]:
    """Training batches from iteration `start` on, forever: epoch e is a device-side permutation seeded by
    (seed, e), so a resumed run draws exactly the batches an uninterrupted one would. With `redraw`, every epoch
    after the first trains on a fresh draw of the distortions (the first uses the stored set). With `transform`,
    each batch is augmented on the device by a generator seeded by (seed, iteration). The last partial batch of an
    epoch is dropped."""
    steps_per_epoch = len(images) // batch_size
    epoch, first = divmod(start, steps_per_epoch)
    while True:
        if redraw is None or epoch == 0:
            epoch_images = images
        else:  # the same digits, freshly distorted (a training subset keeps its first N)
            epoch_images = redraw(stream_seed(seed, epoch, REDRAW), images.device)[: len(images)]
        generator = torch.Generator(images.device).manual_seed(stream_seed(seed, epoch, BATCH_ORDER))
        order = torch.randperm(len(images), generator=generator, device=images.device)
        for position in range(first, steps_per_epoch):
            index = order[position * batch_size : (position + 1) * batch_size]
            batch = epoch_images[index]
            if transform is not None:
                iteration = epoch * steps_per_epoch + position
                augment = torch.Generator(images.device).manual_seed(stream_seed(seed, iteration, AUGMENT))
                batch = transform(batch, augment)
            yield to_input(batch), select(targets, index)
        epoch, first = epoch + 1, 0


SCHEDULES = ("step", "cosine")


def lr_factor(optim: DictConfig, iterations: int) -> Callable[[int], float]:
    """The lr multiplier after `step` optimiser steps: a linear warm-up over the first optim.lr_warmup of the
    budget, then either the step schedule (x lr_gamma at each milestone) or a cosine decay to zero. Milestones and
    warm-up are fractions of the budget, so shorter budgets keep the schedule's shape."""
    kind = optim.get("lr_schedule", "step")
    if kind not in SCHEDULES:
        raise ValueError(f"optim.lr_schedule must be one of {SCHEDULES}, got {kind!r}")
    warmup_fraction = float(optim.get("lr_warmup", 0.0))
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"optim.lr_warmup must be a fraction of the budget in [0, 1), got {warmup_fraction}")
    fractions = list(optim.get("lr_milestones") or [])
    if any(not 0 < f <= 1 for f in fractions) or fractions != sorted(fractions):
        raise ValueError(f"optim.lr_milestones must be increasing fractions of the budget in (0, 1], got {fractions}")
    warmup = round(warmup_fraction * iterations)
    milestones = [round(f * iterations) for f in fractions]
    gamma = float(optim.get("lr_gamma", 0.1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    return factor


def build_optimizer(
    model: nn.Module, optim: DictConfig, iterations: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser (loc nets at loc_lr_mult x the base lr) and its lr schedule (see lr_factor)."""
    # By id, once each: transformers may share one loc net (CUB's NxST models).
    loc = {id(p): p for m in model.modules() if isinstance(m, SpatialTransformer) for p in m.localisation_parameters()}
    loc_params, loc_ids = list(loc.values()), set(loc)
    groups = [{"params": [p for p in model.parameters() if id(p) not in loc_ids], "lr_mult": 1.0}]
    if loc_params:
        groups.append({"params": loc_params, "lr_mult": float(optim.loc_lr_mult)})
    optimizer = instantiate(optim.optimizer)(groups)
    for group in optimizer.param_groups:
        group["lr"] *= group["lr_mult"]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim, iterations))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: Tensor,
    y: Targets,
    precision: str,
    task: Task = CLASSIFICATION,
) -> Tensor:
    """One optimisation step on a batch; returns the (float32) loss."""
    with autocast(x.device, precision):
        output = model(x)
    loss = task.loss(output, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def parameters_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _device_name(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train cfg.model on cfg.data under cfg.optim / cfg.budget; return (and write) the run's result record."""
    started = time.perf_counter()
    check_config(cfg)
    budget, seed = cfg.budget, cfg.seed
    check_budget(budget, seed)
    run_dir = Path(to_absolute_path(cfg.run_dir))
    identity = run_identity(cfg)
    previous = read_result(run_dir)
    if previous is not None and previous["status"] == "finished":  # a failed record is simply retried
        if previous.get("run_identity") != identity:
            raise ValueError(
                f"{run_dir} holds a finished run of a different configuration (data/model/optim/budget/seed/"
                f"precision); set another experiment_name (or seed), or delete that folder to start over"
            )
        metric = previous.get("metric", "error")
        log.info("%s already finished: test %s %.2f%%; nothing to do", run_dir, metric, previous[f"test_{metric}"])
        return previous

    world, device = distributed.init(pick_device(cfg.device))
    distributed.check_batch(budget.batch_size, world)
    precision = device_precision(cfg, device)
    use_precision(precision, device)
    with distributed.main_first(world):  # rank 0 builds the stored data once; the others then read it
        splits = load_splits(cfg.data)
    task: Task = instantiate(cfg.data.task)
    metric, best = task.metric, max if higher_is_better(task.metric) else min
    train_transform = getattr(splits, "train_transform", None)  # per-batch augmentation on the device, if any
    eval_transform = getattr(splits, "eval_transform", unchanged)

    def subset(name: str, limit: int | None) -> tuple[Tensor, Targets]:
        images, targets = splits.split(name)
        return images[:limit].to(device), to_device(select(targets, slice(limit)), device)

    train_x, train_y = subset("train", budget.train_subset)
    val_x, val_y = subset("val", budget.val_subset)
    test_x, test_y = subset("test", budget.test_subset)
    if budget.batch_size > len(train_x):
        raise ValueError(f"budget.batch_size={budget.batch_size} exceeds the {len(train_x)} training images")

    seed_everything(seed)  # the model's initialisation depends on the seed only, not on how the data was loaded
    with distributed.main_first(world):  # rank 0 downloads pretrained weights (if any) into the cache first
        model: nn.Module = instantiate(cfg.model.net)
    expected = getattr(model, "input_shape", None)
    seen = tuple(eval_transform(train_x[:1]).shape[1:])  # what the model sees, after any crop
    if expected is not None and tuple(expected) != seen:
        raise ValueError(
            f"model {cfg.model.name} was built for inputs {list(expected)} but data {cfg.data.name} holds "
            f"{list(seen)}: fix data.input_shape or pick a model/data pair that fit"
        )
    if world.distributed and device.type == "cuda":  # batch statistics over the global batch, not each shard
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if wants_channels_last(device, precision):
        model.to(memory_format=torch.channels_last)
    step_model = model
    if world.distributed:  # averages the gradients of the shards; broadcasts rank 0's initial state
        device_ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    step_model = torch.compile(step_model) if cfg.compile else step_model
    optimizer, scheduler = build_optimizer(model, cfg.optim, budget.iterations)

    state = load_checkpoint(run_dir)
    if state is not None:
        if state.get("run_identity") != identity:
            raise ValueError(
                f"{run_dir}/checkpoint.pt belongs to a different configuration (data/model/optim/budget/seed/"
                f"precision); set another experiment_name (or seed), or delete that folder to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        log.info("resuming %s from iteration %d", run_dir, state["iteration"])
    else:
        state = {"iteration": 0, "val_history": [], "train_time_s": 0.0, "wall_time_s": 0.0, "logger_run_id": None}
    if world.distributed:  # each rank its own dropout masks (from the seed, the iteration and the rank)
        torch.manual_seed(stream_seed(seed, state["iteration"] * world.size + world.rank, RANK))
    logger = build_logger(cfg, run_dir, resume_id=state["logger_run_id"]) if world.main else NoLogger()

    def record(status: str, **extra: Any) -> dict[str, Any]:
        commit, dirty = git_state()
        history = state["val_history"]
        trained_images = state["iteration"] * budget.batch_size
        return {
            "experiment": cfg.experiment_name,
            "data": cfg.data.name,
            "column": cfg.data.get("column"),
            "model": cfg.model.name,
            "seed": seed,
            "budget": budget.name,
            "status": status,
            "params": count_parameters(model),
            "metric": metric,
            f"val_{metric}": history[-1][1] if history else None,
            f"best_val_{metric}": best((value for _, value in history), default=None),
            f"test_{metric}": None,
            "iterations": state["iteration"],
            "wall_time_s": state["wall_time_s"] + time.perf_counter() - started,
            "train_time_s": state["train_time_s"],
            "images_per_s": trained_images / state["train_time_s"] if state["train_time_s"] > 0 else None,
            "val_history": history,
            "val_examples": len(val_x),
            "test_examples": len(test_x),
            "device": _device_name(device),
            "processes": world.size,
            "data_meta": splits.meta,
            "git_commit": commit,
            "git_dirty": dirty,
            "environment": environment(device),
            "run_identity": identity,
            "config": OmegaConf.to_container(cfg, resolve=True),
            **extra,
        }

    loss_sum, window_start, mark = torch.zeros((), device=device), state["iteration"], time.perf_counter()
    loop_started, start, total = mark, state["iteration"], budget.iterations
    desc = f"{cfg.data.name}/{cfg.model.name}/seed{seed}"
    progress = tqdm(total=total, initial=start, desc=desc, disable=None if world.main else True)
    batches = epoch_batches(train_x, train_y, budget.batch_size, seed, start, splits.redraw, train_transform)
    # Panels and localisation statistics draw validation images, or test images when there is no validation split
    # (CUB's official split): pictures only, nothing is selected on them.
    panel_x, panel_y = (val_x, val_y) if len(val_x) else (test_x, test_y)
    mine = distributed.shard(budget.batch_size, world)  # this rank's share of every global batch
    model.train()
    try:
        for done, (x, y) in zip(range(start + 1, total + 1), batches, strict=False):
            loss = train_step(step_model, optimizer, scheduler, x[mine], select(y, mine), precision, task)
            loss_sum += loss.detach()
            eval_now = done % budget.eval_every == 0 or done == total
            checkpoint = done % budget.checkpoint_every == 0 or done == total
            if not (eval_now or checkpoint or done % budget.log_every == 0):
                continue

            # End of a logging window: sync with the device once, check the loss, log, evaluate, checkpoint.
            mean_loss = distributed.sum_over_ranks(loss_sum, world).item() / world.size / (done - window_start)
            seconds = time.perf_counter() - mark
            state["train_time_s"] += seconds
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"non-finite training loss ({mean_loss}) in iterations {window_start + 1}..{done}; the last "
                    f"good checkpoint (iteration {state['iteration']}) is kept in {run_dir}. Lower "
                    f"optim.optimizer.lr or check the data"
                )
            images_per_s = (done - window_start) * budget.batch_size / seconds
            metrics = {
                "train/loss": mean_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/images_per_s": images_per_s,
            }
            if eval_now:
                validation = ""
                if len(val_x):  # CUB's official split has no validation images (data.val_size: 0)
                    val_value = evaluate(
                        model, val_x, val_y, budget.eval_batch_size, task, precision, eval_transform, world
                    )
                    state["val_history"].append([done, val_value])
                    metrics[f"val/{metric}"] = val_value
                    best_value = best(value for _, value in state["val_history"])
                    validation = f", val {metric} {val_value:.2f}% (best {best_value:.2f}%)"
                    progress.set_postfix(loss=f"{mean_loss:.3f}", val=f"{val_value:.2f}%")
                eta = (time.perf_counter() - loop_started) / (done - start) * (total - done)
                log.info(
                    "iteration %d/%d: loss %.4f%s, %.0f images/s, ETA %s",
                    done,
                    total,
                    mean_loss,
                    validation,
                    images_per_s,
                    timedelta(seconds=round(eta)),
                )
            if eval_now and world.main:
                probe = eval_transform(panel_x[:PANEL_IMAGES])
                metrics |= localisation_stats(model, to_input(probe))
                logger.log_panels(model, probe, select(panel_y, slice(PANEL_IMAGES)), step=done)
            logger.log_metrics(metrics, step=done)
            if checkpoint:  # every rank updates its state (to record at the end); rank 0 alone writes it
                if not parameters_finite(model):  # never overwrite a good checkpoint with a broken state
                    raise FloatingPointError(
                        f"parameters became non-finite by iteration {done}; the last good checkpoint (iteration "
                        f"{state['iteration']}) is kept in {run_dir}. Lower optim.optimizer.lr"
                    )
                state |= {
                    "iteration": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "run_identity": identity,
                    "logger_run_id": logger.run_id,
                }
                if world.main:
                    wall_time = state["wall_time_s"] + time.perf_counter() - started
                    save_checkpoint({**state, "wall_time_s": wall_time}, run_dir)
            progress.update(done - progress.n)
            loss_sum.zero_()
            window_start, mark = done, time.perf_counter()
        progress.close()
        test_value = evaluate(model, test_x, test_y, budget.eval_batch_size, task, precision, eval_transform, world)
        logger.log_metrics({f"test/{metric}": test_value}, step=total)
        result = record("finished", **{f"test_{metric}": test_value})
    except Exception as error:
        failure = record("failed", error=f"{type(error).__name__}: {error}")
        if world.main:
            write_result(failure, run_dir)
        logger.finish(failure)
        raise
    if world.main:
        write_result(result, run_dir)
    logger.finish(result)
    log.info(
        "%s finished: test %s %.2f%%, best val %s, %.0f images/s",
        run_dir,
        metric,
        result[f"test_{metric}"],
        "none" if result[f"best_val_{metric}"] is None else f"{result[f'best_val_{metric}']:.2f}%",
        result["images_per_s"],
    )
    return result


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # A failure is recorded in result.json; in a sweep the other jobs go on, a single run exits with the error.
    run_sweep_job(train, cfg, Path(to_absolute_path(cfg.run_dir)))


if __name__ == "__main__":
    main()
