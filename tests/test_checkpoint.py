"""Damaged run files (checkpoint.pt, result.json) give an error that names the file and says what to do, and a
checkpoint is never unpickled beyond tensors and plain containers (weights_only=True)."""

from __future__ import annotations

import pickle

import pytest
import torch

from stn.checkpoint import (
    CHECKPOINT,
    RESULT,
    DamagedFileError,
    load_checkpoint,
    load_model,
    read_result,
    save_checkpoint,
    write_result,
)


class RunsACommand:
    """Unpickling this runs `touch <marker>` (what a hostile checkpoint could do with weights_only=False)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def damaged_checkpoints(tmp_path) -> dict[str, bytes]:
    save_checkpoint({"iteration": 10, "model": {"w": torch.ones(2000)}}, tmp_path / "good")
    good = (tmp_path / "good" / CHECKPOINT).read_bytes()
    return {
        "text": b"not a checkpoint\n",
        "empty": b"",
        "truncated zip": good[: len(good) // 2],
        "hostile pickle": pickle.dumps(RunsACommand(tmp_path / "marker"), protocol=2),
    }


def test_a_good_checkpoint_round_trips(tmp_path):
    state = {"iteration": 10, "model": {"w": torch.arange(5.0)}, "run_identity": {"seed": 1}, "cuda_rng": None}
    save_checkpoint(state, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded["iteration"] == 10 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert load_checkpoint(tmp_path / "no_run_yet") is None


def test_damaged_checkpoint_names_the_file_and_says_to_delete_it(tmp_path):
    for kind, content in damaged_checkpoints(tmp_path).items():
        run_dir = tmp_path / kind.replace(" ", "_")
        run_dir.mkdir()
        (run_dir / CHECKPOINT).write_bytes(content)
        with pytest.raises(DamagedFileError) as error:
            load_checkpoint(run_dir)
        message = str(error.value)
        assert str(run_dir / CHECKPOINT) in message and "Delete it" in message and "from scratch" in message, kind
        # torch's own advice (load with weights_only=False, i.e. run the file's code) is neither shown nor chained
        assert "weights_only" not in message and error.value.__cause__ is None and error.value.__suppress_context__
    assert not (tmp_path / "marker").exists()  # the hostile pickle's command never ran


def test_load_model_with_a_damaged_checkpoint_gives_the_same_clear_error(tmp_path):
    write_result({"status": "finished", "config": {"model": {"net": {}}}}, tmp_path)
    (tmp_path / CHECKPOINT).write_text("half a checkpoint")
    with pytest.raises(DamagedFileError, match="checkpoint.pt is damaged"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b'{"status": "fini', b"\xff\xfe not utf-8"])
def test_damaged_result_names_the_file_and_says_what_to_do(tmp_path, content):
    (tmp_path / RESULT).write_bytes(content)
    with pytest.raises(DamagedFileError) as error:
        read_result(tmp_path)
    message = str(error.value)
    assert str(tmp_path / RESULT) in message and "Delete it and rerun the same command" in message
    assert isinstance(error.value, ValueError)  # callers that handle bad values keep working
    write_result({"status": "failed"}, tmp_path)
    assert read_result(tmp_path) == {"status": "failed"} and read_result(tmp_path / "none") is None
