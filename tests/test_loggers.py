"""Loggers: `none` does nothing and costs nothing; W&B offline writes a run that reads back (config, metrics,
panels, the test error), also across a resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stn.data.mnist import load_mnist
from stn.figures import images_to_inputs
from stn.loggers import NoLogger, build_logger, localisation_stats, theta_stats
from stn.results import offline_wandb_runs
from stn.run_folder import record_failure


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def test_digits(mnist_raw_root, data_store):
    """The first 6 real MNIST test digits (uint8 [6, 1, 28, 28]) and their labels."""
    mnist = load_mnist(data_store, mnist_raw_root)
    return mnist.test_images[:6, None], mnist.test_labels[:6]


def test_theta_stats_per_parameter_and_distance_from_identity():
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    theta = torch.stack([identity, identity + torch.tensor([0.0, 0.0, 0.3, 0.0, 0.0, -0.4])])
    stats = theta_stats(theta, identity)
    assert stats["theta/mean_0"] == 1.0 and stats["theta/std_0"] == 0.0
    assert stats["theta/mean_2"] == pytest.approx(0.15) and stats["theta/std_2"] == pytest.approx(0.15)
    assert stats["theta/mean_5"] == pytest.approx(-0.2) and stats["theta/std_5"] == pytest.approx(0.2)
    assert stats["theta/distance_from_identity"] == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert len(stats) == 2 * 6 + 1


def test_localisation_stats_of_an_untrained_transformer_are_the_identity(test_digits):
    images, _ = test_digits
    st_model = instantiate(compose_train(["data=mnist_r", "model=st_cnn_tps"]).model.net)
    stats = localisation_stats(st_model, images_to_inputs(images))
    assert len(stats) == 2 * 32 + 1  # 16 TPS control points, x and y
    assert stats["theta/distance_from_identity"] == pytest.approx(0.0, abs=1e-6)  # zero weights, identity bias
    assert localisation_stats(instantiate(compose_train(["data=mnist_r", "model=cnn"]).model.net), images) == {}


def test_none_logger_is_a_no_op(tmp_path, test_digits):
    cfg = compose_train(["data=mnist_r", "model=st_fcn_aff", "logger=none"])
    logger = build_logger(cfg, tmp_path)
    assert isinstance(logger, NoLogger) and logger.run_id is None
    logger.log_metrics({"train/loss": 1.0}, step=1)
    logger.log_panels(instantiate(cfg.model.net), *test_digits, step=1)
    logger.finish({"status": "finished", "test_error": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_wandb_mode_is_offline_unless_asked(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_train(["logger=wandb"]).logger.mode == "offline"
    assert compose_train(["logger=wandb", "logger.mode=online"]).logger.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_train(["logger=wandb"]).logger.mode == "online"
    with pytest.raises(ValueError, match="unknown logger.name='tensorboard'"):
        build_logger(OmegaConf.create({"logger": {"name": "tensorboard"}}), REPO_ROOT)


def test_wandb_offline_run_reads_back_also_after_a_resume(tmp_path, monkeypatch, test_digits):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(["data=mnist_r", "model=st_fcn_aff", "logger=wandb", "seed=3", "experiment_name=logtest"])
    model = instantiate(cfg.model.net)
    images, labels = test_digits
    logger = build_logger(cfg, tmp_path)
    logger.log_metrics({"train/loss": 2.25, **localisation_stats(model, images_to_inputs(images))}, step=10)
    logger.log_panels(model, images, labels, step=10)
    logger.finish({"status": "finished", "test_error": 1.25, "params": 1234, "config": {"not": "in summary"}})

    (run,) = offline_wandb_runs(tmp_path)
    assert run.run_id == logger.run_id and run.group == "logtest" and run.project == "stn"
    assert run.summary["test_error"] == 1.25 and run.summary["params"] == 1234 and "config" not in run.summary
    assert run.config["model"]["name"] == "st_fcn_aff" and run.config["seed"] == 3
    assert run.history[0]["train/loss"] == 2.25 and run.history[0]["theta/mean_0"] == 1.0
    panel = run.history[0]["panels/transformations"]
    assert panel["_type"] == "image-file" and (tmp_path / "wandb").exists()
    assert len(list(tmp_path.rglob(f"files/{panel['path']}"))) == 1

    resumed = build_logger(cfg, tmp_path, resume_id=logger.run_id)  # as the trainer does from a checkpoint
    assert resumed.run_id == logger.run_id
    resumed.log_metrics({"train/loss": 1.5}, step=20)
    resumed.finish({"status": "finished", "test_error": 0.75})
    (run,) = offline_wandb_runs(tmp_path)
    assert run.summary["test_error"] == 0.75
    assert [row["train/loss"] for row in run.history] == [2.25, 1.5]


def test_the_3d_experiment_logs_its_projections_as_a_panel(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(["data=mnist_3d", "model=vol_st_cnn", "logger=wandb", "experiment_name=logtest3d"])
    volumes = torch.randint(0, 256, (2, 60, 60, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    logger = build_logger(cfg, tmp_path)
    logger.log_panels(instantiate(cfg.model.net), volumes, torch.tensor([3, 5]), step=5)
    logger.finish({"status": "finished", "test_error": 50.0})
    (run,) = offline_wandb_runs(tmp_path)
    panel = run.history[0]["panels/transformations"]
    assert panel["_type"] == "image-file" and len(list(tmp_path.rglob(f"files/{panel['path']}"))) == 1


def test_a_crashed_job_leaves_its_wandb_run_marked_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(["data=mnist_p", "model=cnn", "logger=wandb"])
    logger = build_logger(cfg, tmp_path)
    logger.log_metrics({"train/loss": 2.0}, step=5)
    record_failure(tmp_path, cfg, RuntimeError("CUDA out of memory"))  # what stn.run_folder.run_sweep_job does
    (run,) = offline_wandb_runs(tmp_path)
    assert run.run_id == logger.run_id and run.history[0]["train/loss"] == 2.0
    assert run.summary["status"] == "failed" and run.summary["error"] == "RuntimeError: CUDA out of memory"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
