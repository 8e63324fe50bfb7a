"""CUB-200-2011 (Table 3) on the real sample: the full official lists, missing images, the resized stores, and the
on-device crop + flip augmentation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from stn.data import cub
from stn.data.store import CorruptDatasetError, read_verified
from stn.models.params import CONFIG_DIR

SAMPLE_CLASSES = 5  # shared/data/README.md: classes 001-005, 5 train + 5 test images each


@pytest.fixture(scope="module")
def sample(cub_sample) -> Path:
    return cub_sample


@pytest.fixture(scope="module")
def metadata(sample) -> cub.CubMetadata:
    return cub.read_metadata(sample)


def data_cfg(name: str, root: Path, source: Path | None, **changes: object) -> dict:
    cfg = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    cfg.root, cfg.cub_source, cfg.workers = str(root), None if source is None else str(source), 1
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg, resolve=True)


def test_the_official_lists_are_read_in_full(metadata):
    assert len(metadata.paths) == 11788 and metadata.image_ids.tolist() == list(range(1, 11789))
    assert int(metadata.is_train.sum()) == 5994 and int((~metadata.is_train).sum()) == 5794
    assert len(metadata.class_names) == 200 and metadata.class_names[0] == "001.Black_footed_Albatross"
    assert metadata.labels.min() == 0 and metadata.labels.max() == 199  # 0-based
    assert np.array_equal(np.bincount(metadata.labels, minlength=200) > 0, np.ones(200, bool))
    assert metadata.paths[0] == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert metadata.labels[0] == 0 and not metadata.is_train[0]  # "1 0" in train_test_split.txt


def test_inconsistent_lists_are_refused(sample, tmp_path):
    folder = tmp_path / "CUB_200_2011"
    folder.mkdir()
    for name in cub.METADATA_FILES:
        shutil.copyfile(sample / name, folder / name)
    with open(folder / "train_test_split.txt", "a") as handle:
        handle.write("11789 1\n")
    with pytest.raises(ValueError, match="do not list the same image ids"):
        cub.read_metadata(folder)


def test_missing_images_are_counted_and_reported(metadata, tmp_path, caplog):
    present = metadata.present()
    assert int(present.sum()) == 50 and int((present & metadata.is_train).sum()) == 25
    assert set(metadata.labels[present].tolist()) == set(range(SAMPLE_CLASSES))
    cfg = cub.CubConfig.from_cfg(data_cfg("cub224", tmp_path, metadata.folder))
    with caplog.at_level(logging.WARNING, logger="stn.data.cub"):
        assert np.array_equal(cub.usable(cfg, metadata), present)
    assert "11738 of the 11788 images" in caplog.text and "train 5969, test 5769" in caplog.text
    strict = cub.CubConfig.from_cfg(data_cfg("cub224", tmp_path, metadata.folder, allow_missing=False))
    with pytest.raises(cub.CubNotFoundError, match="allow_missing=true"):
        cub.usable(strict, metadata)


def test_nothing_usable_is_a_clear_error(sample, tmp_path):
    folder = tmp_path / "CUB_200_2011"
    (folder / "images").mkdir(parents=True)
    for name in cub.METADATA_FILES:
        shutil.copyfile(sample / name, folder / name)
    cfg = cub.CubConfig.from_cfg(data_cfg("cub224", tmp_path / "root", folder))
    with pytest.raises(cub.CubNotFoundError, match="nothing usable is left"):
        cub.load_splits(data_cfg("cub224", tmp_path / "root", folder), progress=False)
    assert not cfg.path.exists()


def test_a_source_without_cub_names_the_folder_and_the_option(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(cub.CubNotFoundError) as error:
        cub.load_splits(data_cfg("cub224", tmp_path / "root", tmp_path / "empty"), progress=False)
    message = str(error.value)
    assert str(tmp_path / "empty") in message and "CUB_200_2011.tgz" in message and "CUB_SOURCE" in message


# ---------------------------------------------------------------- the resized stores


def resized(sample: Path, path: str, size: int) -> np.ndarray:
    """torchvision's Resize(size) of a sample image: the whole image, uint8 [3, H, W]."""
    with Image.open(sample / "images" / path) as image:
        return np.array(TF.resize(image.convert("RGB"), size, InterpolationMode.BILINEAR)).transpose(2, 0, 1)


