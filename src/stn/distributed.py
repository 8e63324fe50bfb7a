"""Data-parallel training of one model on several devices: torchrun (or SLURM through submitit) + DDP.

    torchrun --nproc_per_node=<gpus> -m stn.train data=cub448 model=cub_4st ...

One process per device. Every process draws the same global batch (budget.batch_size: the batch order and the
augmentation are seeded per iteration, not per process) and trains on its contiguous shard of it; DDP averages the
gradients, so a step equals the single-process step on the whole batch (exactly so for models without batch norm;
batch norm is synchronised across GPUs). Rank 0 alone writes checkpoints, the result file and the logs; every rank
evaluates its shard of the validation/test images and the correct counts are summed (N times faster than rank 0
alone, and the ranks stay in step instead of idling at a barrier). Without WORLD_SIZE > 1 nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def _export_slurm_environment() -> None:
    """Under a SLURM job with several tasks launched by submitit (hydra/launcher=slurm_ddp), set the variables
    torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    if "SUBMITIT_FOLDER" not in os.environ and "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group the environment describes (torchrun, or SLURM tasks under submitit) and return this
    process's World and device (cuda:LOCAL_RANK on GPUs); a single process returns (SINGLE, device) unchanged.
    Backend: NCCL on GPUs, gloo on the CPU."""
    _export_slurm_environment()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: start at most one "
                f"process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # a sweep trains several runs in one process group
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != size or dist.get_rank() != rank:
        raise RuntimeError(f"process group {dist.get_rank()}/{dist.get_world_size()} != environment {rank}/{size}")
    return World(rank, size), device


def shard(count: int, world: World) -> slice:
    """This rank's contiguous share of `count` items (sizes differ by at most one)."""
    return slice(count * world.rank // world.size, count * (world.rank + 1) // world.size)


def check_batch(batch_size: int, world: World) -> None:
    """Equal shards, so that DDP's mean of the per-rank mean losses is the global batch's mean loss."""
    if batch_size % world.size:
        raise ValueError(
            f"budget.batch_size={batch_size} does not split evenly over {world.size} processes: use a batch size "
            f"divisible by the number of GPUs (it is the global batch, the same whatever the number of GPUs)"
        )


def sum_over_ranks(value: Tensor, world: World) -> Tensor:
    """The sum of `value` over all ranks (itself when single)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block before the others (e.g. builds the data or downloads weights they then find)."""
    if world.distributed and not world.main:
        dist.barrier()
    yield
    if world.distributed and world.main:
        dist.barrier()
