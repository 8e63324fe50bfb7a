"""Distorted MNIST on the real MNIST files: loading, parameter distributions, rendering, storage, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from omegaconf import OmegaConf
from scipy import stats
from torchvision.datasets import MNIST
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from stn.data import DataConfig, Splits, load_splits
from stn.data import distortions as distortions_module
from stn.data.dataset import (
    STREAMS,
    Redraw,
    derived_seed,
    ensure_dataset,
    read_dataset,
    stored_params,
    train_val_indices,
)
from stn.data.distortions import (
    DistortionSpec,
    digit_extent,
    generate,
    placement_range,
    render,
    sample_params,
    unit_grid,
)
from stn.data.make import ink_on_border
from stn.data.make import main as make_main
from stn.data.mnist import MNIST_FILES, MnistNotFoundError, load_mnist, raw_folder
from stn.data.store import CorruptDatasetError
from stn.transformers import ProjectiveTransform, TPSTransform

VARIANTS = ("r", "rts", "p", "e", "tc")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # shared/data/README.md
MIN_P_VALUE = 1e-3  # fixed seeds make these tests deterministic; a wrong distribution gives p << 1e-10


def data_cfg(variant: str, root: Path, source: Path | None, **changes: object) -> dict:
    """configs/data/mnist_<variant>.yaml with the paths filled in (and `changes` applied), as a plain dict."""
    cfg = OmegaConf.load(REPO_ROOT / "configs" / "data" / f"mnist_{variant}.yaml")
    cfg.root, cfg.mnist_source = str(root), None if source is None else str(source)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg, resolve=True)


def spec_of(variant: str, **changes: object) -> DistortionSpec:
    return DataConfig.from_cfg(data_cfg(variant, Path("unused"), None, **changes)).spec


@pytest.fixture(scope="module")
def data_root(data_store: Path) -> Path:
    return data_store


@pytest.fixture(scope="module")
def mnist(data_root: Path, mnist_raw_root: Path):
    return load_mnist(data_root, mnist_raw_root)


@pytest.fixture(scope="module")
def tc_cfg(data_root: Path, mnist_raw_root: Path) -> dict:
    return data_cfg("tc", data_root, mnist_raw_root)


@pytest.fixture(scope="module")
def tc_splits(tc_cfg: dict, mnist) -> Splits:
    """The full TC set (70k images), generated once for the module."""
    return load_splits(tc_cfg)


@pytest.fixture(scope="module")
def tc_stored(tc_splits: Splits, tc_cfg: dict) -> dict[str, np.ndarray]:
    return read_dataset(DataConfig.from_cfg(tc_cfg))[0]


# ---------------------------------------------------------------- real MNIST


def test_mnist_is_copied_verified_and_extracted_outside_the_read_only_source(mnist, data_root, mnist_raw_root):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10_000, 28, 28) and mnist.test_labels.dtype == torch.int64
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    raw = raw_folder(data_root)
    assert all((raw / name).is_file() and (raw / name.removesuffix(".gz")).is_file() for name in MNIST_FILES)
    assert sorted(p.name for p in raw_folder(mnist_raw_root).iterdir()) == sorted(MNIST_FILES)  # nothing extracted


def test_missing_source_names_the_folder_and_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MnistNotFoundError) as error:
        load_mnist(tmp_path / "root", empty)
    message = str(error.value)
    assert str(empty) in message and all(name in message for name in MNIST_FILES) and "MNIST_SOURCE" in message


def test_no_source_and_no_network_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there: fails at once
    with pytest.raises(MnistNotFoundError) as error:
        load_mnist(tmp_path)
    message = str(error.value)
    assert str(raw_folder(tmp_path)) in message and all(name in message for name in MNIST_FILES)
    assert "mnist_source" in message and "network" in message
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message  # the mirror that failed, with its reason


def test_source_file_with_a_wrong_md5_is_refused(tmp_path, mnist_raw_root):
    source = tmp_path / "source"
    shutil.copytree(raw_folder(mnist_raw_root), source)
    (source / MNIST_FILES[1]).chmod(0o644)
    (source / MNIST_FILES[1]).write_bytes(b"not the MNIST labels")
    with pytest.raises(MnistNotFoundError, match="md5"):
        load_mnist(tmp_path / "root", source)


# ---------------------------------------------------------------- parameters follow the recipes


@pytest.fixture(scope="module")
def test_digits(mnist) -> torch.Tensor:
    return mnist.test_images


def draw(variant: str, digits: torch.Tensor, seed: int = 0, **changes: object) -> dict[str, torch.Tensor]:
    return sample_params(spec_of(variant, **changes), digits, torch.Generator().manual_seed(seed))


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    values = values.double()
    assert values.min() >= low and values.max() <= high
    assert stats.kstest(values.numpy(), stats.uniform(low, high - low).cdf).pvalue > MIN_P_VALUE


def assert_normal(values: torch.Tensor, std: float) -> None:
    values = values.double().flatten()
    assert abs(values.mean().item()) < 5 * std / len(values) ** 0.5
    assert values.std().item() == pytest.approx(std, rel=0.02)
    assert stats.kstest(values.numpy(), stats.norm(0, std).cdf).pvalue > MIN_P_VALUE


def test_r_rotates_uniformly_about_the_centre_counter_clockwise(test_digits):
    params = draw("r", test_digits)
    assert_uniform(params["angle_deg"], -90, 90)
    assert (params["scale"] == 1).all() and (params["offset_px"] == 0).all()
    # Positive angles turn counter-clockwise on screen, like torchvision's rotate.
    digits = test_digits[:64]
    spec = spec_of("r")
    ones = torch.ones(64)
    ours = render(spec, digits, {"angle_deg": 30 * ones, "scale": ones, "offset_px": torch.zeros(64, 2)}).float()
    theirs = TF.rotate(digits[:, None], 30.0, InterpolationMode.BILINEAR).float()
    mirrored = TF.rotate(digits[:, None], -30.0, InterpolationMode.BILINEAR).float()
    assert (ours - theirs).abs().mean() < 3 < (ours - mirrored).abs().mean()


INK = {"distortion.placement": "ink"}


def test_rts_ink_reading_angles_scales_and_positions_are_uniform_and_the_ink_stays_inside(test_digits):
    spec = spec_of("rts", **INK)
    params = draw("rts", test_digits, **INK)
    assert_uniform(params["angle_deg"], -45, 45)
    assert_uniform(params["scale"], 0.7, 1.2)
    first, last = placement_range(spec, *digit_extent(spec, test_digits, params["angle_deg"], params["scale"]))
    position = (params["offset_px"].double() - first) / (last - first)
    for axis in range(2):
        assert_uniform(position[:, axis], 0, 1)
    # Inside: the same digits rendered into a canvas 10 px larger on every side have no ink in that margin.
    margin, some = 10, slice(0, 4000)
    digits, params = test_digits[some], {key: value[some] for key, value in params.items()}
    wide = DistortionSpec.from_config(spec.canvas + 2 * margin, {"transform": "similarity", "placement": "ink"})
    images = render(wide, digits, params)
    inner = images[..., margin:-margin, margin:-margin]
    assert images.sum() == inner.sum() and images.sum() > 0
    assert (inner.int() - render(spec, digits, params).int()).abs().max() <= 1
    # Spread over the canvas: digits touch every border, and centre on the canvas centre on average.
    ink = inner[:, 0] > 0
    cols, rows = ink.any(1).float(), ink.any(2).float()
    index = torch.arange(spec.canvas).float()
    assert cols.argmax(1).min() == 0 and rows.argmax(1).min() == 0
    assert (spec.canvas - 1 - cols.flip(1).argmax(1)).max() == spec.canvas - 1
    centre_x = (ink.float() * index).sum((1, 2)) / ink.sum((1, 2))
    assert abs(centre_x.mean().item() - spec.canvas_half) < 0.5


@pytest.mark.parametrize("frame_px", [28, 32])
def test_rts_frame_reading_places_the_scaled_frame_uniformly_inside_and_cuts_what_turns_out(test_digits, frame_px):
    changes = {"distortion.placement": "frame", "distortion.frame_px": frame_px}
    spec = spec_of("rts", **changes)
    params = draw("rts", test_digits, **changes)
    assert_uniform(params["angle_deg"], -45, 45)
    assert_uniform(params["scale"], 0.7, 1.2)
    # Every pixel centre of the scaled, unturned frame lies inside the canvas, and the offset is uniform over all
    # such positions (per axis, given the scale).
    half = params["scale"].double()[:, None] * (frame_px - 1) / 2
    offset = params["offset_px"].double()
    assert ((offset.abs() + half) <= spec.canvas_half + 1e-4).all()
    room = spec.canvas_half - half
    for axis in range(2):
        assert_uniform((offset[:, axis] + room[:, 0]) / (2 * room[:, 0]), 0, 1)
    # The digit turns inside its frame: nothing is drawn outside the scaled frame.
    some = slice(0, 2000)
    digits, part = test_digits[some], {key: value[some] for key, value in params.items()}
    images = render(spec, digits, part)[:, 0].double()
    pixel = torch.arange(spec.canvas).double() - spec.canvas_half
    frame_half = part["scale"].double()[:, None] * frame_px / 2
    outside_x = (pixel - offset[some, :1]).abs() > frame_half
    outside_y = (pixel - offset[some, 1:]).abs() > frame_half
    assert images[outside_y[:, :, None] | outside_x[:, None, :]].sum() == 0 and images.sum() > 0
    # The same digits and parameters unclipped: the frame cuts the turned corners of a few digits, fewer in the
    # demo's padded 32 px frame than in MNIST's own 28 px one (measured: 0.1% and 2.0% of these 2000 digits, each
    # losing a few corner pixels: 1e-4 of the ink in all).
    unclipped = render(spec_of("rts", **INK), digits, part)[:, 0].double()
    cut = ((unclipped - images).sum((1, 2)) > 0).float().mean().item()
    assert (unclipped >= images).all()
    assert cut < 0.005 if frame_px == 32 else 0.005 < cut < 0.05


def test_rts_frame_reading_spreads_digits_less_than_the_ink_reading(test_digits):
    def centre_spread(**changes: object) -> float:
        images = render(spec_of("rts", **changes), test_digits[:3000], draw("rts", test_digits[:3000], **changes))
        ink = images[:, 0].double()
        index = torch.arange(ink.shape[-1]).double()
        return ((ink * index).sum((1, 2)) / ink.sum((1, 2))).std().item()  # x of each digit's ink centroid

    ink, frame = centre_spread(**INK), centre_spread(**{"distortion.placement": "frame"})
    assert 7.0 < ink < 8.2 and 4.2 < frame < 5.0  # measured 7.6 and 4.6 px


def test_p_diagonal_reading_moves_each_corner_along_its_diagonal(test_digits):
    params = draw("p", test_digits, **{"distortion.corner_move": "diagonal"})
    offsets = params["corner_offsets_px"].double()  # [N, 4, 2], corners TL, TR, BL, BR
    assert torch.allclose(offsets[..., 0].abs(), offsets[..., 1].abs())  # along a diagonal: |dx| = |dy|
    outward = torch.tensor([[-1.0, -1], [1, -1], [-1, 1], [1, 1]])
    along = (offsets * outward).sum(-1) / 2**0.5  # signed length, outward positive
    assert torch.allclose(along[..., None] * outward / 2**0.5, offsets, atol=1e-6)
    assert_normal(along, 5.0)  # 5 px along the diagonal ...
    assert_normal(offsets, 5.0 / 2**0.5)  # ... is 3.54 px per axis
    per_axis = draw("p", test_digits, **{"distortion.corner_move": "per_axis"})["corner_offsets_px"].double()
    assert not torch.allclose(per_axis[..., 0].abs(), per_axis[..., 1].abs())  # the per-axis reading moves freely


def test_p_any_direction_reading_moves_each_corner_n5_px_in_a_uniform_direction(test_digits):
    offsets = draw("p", test_digits, **{"distortion.corner_move": "any_direction"})["corner_offsets_px"].double()
    length = offsets.norm(dim=-1).flatten()
    assert stats.kstest(length.numpy(), stats.halfnorm(0, 5.0).cdf).pvalue > MIN_P_VALUE  # |N(0, 5)| px
    direction = torch.atan2(offsets[..., 1], offsets[..., 0]).flatten()
    assert_uniform(direction, -torch.pi, torch.pi)
    assert offsets.std().item() == pytest.approx(5.0 / 2**0.5, rel=0.02)  # 3.54 px per axis, as the diagonal


@pytest.mark.parametrize(
    ("variant", "changes"),
    [
        ("rts", {"distortion.placement": "ink"}),
        ("rts", {"distortion.placement": "frame", "distortion.frame_px": 28}),
        ("rts", {"distortion.placement": "frame", "distortion.frame_px": 32}),
        ("p", {"distortion.corner_move": "per_axis"}),
        ("p", {"distortion.corner_move": "diagonal"}),
        ("p", {"distortion.corner_move": "any_direction"}),
        ("e", {"distortion.elastic_direction": "forward", "distortion.elastic_grid": "digit"}),
    ],
)
def test_every_reading_composes_from_the_config_renders_and_has_its_own_stored_set(variant, changes, mnist):
    cfg = DataConfig.from_cfg(data_cfg(variant, Path("root"), None, **changes))
    images, _ = generate(cfg.spec, mnist.test_images[:64], torch.Generator().manual_seed(0))
    assert images.shape == (64, 1, cfg.spec.canvas, cfg.spec.canvas) and images.float().mean() > 10
    others = {("rts", "ink"), ("rts", "frame28"), ("rts", "frame32"), ("p", "per_axis"), ("p", "diagonal")}
    others |= {("p", "any_direction"), ("e", "")}
    paths = set()
    for other_variant, reading in others:
        if other_variant != variant:
            continue
        if variant == "p":
            other = {"distortion.corner_move": reading}
        elif variant == "rts":
            other = {"distortion.placement": reading[:5], "distortion.frame_px": int(reading[5:] or 28)}
        else:
            other = changes
        paths.add(DataConfig.from_cfg(data_cfg(variant, Path("root"), None, **other)).path)
    default = DataConfig.from_cfg(data_cfg(variant, Path("root"), None)).path
    assert cfg.path in paths | {default} and len(paths | {default}) == {"p": 3, "rts": 3, "e": 2}[variant]


PER_AXIS = {"distortion.corner_move": "per_axis"}


def test_p_corner_offsets_follow_the_recipe_and_define_the_homography(test_digits):
    spec = spec_of("p", **PER_AXIS)
    params = draw("p", test_digits, **PER_AXIS)
    assert_uniform(params["scale"], 0.75, 1.0)
    assert_normal(params["corner_offsets_px"], 5.0)
    # The homography maps each output corner pixel to its displaced point of the scaled digit, and never folds
    # (convex_only): its denominator stays above the sampler's floor over the whole canvas.
    theta = distortions_module.projective_theta(spec, params)
    assert (distortions_module.homography_denominators(theta) > ProjectiveTransform().min_denominator).all()
    unfolded = sample_params(
        DistortionSpec.from_config(28, {"transform": "projective", "corner_std_px": 5.0}),
        test_digits,
        torch.Generator().manual_seed(0),
    )
    assert (distortions_module.homography_denominators(distortions_module.projective_theta(spec, unfolded)) < 0).any()
    grid = ProjectiveTransform().grid(theta, (28, 28)).double()  # normalised source (x, y)
    corners = grid[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # top-left, top-right, bottom-left, bottom-right
    scale = params["scale"].double()[:, None, None]
    expected = (torch.tensor([[-1.0, -1], [1, -1], [-1, 1], [1, 1]]) * 13.5 + params["corner_offsets_px"]) / scale
    inside = expected.abs() < 13.5 * ProjectiveTransform().clamp  # farther source points are clamped (all zero)
    assert torch.allclose((corners * 13.5)[inside], expected[inside], atol=1e-3) and inside.float().mean() > 0.99


def test_e_control_offsets_follow_the_recipe_and_move_the_tps_control_points(test_digits):
    spec = spec_of("e")
    params = draw("e", test_digits)
    assert_uniform(params["scale"], 0.75, 1.0)
    assert params["control_offsets_px"].shape[1:] == (16, 2)
    assert_normal(params["control_offsets_px"], 1.5)
    # With 4 control points per axis over 28 pixels they sit on pixel centres 0, 9, 18, 27.
    theta = distortions_module.tps_theta(spec, params)
    grid = TPSTransform(4).grid(theta, (28, 28)).double()
    at_controls = grid[:, [0, 9, 18, 27]][:, :, [0, 9, 18, 27]].reshape(-1, 16, 2)
    regular = TPSTransform(4).control_points * 13.5
    expected = (regular + params["control_offsets_px"]) / params["scale"].double()[:, None, None]
    assert torch.allclose(at_controls * 13.5, expected, atol=1e-3)


def test_e_readings_pass_their_tps_through_the_moved_control_points(test_digits):
    n = 64
    digits = test_digits[:n]
    offsets = torch.randint(-2, 3, (n, 16, 2), generator=torch.Generator().manual_seed(0)).float()
    params = {"scale": torch.ones(n), "control_offsets_px": offsets}
    grid = (unit_grid(4).float() * 13.5).expand(n, -1, -1)  # on pixel centres 0, 9, 18, 27 (canvas 28)
    for direction in ("backward", "forward"):
        spec = spec_of("e", **{"distortion.elastic_direction": direction})
        output, source = distortions_module.elastic_points(spec, params)
        fitted = distortions_module.fitted_tps_grid(output, source, 28).double()  # [n, 28, 28, 2]
        # forward: the digit's point g_k is drawn at g_k + delta_k; backward: output g_k shows g_k + delta_k
        drawn_at, shows = (grid, grid + offsets) if direction == "backward" else (grid + offsets, grid)
        pixel = drawn_at + 13.5
        inside = ((pixel >= 0) & (pixel <= 27)).all(-1)
        rows, cols = pixel[..., 1].long().clamp(0, 27), pixel[..., 0].long().clamp(0, 27)
        at_points = fitted[torch.arange(n)[:, None], rows, cols] * 13.5
        assert torch.allclose(at_points[inside], shows.double()[inside], atol=1e-3) and inside.float().mean() > 0.5
        if direction == "backward":  # the regular grid: the same spline as TPSTransform's fixed control grid
            regular = TPSTransform(4).grid(distortions_module.tps_theta(spec, params), (28, 28)).double()
            assert torch.allclose(fitted, regular, atol=1e-4)
    # Over the scaled digit's frame, offsets in the digit's own pixels: both shrink with the scale.
    scaled = {"scale": torch.full((n,), 0.8), "control_offsets_px": offsets}
    changes = {"distortion.elastic_grid": "digit", "distortion.elastic_offsets": "digit"}
    output, source = distortions_module.elastic_points(spec_of("e", **changes), scaled)
    assert torch.allclose(output * 13.5, 0.8 * grid.double())
    assert torch.allclose(source * 13.5, (0.8 * grid + 0.8 * offsets).double() / 0.8, atol=1e-5)
    images = render(spec_of("e", **changes), digits, scaled)
    assert images.shape == (n, 1, 28, 28) and images.float().mean() > 10


def test_ink_on_border_counts_the_digits_the_canvas_may_cut(test_digits):
    digits = test_digits[:2000, None].numpy()
    assert 0.005 < ink_on_border(digits) < 0.05  # plain MNIST: a few digits touch their frame's edge
    spec = spec_of("p")
    params = sample_params(spec, test_digits[:2000], torch.Generator().manual_seed(0))
    warped = render(spec, test_digits[:2000], params).numpy()
    assert ink_on_border(warped) > 5 * ink_on_border(digits)  # 5 px corners often push ink past the canvas
    frame = np.zeros_like(digits[:4])
    frame[:2, 0, 0, 5] = 1  # two images touch the top row
    assert ink_on_border(frame) == 0.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendering_is_seeded_per_sample_and_independent_of_batching(variant, mnist):
    spec, digits, pool = spec_of(variant), mnist.test_images[:300], mnist.train_images[:1000]
    images, params = generate(spec, digits, torch.Generator().manual_seed(7), pool)
    again, params_again = generate(spec, digits, torch.Generator().manual_seed(7), pool)
    other, _ = generate(spec, digits, torch.Generator().manual_seed(8), pool)
    assert images.shape == (300, 1, spec.canvas, spec.canvas) and images.dtype == torch.uint8
    assert torch.equal(images, again) and all(torch.equal(params[k], params_again[k]) for k in params)
    assert (images != other).any(1).flatten(1).any(1).float().mean() > 0.95  # nearly every image differs
    for index in (0, 17, 299):  # one image at a time reproduces the batched rendering bit for bit
        one = {key: value[index : index + 1] for key, value in params.items()}
        assert torch.equal(render(spec, digits[index : index + 1], one, pool), images[index : index + 1])


def test_tc_paste_gives_exactly_the_warp_images_and_only_for_whole_pixel_translations(mnist):
    spec, digits = spec_of("tc"), mnist.test_images[:500]
    assert spec.whole_pixel_translation
    params = sample_params(spec, digits, torch.Generator().manual_seed(3), pool_size=1000)
    pasted = distortions_module.paste_digits(spec, digits, params)
    assert torch.equal(pasted.float(), distortions_module.warp_digits(spec, digits, params))
    assert torch.equal(pasted.sum((1, 2, 3)), digits.sum((1, 2)))  # every digit whole inside the canvas
    distortion = data_cfg("tc", Path("unused"), None)["distortion"]
    for change in ({"angle_deg": [-1, 1]}, {"scale": [0.9, 1.0]}, {"integer_offsets": False}, {"placement": "ink"}):
        other = DistortionSpec.from_config(spec.canvas, {**distortion, **change})
        assert not other.whole_pixel_translation  # a real warp: rendered by warp_digits
        with pytest.raises(ValueError, match="whole-pixel translation"):
            distortions_module.paste_digits(other, digits, params)


# ---------------------------------------------------------------- the stored TC set


def test_tc_splits_hold_the_mnist_digits_and_labels(tc_splits, tc_stored, mnist):
    assert tc_splits.train_x.shape == (50_000, 1, 60, 60) and tc_splits.train_x.dtype == torch.uint8
    assert tc_splits.val_x.shape == (10_000, 1, 60, 60) and tc_splits.test_x.shape == (10_000, 1, 60, 60)
    assert tc_splits.train_y.dtype == torch.int64 and tc_splits.num_classes == 10 and tc_splits.redraw is None
    # val_split=last: train is MNIST train[:50000], val the last 10k, test the MNIST test set, in order.
    assert torch.equal(tc_splits.train_y, mnist.train_labels[:50_000])
    assert torch.equal(tc_splits.val_y, mnist.train_labels[50_000:])
    assert torch.equal(tc_splits.test_y, mnist.test_labels)
    assert np.array_equal(tc_stored["val/source_index"], np.arange(50_000, 60_000))
    meta = tc_splits.meta
    assert (
        meta["variant"] == "TC"
        and meta["seed"] == 0
        and meta["sizes"] == {"train": 50_000, "val": 10_000, "test": 10_000}
    )
    assert meta["generation"]["distortion"]["clutter_count"] == 6 and len(meta["sha256"]) == 64
    assert Path(meta["path"]).name.startswith("mnist_tc_seed0_") and meta["mnist_md5"] == dict(MNIST.resources)


def test_tc_digits_and_clutter_follow_the_recipe(tc_stored, mnist):
    params = stored_params(tc_stored, "train")
    # The 28x28 frame is inside the 60x60 canvas, at whole-pixel positions uniform over 0..32.
    top_left = params["offset_px"].double() + 29.5 - 13.5
    assert torch.equal(top_left, top_left.round()) and top_left.min() == 0 and top_left.max() == 32
    for axis in range(2):
        counts = torch.bincount(top_left[:, axis].long(), minlength=33).numpy()
        assert stats.chisquare(counts).pvalue > MIN_P_VALUE
    # Exactly six 6x6 patches each, from OTHER training digits, cropped and pasted at uniform positions.
    source = params["clutter_source"]
    assert source.shape == (50_000, 6) and (source != torch.arange(50_000)[:, None]).all()
    assert source.min() == 0 and source.max() == 49_999
    assert params["clutter_crop_xy"].min() == 0 and params["clutter_crop_xy"].max() == 22
    assert params["clutter_paste_xy"].min() == 0 and params["clutter_paste_xy"].max() == 54
    # A plain per-image reference (digit pasted, patches added, clamped) reproduces the stored images exactly.
    pool = mnist.train_images[:50_000].numpy().astype(np.int32)
    images = tc_stored["train/images"]
    for i in range(0, 50_000, 2_500):
        canvas = np.zeros((60, 60), np.int32)
        x, y = top_left[i].long().tolist()
        canvas[y : y + 28, x : x + 28] += pool[i]
        for (cx, cy), (px, py), j in zip(
            params["clutter_crop_xy"][i].tolist(),
            params["clutter_paste_xy"][i].tolist(),
            source[i].tolist(),
            strict=True,
        ):
            canvas[py : py + 6, px : px + 6] += pool[j, cy : cy + 6, cx : cx + 6]
        assert np.array_equal(np.minimum(canvas, 255), images[i, 0])


@pytest.mark.parametrize("split", ["train", "test"])
def test_stored_images_rerender_bit_exactly_from_their_parameters(split, tc_stored, tc_cfg, mnist):
    spec = DataConfig.from_cfg(tc_cfg).spec
    params = stored_params(tc_stored, split)
    chosen = torch.randperm(len(params["scale"]), generator=torch.Generator().manual_seed(1))[:500]
    source = mnist.train_images if split == "train" else mnist.test_images
    digits = source[torch.from_numpy(tc_stored[f"{split}/source_index"])[chosen]]
    again = render(spec, digits, {key: value[chosen] for key, value in params.items()}, mnist.train_images[:50_000])
    assert torch.equal(again, torch.from_numpy(tc_stored[f"{split}/images"])[chosen])


def test_regenerating_an_existing_file_is_a_no_op(tc_splits, tc_cfg, mnist_raw_root):
    path = Path(tc_splits.meta["path"])
    before = path.stat()
    assert ensure_dataset(DataConfig.from_cfg(tc_cfg), progress=False) == DataConfig.from_cfg(tc_cfg).path
    again = load_splits(tc_cfg)
    # The CLI composes the same configs through Hydra and finds the same file.
    make_main(
        ["--variants", "TC", "--no-figures", f"paths.data_dir={tc_cfg['root']}", f"paths.mnist_source={mnist_raw_root}"]
    )
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert again.meta["sha256"] == tc_splits.meta["sha256"] and torch.equal(again.test_x, tc_splits.test_x)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_changed_generation_params_or_seed_give_another_file(tc_cfg):
    path = DataConfig.from_cfg(tc_cfg).path
    assert DataConfig.from_cfg({**tc_cfg, "seed": 1}).path.name.startswith("mnist_tc_seed1_")
    changed = {**tc_cfg, "distortion": {**tc_cfg["distortion"], "clutter_count": 5}}
    assert DataConfig.from_cfg(changed).path not in (path, DataConfig.from_cfg({**tc_cfg, "seed": 1}).path)
    assert DataConfig.from_cfg({**tc_cfg, "redraw_train": True}).path == path  # training options do not count


def test_corrupted_file_gives_a_clear_error(tc_splits, tc_cfg, tmp_path):
    cfg = {**tc_cfg, "root": str(tmp_path)}
    path = DataConfig.from_cfg(cfg).path
    path.parent.mkdir(parents=True)
    shutil.copyfile(tc_splits.meta["path"], path)
    with open(path, "r+b") as handle:  # flip bytes in the middle of the image data
        handle.seek(path.stat().st_size // 2)
        block = handle.read(64)
        handle.seek(-64, os.SEEK_CUR)
        handle.write(bytes(255 - b for b in block))
    with pytest.raises(CorruptDatasetError, match="does not match its sha256") as error:
        load_splits(cfg)
    assert str(path) in str(error.value) and "Delete it" in str(error.value)
    path.write_bytes(path.read_bytes()[:4096])  # truncated
    with pytest.raises(CorruptDatasetError, match="unreadable"):
        load_splits(cfg)


def test_interrupted_generation_leaves_no_file_that_loads(tmp_path, mnist_raw_root, monkeypatch):
    cfg = data_cfg("r", tmp_path, mnist_raw_root)
    path = DataConfig.from_cfg(cfg).path
    calls = []

    def render_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(distortions_module, "render", render_then_stop)
    with pytest.raises(KeyboardInterrupt):
        load_splits(cfg)
    assert not path.exists()
    monkeypatch.undo()

    def stop_at_rename(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("stn.data.store.os.replace", stop_at_rename)  # the whole file written, not yet renamed
    with pytest.raises(KeyboardInterrupt):
        load_splits(cfg)
    assert not path.exists() and not any(path.parent.iterdir())
    monkeypatch.undo()
    # A file under the final name without its checksum (never written by us) does not load either.
    with h5py.File(path, "w") as file:
        file.create_dataset("train/images", data=np.zeros((1, 1, 28, 28), np.uint8))
    with pytest.raises(CorruptDatasetError, match="no sha256"):
        load_splits(cfg)


# ---------------------------------------------------------------- redraw


def test_redraw_gives_fresh_seeded_distortions_of_the_same_digits(tc_splits, tc_cfg, mnist):
    redrawing = load_splits({**tc_cfg, "redraw_train": True})
    assert torch.equal(redrawing.train_x, tc_splits.train_x)  # same stored file
    fresh = redrawing.redraw(1, torch.device("cpu"))
    assert fresh.shape == tc_splits.train_x.shape and fresh.dtype == torch.uint8
    assert (fresh != tc_splits.train_x).flatten(1).any(1).float().mean() > 0.99
    # Same digit order: every image still holds its own digit, copied exactly (whole-pixel TC placement).
    digits = mnist.train_images[:50_000]
    for i in range(0, 50_000, 5_000):
        windows = fresh[i, 0].unfold(0, 28, 1).unfold(1, 28, 1)  # [33, 33, 28, 28]
        assert (windows >= digits[i]).flatten(2).all(2).any()
        assert not (windows >= digits[i + 1]).flatten(2).all(2).any() or torch.equal(digits[i], digits[i + 1])
    # Seeded by (data seed, epoch seed): the same epoch gives the same images, another epoch others.
    redraw = Redraw(DataConfig.from_cfg(tc_cfg), digits[:2000])
    assert torch.equal(redraw(3, "cpu"), redraw(3, "cpu")) and not torch.equal(redraw(3, "cpu"), redraw(4, "cpu"))
    generator = torch.Generator().manual_seed(derived_seed(0, STREAMS["redraw"], 3))
    expected, expected_params = generate(redraw.spec, digits[:2000], generator, digits[:2000], torch.arange(2000))
    assert torch.equal(redraw(3, "cpu"), expected)
    # draw() also gives the parameters the images were drawn with (the loc-net probe's regression targets).
    images, params = redraw.draw(3, "cpu")
    assert torch.equal(images, expected) and params.keys() == expected_params.keys()
    assert all(torch.equal(params[key], expected_params[key]) for key in params)


def test_random_validation_split_is_a_seeded_partition(tmp_path):
    cfg = DataConfig.from_cfg(data_cfg("r", tmp_path, None, val_split="random"))
    train, val = train_val_indices(cfg)
    assert (
        len(train) == 50_000
        and len(val) == 10_000
        and torch.equal(torch.cat([train, val]).sort().values, torch.arange(60_000))
    )
    assert torch.equal(train, train.sort().values) and val.max() - val.min() > 50_000  # spread, in MNIST order
    assert torch.equal(val, train_val_indices(cfg)[1])
    assert not torch.equal(
        val, train_val_indices(DataConfig.from_cfg(data_cfg("r", tmp_path, None, val_split="random", seed=1)))[1]
    )


# ---------------------------------------------------------------- config errors


def test_bad_configs_are_refused_with_the_reason(tmp_path, test_digits):
    good = data_cfg("rts", tmp_path, None)
    with pytest.raises(ValueError, match="do not apply"):
        DataConfig.from_cfg({**good, "distortion": {**good["distortion"], "corner_std_px": 5.0}})
    with pytest.raises(ValueError, match="input_shape"):
        DataConfig.from_cfg({**good, "input_shape": [1, 42, 40]})
    with pytest.raises(ValueError, match="val_size"):
        DataConfig.from_cfg({**good, "val_size": 60_000})
    too_small = {**good, "input_shape": [1, 30, 30]}  # a 1.2x digit at 45 degrees does not fit in 30 px
    with pytest.raises(ValueError, match="enlarge input_shape"):
        sample_params(DataConfig.from_cfg(too_small).spec, test_digits, torch.Generator())
