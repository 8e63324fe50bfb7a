"""Data-parallel training (torchrun + DDP, gloo on the CPU): two processes on shards of each global batch train the
same model as one process on the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cub_runs import compose_train, register_small_backbone, small_run_overrides

from stn.checkpoint import load_checkpoint, read_result
from stn.data import load_splits
from stn.distributed import World, check_batch, shard
from stn.train import train


def test_shards_cover_a_batch_once_and_uneven_global_batches_are_refused():
    assert [shard(10, World(rank, 3)) for rank in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert shard(8, World()) == slice(0, 8)
    check_batch(32, World(1, 4))
    with pytest.raises(ValueError, match="divisible by the number of GPUs"):
        check_batch(30, World(0, 4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, overrides: list[str]) -> None:
    """One training process, as torchrun would start it (its environment variables)."""
    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    torch.set_num_threads(1)
    register_small_backbone()
    try:
        train(compose_train(overrides))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_exactly_as_one_process_on_the_same_global_batch(cub_sample, tmp_path):
    sample = cub_sample
    register_small_backbone()

    def overrides(runs: str) -> list[str]:
        # The 2xST model (shared loc net at its own lr) without dropout: no randomness differs between the runs.
        return small_run_overrides(sample, tmp_path / "data", tmp_path / runs) + [
            "model.net.dropout=0",
            "budget.iterations=3",
            "budget.eval_every=3",
            "budget.checkpoint_every=3",
            "optim.optimizer.lr=0.01",
        ]

    single, double = compose_train(overrides("single")), overrides("double")
    load_splits(single.data)  # store the data once, before the processes start
    one = train(single)
    mp.spawn(_rank, args=(2, _free_port(), double), nprocs=2, join=True)
    two = read_result(Path(compose_train(double).run_dir))
    assert (one["processes"], two["processes"]) == (1, 2) and two["iterations"] == 3
    assert two["test_accuracy"] == one["test_accuracy"]
    state_one = load_checkpoint(Path(single.run_dir))["model"]
    state_two = load_checkpoint(Path(compose_train(double).run_dir))["model"]
    assert state_one.keys() == state_two.keys()
    for key, value in state_one.items():
        assert torch.allclose(value, state_two[key], rtol=1e-5, atol=1e-6), key
    # ... and the models did train (the loc net too, at its 1e-4 lr): not the equality of two untouched models
    assert not torch.equal(state_one["transformers.0.regressor.bias"], torch.tensor([-0.5, 0.0]))
    assert not torch.equal(state_one["classifier.bias"], torch.zeros(200))
