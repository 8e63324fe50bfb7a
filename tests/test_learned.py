"""Reading trained transformers against the test digits' known distortions (python -m stn.results learned)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from stn.analysis.learned import affine_fit, read_transformer, slope
from stn.data import load_splits
from stn.data.dataset import DataConfig, read_dataset
from stn.data.distortions import similarity_theta
from stn.models.mnist import Table1Net
from stn.results.cli import main as results_main
from stn.train import train
from stn.transformers import AffineTransform, SpatialTransformer, make_transform

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
N_DIGITS = 400


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=list(overrides))


def test_the_affine_fit_is_exact_for_affine_grids_and_the_slope_needs_a_varying_truth():
    theta = torch.tensor([[1.2, -0.3, 0.1, 0.25, 0.9, -0.2], [0.5, 0.0, 0.0, 0.0, 0.5, 0.3]])
    grid = AffineTransform().grid(theta, (8, 8))
    assert torch.allclose(affine_fit(grid), theta.view(-1, 2, 3), atol=1e-6)
    identity = make_transform("tps").identity()[None]
    assert torch.allclose(affine_fit(make_transform("tps").grid(identity, (8, 8))), torch.eye(2, 3)[None], atol=1e-5)
    truth = torch.linspace(-1, 1, 50)
    assert slope(3 * truth + 1, truth) == pytest.approx(3.0)
    assert slope(torch.randn(50), torch.full((50,), 2.0)) is None  # e.g. R has no scale: no reading


class Lookup(nn.Module):
    """A 'loc net' that answers each image with a stored theta (found by the image's bytes): an oracle."""

    def __init__(self, images: Tensor, thetas: Tensor) -> None:
        super().__init__()
        self.table = {image.numpy().tobytes(): theta for image, theta in zip(images, thetas, strict=True)}
        self.out_features = thetas.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.table[(image * 255).round().to(torch.uint8).numpy().tobytes()] for image in x])


def oracle_model(images: Tensor, thetas: Tensor) -> Table1Net:
    transformer = SpatialTransformer(Lookup(images, thetas), AffineTransform())
    with torch.no_grad():  # the regressor passes the looked-up theta through
        transformer.regressor.weight.copy_(torch.eye(6))
        transformer.regressor.bias.zero_()
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(21 * 21, 10))
    return Table1Net((1, 42, 42), transformer, 2, classifier, width=0)


def test_an_oracle_that_undoes_each_rts_digit_reads_as_undoing_everything_and_the_identity_as_nothing(
    data_store, mnist_raw_root
):
    data = config("data=mnist_rts", f"paths.data_dir={data_store}", f"paths.mnist_source={mnist_raw_root}").data
    images, labels = load_splits(data).split("test")
    images, labels = images[:N_DIGITS], labels[:N_DIGITS]
    arrays, _ = read_dataset(DataConfig.from_cfg(data))
    keys = ("angle_deg", "scale", "offset_px")
    params = {key: torch.from_numpy(arrays[f"test/params/{key}"][:N_DIGITS]) for key in keys}
    # The generator's theta maps the canvas to the upright digit's frame; its inverse shows that frame upright.
    forward = similarity_theta(DataConfig.from_cfg(data).spec, params).double().view(-1, 2, 3)
    rows = torch.cat([forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N_DIGITS, 1, 3)], 1)
    undo = torch.linalg.inv(rows)[:, :2].reshape(-1, 6).float()

    oracle = read_transformer(oracle_model(images, undo), images, labels, params)
    assert oracle.rotation_undone == pytest.approx(1.0, abs=1e-3)
    assert oracle.scale_undone == pytest.approx(1.0, abs=1e-3)
    assert oracle.translation_undone == pytest.approx(1.0, abs=1e-3)
    # Zoom: canvas pixels per digit-frame pixel is 1 / scale here (the frame is 28 px, the canvas 42).
    assert oracle.mean_zoom == pytest.approx((41 / 27 / params["scale"].double()).mean().item(), rel=1e-3)

    identity = oracle_model(images, AffineTransform().identity().expand(N_DIGITS, 6))
    nothing = read_transformer(identity, images, labels, params)
    readings = (nothing.rotation_undone, nothing.scale_undone, nothing.translation_undone)
    assert readings == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    assert nothing.mean_zoom == pytest.approx(1.0)
    assert 0.0 <= nothing.test_error <= 100.0


@pytest.mark.slow
def test_the_learned_command_reads_a_trained_run_and_scores_it_as_the_trainer_did(data_store, mnist_raw_root, tmp_path):
    runs = tmp_path / "runs"
    cfg = config(
        "data=mnist_rts",
        "model=st_fcn_aff",
        "budget=smoke",
        "budget.test_subset=500",
        f"paths.data_dir={data_store}",
        f"paths.mnist_source={mnist_raw_root}",
        f"paths.runs_dir={runs}",
    )
    result = train(cfg)
    out = tmp_path / "learned.md"
    results_main(["learned", "--runs", str(runs), "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if "| RTS | ST-FCN Aff |" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "`adhoc/sgd_table1-smoke`" and cells[3] == "1"
    assert float(cells[4]) == pytest.approx(result["test_error"], abs=0.01)  # the same 500 test digits
    assert all(math.isfinite(float(cell)) for cell in cells[5:])  # RTS has rotation, scale and offset
