"""The training entry point: one loop for every experiment (a data config + a model config + optim/budget configs).

    python -m stn.train data=mnist_rts model=st_cnn_aff optim=fast budget=fast seed=1

A run lives in `run_dir` (checkpoint.pt, result.json, Hydra's config and log). Rerunning the same command resumes
from the checkpoint (bit-identical to an uninterrupted run on the CPU) or, once finished, just reports the result.
Everything it does lives in the library: stn.setup (budget, data, model), stn.optim (optimiser, lr schedule, step),
stn.stream (the batches), stn.precision, stn.evaluation, stn.progress (windows, NaN guard, log lines) and
stn.run_folder (identity, resume, checkpoints, result record).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig
from torch import Tensor

from stn import distributed
from stn.checkpoint import write_result
from stn.evaluation import evaluate
from stn.loggers import NoLogger, build_logger, localisation_stats
from stn.optim import build_optimizer, train_step
from stn.precision import device_precision, to_input, use_precision
from stn.progress import Progress
from stn.run_folder import RunFolder, run_sweep_job
from stn.runtime import pick_device, seed_everything
from stn.setup import build_model, check_budget, load_run_data
from stn.stream import RANK, Targets, epoch_batches, select, stream_seed
from stn.tasks import Task
from stn.validation import check_config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train cfg.model on cfg.data under cfg.optim / cfg.budget; return (and write) the run's result record."""
    check_config(cfg)
    run, budget = RunFolder(cfg), cfg.budget
    check_budget(budget, cfg.seed)
    finished = run.finished_result()
    if finished is not None:
        return finished

    world, device = distributed.init(pick_device(cfg.device))
    distributed.check_batch(budget.batch_size, world)
    precision = device_precision(cfg, device)
    use_precision(precision, device)
    data = load_run_data(cfg, device, world)
    task: Task = instantiate(cfg.data.task)
    seed_everything(cfg.seed)  # the model's initialisation depends on the seed only, not on how the data was loaded
    model, step_model = build_model(cfg, data, device, precision, world)
    optimizer, scheduler = build_optimizer(model, cfg.optim, budget.iterations)
    state = run.resume(model, optimizer, scheduler, device)
    if world.distributed:  # each rank its own dropout masks (from the seed, the iteration and the rank)
        torch.manual_seed(stream_seed(cfg.seed, state["iteration"] * world.size + world.rank, RANK))
    logger = build_logger(cfg, run.path, resume_id=state["logger_run_id"]) if world.main else NoLogger()

    progress = Progress(cfg, state, task.metric, run.path, device, world)
    start, total = state["iteration"], budget.iterations
    batches = epoch_batches(*data.train, budget.batch_size, cfg.seed, start, data.redraw, data.train_transform)
    mine = distributed.shard(budget.batch_size, world)  # this rank's share of every global batch

    def score(split: tuple[Tensor, Targets]) -> float:
        return evaluate(model, *split, budget.eval_batch_size, task, precision, data.eval_transform, world)

    model.train()
    try:
        for done, (x, y) in zip(range(start + 1, total + 1), batches, strict=False):
            progress.add(train_step(step_model, optimizer, scheduler, x[mine], select(y, mine), precision, task))
            eval_now = done % budget.eval_every == 0 or done == total
            checkpoint = done % budget.checkpoint_every == 0 or done == total
            if not (eval_now or checkpoint or done % budget.log_every == 0):
                continue
            # End of a logging window: sync with the device once, check the loss, log, evaluate, checkpoint.
            metrics = progress.end_window(done, scheduler.get_last_lr()[0])
            if eval_now:
                metrics |= progress.validated(done, score(data.val) if len(data.val[0]) else None)
            if eval_now and world.main:
                images, targets = data.panels()
                metrics |= localisation_stats(model, to_input(images))
                logger.log_panels(model, images, targets, step=done)
            logger.log_metrics(metrics, step=done)
            if checkpoint:
                run.checkpoint(state, done, model, optimizer, scheduler, logger.run_id, device, world)
            progress.next_window(done)
        progress.close()
        test_value = score(data.test)
        logger.log_metrics({f"test/{task.metric}": test_value}, step=total)
        result = run.record("finished", state, model, data, task.metric, device, world, test_value=test_value)
    except Exception as error:
        failure = run.record("failed", state, model, data, task.metric, device, world, error=error)
        if world.main:
            write_result(failure, run.path)
        logger.finish(failure)
        raise
    if world.main:
        write_result(result, run.path)
    logger.finish(result)
    progress.log_finished(result)
    return result


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # A failure is recorded in result.json; in a sweep the other jobs go on, a single run exits with the error.
    run_sweep_job(train, cfg, Path(to_absolute_path(cfg.run_dir)))


if __name__ == "__main__":
    main()
