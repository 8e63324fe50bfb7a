"""The transformation pictures: the drawn grid is where the transformer samples, and figures are written.

The paper-style figure from smoke-trained runs (`python -m stn.figures table1`) is tested in test_sweep.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.data.mnist import load_mnist
from stn.figures import (
    CELL_INCHES,
    draw_transformations,
    figure_png,
    figure_to_array,
    pick_figure_run,
    to_pixels,
    transformation_samples,
)
from stn.runtime import ALIGN_CORNERS


def build_model(model: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return instantiate(compose("train", overrides=["data=mnist_r", f"model={model}"]).model.net)


@pytest.fixture(scope="module")
def test_digits(mnist_raw_root, data_store):
    mnist = load_mnist(data_store, mnist_raw_root)
    return mnist.test_images[:3, None], mnist.test_labels[:3]


def test_pixel_coordinates_follow_the_corner_convention():
    coords = torch.tensor([-1.0, 0.0, 1.0])
    expected = [0.0, 13.5, 27.0] if ALIGN_CORNERS else [-0.5, 13.5, 27.5]
    assert to_pixels(coords, 28).tolist() == expected


def test_grid_shows_where_the_transformer_samples(test_digits):
    images, labels = test_digits
    model = build_model("st_fcn_aff")
    with torch.no_grad():  # a 90 degree rotation: target (x, y) samples source (-y, x)
        model.transformer.regressor.bias.copy_(torch.tensor([0.0, -1.0, 0.0, 1.0, 0.0, 0.0]))
    samples = transformation_samples(model, images, labels)
    assert samples.inputs.shape == (3, 28, 28) and samples.inputs.max() == 1.0
    # output[i, j] = input[j, 27 - i]: the input turned a quarter counter-clockwise on screen.
    rotated = torch.rot90(torch.from_numpy(samples.inputs), k=1, dims=(1, 2)).numpy()
    np.testing.assert_allclose(samples.outputs[:, 0], rotated, atol=1e-5)  # its one transformer
    # The grid's top-left target point samples the input's top-right pixel, and so on round the corners.
    grid = samples.grids[0, 0]
    last = 27.0 if ALIGN_CORNERS else 27.5
    np.testing.assert_allclose(
        [grid[0, 0], grid[0, -1], grid[-1, -1]], [[last, 27 - last], [last, last], [27 - last, last]], atol=1e-4
    )
    assert samples.predictions.shape == (3,) and samples.labels.tolist() == labels.tolist()
    assert model.training  # restored after drawing in eval mode


def test_figure_groups_transformer_and_plain_models(test_digits):
    images, labels = test_digits
    st_samples = transformation_samples(build_model("st_cnn_proj"), images, labels)
    np.testing.assert_allclose(st_samples.outputs[:, 0], st_samples.inputs, atol=1e-5)  # untrained: the identity
    plain = transformation_samples(build_model("fcn"), images[:2], labels[:2])
    assert plain.grids is None and plain.outputs is None
    figure = draw_transformations([("P: ST-CNN Proj", st_samples), ("R: FCN", plain)])
    assert len(figure.axes) == 3 * 3 + 3 * 1
    pixels = figure_to_array(figure)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3 and pixels.std() > 0
    assert figure_png(figure).startswith(b"\x89PNG\r\n\x1a\n")
    wrapped = draw_transformations([("", st_samples)], max_rows=2)  # 3 digits: blocks of 2 rows side by side
    assert len(wrapped.axes) == 2 * 2 * 3
    assert tuple(wrapped.get_size_inches()) == pytest.approx((6 * CELL_INCHES, 2.6 * CELL_INCHES))
    with pytest.raises(ValueError, match="uint8 images"):
        transformation_samples(build_model("fcn"), images.float(), labels)


def test_figure_run_is_the_columns_requested_model_else_another_transformer():
    def run(model: str, column: str, seed: int, transform: str | None, status: str = "finished") -> dict:
        config = {"model": {"net": {"transform": transform}}}
        return {"model": model, "column": column, "seed": seed, "status": status, "config": config}

    runs = [
        run("cnn", "R", 0, None),
        run("st_fcn_tps", "R", 1, "tps"),
        run("st_cnn_aff", "R", 2, "affine"),
        run("st_cnn_aff", "R", 1, "affine"),
        run("st_cnn_aff", "R", 0, "affine", status="failed"),
    ]
    assert pick_figure_run(runs, "R", "st_cnn_aff") == runs[3]
    # Not run: another ST model (by name), its lowest finished seed.
    assert pick_figure_run(runs, "R", "st_cnn_tps") == runs[3]
    assert pick_figure_run(runs, "E", "st_cnn_tps") is None
