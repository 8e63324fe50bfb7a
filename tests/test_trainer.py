"""The trainer on synthetic data (tests/synthetic.py), so these run on any clone: the result record and the rerun
that just reports it, bit-identical resume after an interruption (across redrawn epochs) and the NaN guard (two
gloo processes on synthetic data: test_distributed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import stn.train
from stn.checkpoint import load_checkpoint, load_model, read_result
from stn.loggers import NoLogger
from stn.models.params import CONFIG_DIR
from stn.train import train


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=list(overrides))


def test_a_run_writes_its_result_record_and_a_rerun_only_reports_it(synthetic_overrides):
    cfg = config(*synthetic_overrides, "model=st_fcn_aff", "seed=2")
    result = train(cfg)
    run_dir = Path(cfg.run_dir)
    assert json.loads((run_dir / "result.json").read_text()) == result
    assert (result["status"], result["data"], result["model"], result["seed"], result["iterations"]) == (
        "finished",
        "synthetic",
        "st_fcn_aff",
        2,
        20,
    )
    assert [it for it, _ in result["val_history"]] == [10, 20] and 0 <= result["test_error"] <= 100
    assert result["run_identity"]["data"]["name"] == "synthetic" and "loader" not in result["run_identity"]["data"]
    assert (result["val_examples"], result["test_examples"], result["processes"]) == (64, 64, 1)
    mtime = (run_dir / "result.json").stat().st_mtime_ns
    assert train(cfg) == result and (run_dir / "result.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different configuration"):
        train(config(*synthetic_overrides, "model=st_fcn_aff", "seed=2", "optim.optimizer.lr=0.5"))


class StopAt(NoLogger):
    """A logger that interrupts the run when it is asked to log step `step` (after the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics, step: int) -> None:
        if step == self.step:
            raise RuntimeError("interrupted")


def test_an_interrupted_run_resumes_bit_identically_across_redrawn_epochs(synthetic_overrides, tmp_path, monkeypatch):
    run = [*synthetic_overrides[:-1], "model=st_fcn_aff", "budget.iterations=30"]  # 8 batches an epoch: 3 redraws
    uninterrupted = train(config(*run, f"paths.runs_dir={tmp_path / 'a'}"))
    interrupted = config(*run, f"paths.runs_dir={tmp_path / 'b'}")
    monkeypatch.setattr(stn.train, "build_logger", lambda *args, **kwargs: StopAt(15))
    with pytest.raises(RuntimeError, match="interrupted"):
        train(interrupted)
    run_dir = Path(interrupted.run_dir)
    assert load_checkpoint(run_dir)["iteration"] == 10 and read_result(run_dir)["status"] == "failed"
    monkeypatch.undo()
    resumed = train(interrupted)  # a failed record is retried: from the checkpoint at iteration 10
    for key in ("test_error", "val_history", "iterations", "params"):
        assert resumed[key] == uninterrupted[key], key
    final_a = load_checkpoint(Path(uninterrupted["config"]["run_dir"]))
    final_b = load_checkpoint(run_dir)
    for name, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][name]), name
    assert final_a["optimizer"]["state"].keys() == final_b["optimizer"]["state"].keys()


def test_a_spatial_transformer_model_learns_through_train(synthetic_overrides):
    cfg = config(*synthetic_overrides, "model=st_fcn_aff", "optim=fast")  # 20 iterations
    assert train(cfg)["test_error"] < 30  # chance: 90%
    model = load_model(Path(cfg.run_dir))
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert not torch.equal(model.transformer.regressor.bias.flatten(), identity)  # the loc net trained too


def test_a_bf16_run_learns_as_its_fp32_twin(synthetic_overrides):
    twin = [*synthetic_overrides, "model=st_cnn_aff", "optim=fast", "seed=3"]
    fp32 = train(config(*twin))
    bf16 = train(config(*twin, "cpu_precision=bf16", "experiment_name=bf16"))  # its own run, beside its twin
    assert "cpu_precision" not in fp32["run_identity"] and bf16["run_identity"]["cpu_precision"] == "bf16"
    assert fp32["test_error"] < 30 and abs(bf16["test_error"] - fp32["test_error"]) <= 10  # 64 test images
    fp32_weights = load_checkpoint(Path(fp32["config"]["run_dir"]))["model"]
    bf16_weights = load_checkpoint(Path(bf16["config"]["run_dir"]))["model"]
    for name, weight in fp32_weights.items():  # the same start and batches: close, not equal
        assert torch.allclose(weight, bf16_weights[name], atol=0.05), name


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(synthetic_overrides):
    # A real divergence: the learning rate jumps x1e8 after iteration 10 (lr_gamma > 1 is allowed on purpose).
    cfg = config(*synthetic_overrides, "model=fcn", "optim.lr_milestones=[0.5]", "optim.lr_gamma=1e8")
    with pytest.raises(FloatingPointError, match=r"non-finite .* last good checkpoint \(iteration 10\)"):
        train(cfg)
    state = load_checkpoint(Path(cfg.run_dir))
    assert state["iteration"] == 10 and all(torch.isfinite(t).all() for t in state["model"].values())
    failure = read_result(Path(cfg.run_dir))
    assert failure["status"] == "failed" and "non-finite" in failure["error"] and failure["test_error"] is None
    # Rerunning retries from that checkpoint (a failed record does not block it) and fails the same way.
    with pytest.raises(FloatingPointError, match=r"iterations 11\.\.15; the last good checkpoint \(iteration 10\)"):
        train(cfg)
