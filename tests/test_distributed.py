"""Data-parallel training (torchrun + DDP, gloo on the CPU): two processes on shards of each global batch train the
same model as one process on the whole batch (on synthetic digits, anywhere; on the real CUB sample)."""

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


def train_in_one_and_two_processes(single: list[str], double: list[str]) -> tuple[dict, dict, dict]:
    """Train `single` in this process and `double` in two gloo processes (each on its shard of every global batch);
    check that both end with the same weights; return both results and the weights."""
    one = train(compose_train(single))
    mp.spawn(_rank, args=(2, _free_port(), double), nprocs=2, join=True)
    two = read_result(Path(compose_train(double).run_dir))
    assert (one["processes"], two["processes"]) == (1, 2)
    state_one = load_checkpoint(Path(compose_train(single).run_dir))["model"]
    state_two = load_checkpoint(Path(compose_train(double).run_dir))["model"]
    assert state_one.keys() == state_two.keys()
    for key, value in state_one.items():
        assert torch.allclose(value, state_two[key], rtol=1e-5, atol=1e-6), key
    return one, two, state_one


def test_two_gloo_processes_train_as_one_on_the_cub_sample(cub_sample, tmp_path):
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

    single, double = overrides("single"), overrides("double")
    load_splits(compose_train(single).data)  # store the data once, before the processes start
    one, two, state_one = train_in_one_and_two_processes(single, double)
    assert two["iterations"] == 3 and two["test_accuracy"] == one["test_accuracy"]
    # ... and the models did train (the loc net too, at its 1e-4 lr): not the equality of two untouched models
    assert not torch.equal(state_one["transformers.0.regressor.bias"], torch.tensor([-0.5, 0.0]))
    assert not torch.equal(state_one["classifier.bias"], torch.zeros(200))


def test_two_gloo_processes_train_as_one_on_synthetic_digits(synthetic_overrides, tmp_path):
    # The ST-FCN has no dropout and no batch norm: nothing random differs between one process and two.
    run = [*synthetic_overrides[:-1], "model=st_fcn_aff", "budget.iterations=4", "budget.eval_every=4"]
    one, two, _ = train_in_one_and_two_processes(
        [*run, f"paths.runs_dir={tmp_path / 'one'}"], [*run, f"paths.runs_dir={tmp_path / 'two'}"]
    )
    assert two["iterations"] == 4 and (two["test_error"], two["val_history"]) == (one["test_error"], one["val_history"])