def test_resizing_matches_torchvisions_resize_and_keeps_the_whole_image(sample, metadata):
    for path in [metadata.paths[i] for i in np.flatnonzero(metadata.present())[:6]]:
        with Image.open(sample / "images" / path) as image:
            ours = cub.resize_shorter(image.convert("RGB"), 256, "bilinear")
        assert np.array_equal(ours, resized(sample, path, 256)), path
    portrait = np.arange(3 * 10 * 6, dtype=np.uint8).reshape(3, 10, 6)
    canvas, cut = cub.to_canvas(portrait, max_side=12)
    assert canvas.shape == (3, 6, 13) and not cut  # landscape: the portrait image transposed, then padded
    assert np.array_equal(canvas[:, :, :10], portrait.transpose(0, 2, 1)) and not canvas[:, 1:, 10:-1].any()
    assert canvas[:, 0, -1].tolist() == [0, 10, 1]  # longer side 10 (two bytes), transposed
    long, transposed = cub.canvas_layout(torch.from_numpy(canvas[None]))
    assert long.tolist() == [10] and transposed.tolist() == [True]
    canvas, cut = cub.to_canvas(portrait, max_side=8)  # too elongated: the centre 8 of the 10 rows are kept
    assert cut and np.array_equal(canvas[:, :, :8], portrait[:, 1:9].transpose(0, 2, 1))


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory) -> dict[str, cub.CubSplits]:
    root = tmp_path_factory.mktemp("cub")
    return {name: cub.load_splits(data_cfg(name, root, sample), progress=False) for name in ("cub224", "cub448")}


@pytest.mark.parametrize(("name", "size", "crop"), [("cub224", 256, 224), ("cub448", 512, 448)])
def test_the_stored_sets_hold_the_sample(built, metadata, name, size, crop):
    splits = built[name]
    canvas = (3, size, 2 * size + 1)  # max_aspect 2: landscape canvas + the layout column
    assert splits.train_x.shape == (25, *canvas) and splits.test_x.shape == (25, *canvas)
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64 and len(splits.val_x) == 0
    assert splits.crop_size == crop and splits.num_classes == 200 and splits.flip
    assert splits.meta["missing"] == {"train": 5969, "test": 5769}  # flagged in the meta (and a warning on load)
    assert splits.train_y.tolist() == sorted(list(range(SAMPLE_CLASSES)) * 5) == splits.test_y.tolist()
    arrays, attrs = read_verified(splits.meta["path"])  # the checksum verifies on reload
    assert attrs["sha256"] == splits.meta["sha256"]
    assert attrs["source"]["missing"] == {"train": 5969, "test": 5769} and attrs["sizes"]["test"] == 25
    assert attrs["longer_side_cut"] == 0 == splits.meta["longer_side_cut"]  # the sample's aspect ratios are <= 1.85
    index = {int(i): k for k, i in enumerate(metadata.image_ids)}
    for part, train in (("train", True), ("test", False)):
        ids = arrays[f"{part}/image_id"]
        assert all(metadata.is_train[index[int(i)]] == train for i in ids)
        assert np.array_equal(arrays[f"{part}/labels"], metadata.labels[[index[int(i)] for i in ids]])
    first = metadata.folder / "images" / metadata.paths[index[int(arrays["test/image_id"][0])]]
    with Image.open(first) as image:
        assert arrays["test/original_size"][0].tolist() == list(image.size)
        expected, _ = cub.to_canvas(cub.resize_shorter(image.convert("RGB"), size, "bilinear"), 2 * size)
    assert np.array_equal(splits.test_x[0].numpy(), expected)


def test_a_rebuild_is_a_no_op_and_damage_is_detected(built, sample, monkeypatch, tmp_path):
    path = Path(built["cub224"].meta["path"])
    stamp = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(cub, "build_dataset", no_build)
    cfg = data_cfg("cub224", path.parents[1], sample)
    assert torch.equal(cub.load_splits(cfg, progress=False).test_x, built["cub224"].test_x)
    assert path.stat().st_mtime_ns == stamp
    damaged = tmp_path / path.name
    shutil.copyfile(path, damaged)
    with h5py.File(damaged, "r+") as file:
        file["train/labels"][0] = 7
    with pytest.raises(CorruptDatasetError):
        read_verified(damaged)


def test_a_validation_split_is_drawn_from_train(sample, tmp_path):
    splits = cub.load_splits(data_cfg("cub224", tmp_path, sample, val_size=5), progress=False)
    assert len(splits.val_x) == 5 and len(splits.train_x) == 20 and len(splits.test_x) == 25


