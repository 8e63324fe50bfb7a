"""Helpers of the Table 3 tests: a small test-only backbone (a plain, randomly initialised CNN standing in for
Inception, so that CPU trainings take seconds) and the overrides of a CUB run on the real 50-image sample."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from stn.models import backbones
from stn.models.params import CONFIG_DIR

SMALL = "small_test_cnn"


def _small_cnn(random_init: bool) -> tuple[nn.Module, int]:
    """conv 5x5/2 (16) -> ReLU -> conv 3x3/2 (64) -> ReLU: a [3, S, S] crop -> [64, S/4, S/4]. No batch norm and no
    pretrained weights, so that one process and several match exactly."""
    body = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 64, 3, 2, 1), nn.ReLU())
    return body, 64


def register_small_backbone() -> None:
    """Make backbone name SMALL buildable in this process (tests only; the trainer builds it like any other)."""
    backbones.BACKBONES[SMALL] = backbones.BackboneKind(
        _small_cnn, dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), (), check_hash=False
    )


def small_run_overrides(sample: Path, data_root: Path, runs: Path, model: str = "cub_2st") -> list[str]:
    """A CUB run on the sample, reduced to be quick on 2 CPU cores: images stored at 40px, 32px crops, 16px parts,
    the small backbone; the paper's optimiser (SGD lr 0.1, loc-net lr x1e-4) and no validation split (as Table 3)."""
    return [
        "data=cub224",
        f"model={model}",
        "optim=sgd_table3",
        "budget=table3_short",
        "logger=none",
        "device=cpu",
        "precision=fp32",
        f"paths.data_dir={data_root}",
        f"paths.runs_dir={runs}",
        f"data.cub_source={sample}",
        "data.workers=1",
        "data.image_size=40",
        "data.crop_size=32",
        f"model.net.backbone.name={SMALL}",
        "model.net.backbone.pretrained=false",
        "model.net.part_size=16",
        "budget.batch_size=8",
        "budget.eval_batch_size=16",
    ]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=overrides)
