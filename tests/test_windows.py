"""What each transformer's window holds and how large it draws it (python -m stn.results windows), on real digits."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from stn.analysis.windows import source_area, window_ink
from stn.data import load_splits
from stn.models.params import CONFIG_DIR
from stn.results.cli import main as results_main
from stn.train import train
from stn.transformers import AffineTransform, SpatialTransformer
from stn.transformers.locnets import FCLocNet


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def digit_pairs(data_store, mnist_raw_root):
    """200 real MNIST addition test pairs (each channel one RTS digit), float in [0, 1]."""
    data = config("data=mnist_addition", f"paths.data_dir={data_store}", f"paths.mnist_source={mnist_raw_root}").data
    images, _ = load_splits(data).split("test")
    return images[:200].float().div(255)


def fixed(theta: list[float]) -> SpatialTransformer:
    """A transformer that warps every image by the same affine theta (its regressor's bias)."""
    transformer = SpatialTransformer(FCLocNet(2 * 42 * 42, [8]), AffineTransform())
    with torch.no_grad():
        transformer.regressor.bias.copy_(torch.tensor(theta))
    return transformer


def readings(transformer: SpatialTransformer, x):
    inside, drawn = window_ink(transformer, x)
    return inside / x.sum((2, 3)), (drawn.sum(0) / inside.sum(0)).sqrt()


def test_each_output_sample_stands_for_its_input_area():
    identity = AffineTransform().grid(AffineTransform().identity()[None], (42, 42))
    torch.testing.assert_close(source_area(identity, (42, 42)), torch.ones(1, 42, 42))
    # a window twice the canvas, sampled at the canvas' size: each output pixel covers 2 x 2 input pixels
    wide = AffineTransform().grid(torch.tensor([[2.0, 0, 0, 0, 2.0, 0]]), (42, 42))
    torch.testing.assert_close(source_area(wide, (42, 42)), torch.full((1, 42, 42), 4.0))
    # the same window sampled at 21 x 21: 20 output steps span what 41 input steps did, twice over
    torch.testing.assert_close(
        source_area(AffineTransform().grid(torch.tensor([[2.0, 0, 0, 0, 2.0, 0]]), (21, 21)), (42, 42)),
        torch.full((1, 21, 21), (2 * 41 / 20) ** 2),
    )


def test_the_reading_of_known_windows_on_real_digit_pairs(digit_pairs):
    x = digit_pairs
    share, zoom = readings(fixed([1.0, 0, 0, 0, 1.0, 0]), x)  # the identity holds everything at its size
    torch.testing.assert_close(share, torch.ones_like(share), atol=1e-4, rtol=0)
    torch.testing.assert_close(zoom, torch.ones(2), atol=1e-4, rtol=0)
    share, zoom = readings(fixed([2.0, 0, 0, 0, 2.0, 0]), x)  # zoomed out: every digit inside, drawn at half size
    torch.testing.assert_close(share, torch.ones_like(share), atol=1e-4, rtol=0)
    torch.testing.assert_close(zoom, torch.full((2,), 0.5), atol=1e-4, rtol=0)
    share, _ = readings(fixed([1.0, 0, 3.0, 0, 1.0, 0]), x)  # a window off the canvas holds nothing
    assert share.abs().max() < 1e-6
    # the left half of the canvas (pixels 0-20 of 42; the centre line lies between 20 and 21, aligned corners) at
    # twice the width: its samples, half a pixel apart, weigh pixels 1-20 by 1 and the next one, 21, by 1/4 (the
    # first, 0, by 3/4: blank canvas here)
    share, zoom = readings(fixed([0.5, 0, -0.5, 0, 1.0, 0]), x)
    left = (x[..., :21].sum((2, 3)) + x[..., 21].sum(2) / 4) / x.sum((2, 3))
    assert x[..., 0].max() == 0 and (share - left).abs().max() < 1e-4, (share - left).abs().max()
    assert ((zoom - 2**0.5).abs() < 0.05).all(), zoom  # twice the width, the same height: sqrt(2) per axis


@pytest.mark.slow
def test_the_windows_command_reads_every_transformer_of_a_trained_addition_run(data_store, mnist_raw_root, tmp_path):
    runs = tmp_path / "runs"
    train(
        config(
            "data=mnist_addition",
            "model=2st_fcn_aff",
            "budget=smoke",
            f"paths.data_dir={data_store}",
            f"paths.mnist_source={mnist_raw_root}",
            f"paths.runs_dir={runs}",
        )
    )
    out = tmp_path / "windows.md"
    results_main(["windows", "--runs", str(runs), "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if "| Addition | 2xST-FCN Aff |" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 7  # arm, column, model, seed, error, and one cell per transformer
    for cell in cells[5:]:  # after 20 smoke steps the windows are near the identity: each digit whole, same size
        for channel in cell.split(" / "):
            share, zoom = channel.split(" (x")
            assert float(share) == pytest.approx(1.0, abs=0.1) and float(zoom.rstrip(")")) == pytest.approx(
                1.0, abs=0.1
            )