def test_configs_compose_with_hydra(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        for name, size, crop in [("cub224", 256, 224), ("cub448", 512, 448)]:
            data = compose(config_name="train", overrides=[f"data={name}", f"paths.data_dir={tmp_path}"]).data
            cfg = cub.CubConfig.from_cfg(data)
            assert (cfg.image_size, cfg.crop_size, cfg.num_classes, cfg.flip) == (size, crop, 200, True)
            assert list(data.input_shape) == [3, crop, crop] and cfg.root == tmp_path
            assert cfg.download_urls[0].startswith("https://data.caltech.edu/")


# ---------------------------------------------------------------- on-device augmentation


def test_random_crop_and_flip_per_sample():
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 64, 80), (3, 80, 64)] * 12  # landscape and portrait, stored on one landscape canvas
    images = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for shape in shapes]
    batch = torch.stack([torch.from_numpy(cub.to_canvas(image.numpy(), 128)[0]) for image in images])
    crops, params = cub.whole_image_crops(
        batch, 48, torch.Generator().manual_seed(3), flip_prob=0.5, return_params=True
    )
    assert crops.shape == (24, 3, 48, 48)
    assert params.top.max() <= 16 and params.left.max() <= 32 and params.top.min() >= 0 and params.left.min() >= 0
    assert 0 < int(params.flip.sum()) < 24  # drawn per sample
    assert len(set(zip(params.top.tolist(), params.left.tolist(), strict=True))) > 12
    for i, image in enumerate(images):
        t, left = int(params.top[i]), int(params.left[i])
        row, col = (left, t) if image.shape[1] > image.shape[2] else (t, left)
        window = image[:, row : row + 48, col : col + 48]
        assert torch.equal(crops[i], window.flip(-1) if params.flip[i] else window)  # a flipped crop = mirrored pixels
    assert torch.equal(cub.random_crop_flip(batch, 48, torch.Generator().manual_seed(3)), crops)
    unflipped = cub.random_crop_flip(batch, 48, torch.Generator().manual_seed(3), flip=False)
    mirrored_back = torch.where(params.flip[:, None, None, None], crops.flip(-1), crops)
    assert torch.equal(unflipped, mirrored_back)  # same positions (drawn first), no mirroring
    centre = cub.center_crops(batch, 48)
    assert torch.equal(centre[0], images[0][:, 8:56, 16:64]) and torch.equal(centre[1], images[1][:, 16:64, 8:56])


def test_the_splits_transforms(built):
    splits = built["cub224"]
    batch = splits.test_x[:4]
    assert splits.train_transform(batch, torch.Generator().manual_seed(0)).shape == (4, 3, 224, 224)
    assert splits.eval_transform(batch).shape == (4, 3, 224, 224)


def test_crops_range_over_the_whole_resized_image_and_the_test_crop_is_its_centre(built, sample, metadata):
    """Every training crop is a window of the whole resized image, in its own orientation (flipped where drawn), and
    over many draws the windows reach both ends of the longer side, which a centre square would hide (~29% of it
    on the sample); the test crop is torchvision's CenterCrop of the resized image."""
    splits = built["cub224"]
    index = {int(i): k for k, i in enumerate(metadata.image_ids)}
    arrays, _ = read_verified(splits.meta["path"])
    paths = [metadata.paths[index[int(i)]] for i in arrays["test/image_id"]]
    whole = [torch.from_numpy(resized(sample, path, 256)) for path in paths]
    assert any(w.shape[1] > w.shape[2] for w in whole) and any(w.shape[2] > w.shape[1] for w in whole)
    for k, image in enumerate(whole):
        assert torch.equal(splits.eval_transform(splits.test_x[k : k + 1])[0], TF.center_crop(image, 224))
    draws = 40
    repeated = splits.test_x.repeat(draws, 1, 1, 1)
    crops, params = cub.whole_image_crops(
        repeated, 224, torch.Generator().manual_seed(1), flip_prob=0.5, return_params=True
    )
    long, _ = cub.canvas_layout(splits.test_x)
    for k, image in enumerate(whole):
        picks = range(k, len(repeated), len(whole))
        offsets, hidden = params.left[list(picks)], (int(long[k]) - 256) // 2  # hidden: what a centre square cuts
        assert offsets.min() >= 0 and offsets.max() <= long[k] - 224
        if hidden > 20:  # crops reach into both ends that the centre square hid
            assert offsets.min() < hidden and offsets.max() + 224 > hidden + 256
        for n in list(picks)[:4]:
            top, left = int(params.top[n]), int(params.left[n])
            row, col = (left, top) if image.shape[1] > image.shape[2] else (top, left)
            window = image[:, row : row + 224, col : col + 224]
            assert torch.equal(crops[n], window.flip(-1) if params.flip[n] else window)
