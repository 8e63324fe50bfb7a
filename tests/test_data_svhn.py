"""SVHN (Table 2) on the real format-1 sample: digitStruct parsing, missing images, crop geometry, the stored 64px and
128px sets, on-device random crops, and a build from archives served over a local HTTP server."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from test_download import local_server

from stn.data import svhn, transforms
from stn.data.download import DownloadError
from stn.data.store import CorruptDatasetError, read_verified
from stn.models.params import CONFIG_DIR
from stn.tasks import sequence_correct

# shared/data/README.md: the first three images of each split and their sequences.
KNOWN = {
    "train": ["19", "23", "25"],
    "test": ["5", "210", "6"],
    "extra": ["478", "71", "174"],
}
LISTED = {"train": 39, "test": 40, "extra": 40}  # the trimmed digitStruct.mat of the sample


def sequence(labels) -> str:
    return "".join(str(int(v)) for v in labels if int(v) != svhn.NULL_CLASS)


@pytest.fixture(scope="module")
def sample(svhn_sample) -> Path:
    """The folder holding the sample's train/ test/ extra/ (each with digitStruct.mat and 1.png-3.png)."""
    return svhn_sample


def data_cfg(name: str, root: Path, source: Path | None, **changes: object) -> dict:
    """configs/data/<name>.yaml with root/source filled in (and `changes`), as a plain dict."""
    cfg = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    cfg.root, cfg.svhn_source, cfg.workers = str(root), None if source is None else str(source), 1
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg, resolve=True)


# ---------------------------------------------------------------- digitStruct.mat


def test_digit_struct_gives_the_known_labels_and_boxes(sample):
    for split, known in KNOWN.items():
        records = svhn.parse_digit_struct(sample / split / "digitStruct.mat")
        assert len(records) == LISTED[split]
        assert [r.name for r in records[:3]] == ["1.png", "2.png", "3.png"]
        assert ["".join(map(str, r.labels)) for r in records[:3]] == known
        assert all(len(r.boxes) == len(r.labels) and 1 <= len(r.labels) for r in records)
    train = svhn.parse_digit_struct(sample / "train" / "digitStruct.mat")
    assert train[0].boxes == ((246.0, 77.0, 81.0, 219.0), (323.0, 81.0, 96.0, 219.0))  # multi-digit: references
    test = svhn.parse_digit_struct(sample / "test" / "digitStruct.mat")
    assert test[0].labels == (5,) and test[0].boxes == ((43.0, 7.0, 19.0, 30.0),)  # one digit: stored directly
    assert test[1].labels == (2, 1, 0)  # the file's label 10 is the digit 0
    with h5py.File(sample / "test" / "digitStruct.mat", "r") as file:  # the quirk the parser handles
        box = file[file["digitStruct/bbox"][0, 0]]
        assert box["label"].dtype.kind == "f" and h5py.check_dtype(
            ref=file[file["digitStruct/bbox"][1, 0]]["label"].dtype
        )


def test_the_parse_in_ranges_and_processes_gives_the_same_records(sample):
    mat = str(sample / "extra" / "digitStruct.mat")
    whole = svhn.parse_digit_struct(mat)
    jobs = [(mat, start, start + 7) for start in range(0, 40, 7)]  # 6 ranges, in 2 processes
    assert [r for part in transforms.map_images(svhn._parse_range, jobs, 2, "parse", False, 4) for r in part] == whole


def test_the_parse_is_cached_once_under_the_files_sha256(sample, tmp_path, monkeypatch):
    mat = sample / "extra" / "digitStruct.mat"
    records, digest = svhn.load_annotations(mat, tmp_path, progress=False)
    assert digest == hashlib.sha256(mat.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [f"digitStruct-{digest[:16]}.json"]

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(svhn, "parse_digit_struct", no_parse)
    assert svhn.load_annotations(mat, tmp_path, progress=False) == (records, digest)


def test_a_damaged_digit_struct_names_the_file(tmp_path):
    bad = tmp_path / "digitStruct.mat"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable SVHN digitStruct.mat"):
        svhn.parse_digit_struct(bad)


# ---------------------------------------------------------------- missing images


def test_missing_images_are_skipped_with_a_logged_count(sample, tmp_path, caplog):
    cfg = svhn.SvhnConfig.from_cfg(data_cfg("svhn64", tmp_path, sample))
    with caplog.at_level(logging.WARNING, logger="stn.data.svhn"):
        train = svhn.usable_records(cfg, "train", progress=False)
    assert train.counts == {"listed": 39, "missing": 36, "present": 3}
    assert [r.name for r in train.records] == ["1.png", "2.png", "3.png"] and train.folder == sample / "train"
    assert "36 of the 39 images" in caplog.text and "skipped" in caplog.text


def test_nothing_usable_is_a_clear_error(sample, tmp_path):
    source = tmp_path / "source"
    for split in ("train", "test", "extra"):
        (source / split).mkdir(parents=True)
        shutil.copyfile(sample / split / "digitStruct.mat", source / split / "digitStruct.mat")
    cfg = svhn.SvhnConfig.from_cfg(data_cfg("svhn64", tmp_path / "root", source))
    with pytest.raises(svhn.SvhnNotFoundError, match="nothing usable is left"):
        svhn.usable_records(cfg, "test", progress=False)


def test_a_source_without_svhn_names_the_folder_and_the_option(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = svhn.SvhnConfig.from_cfg(data_cfg("svhn64", tmp_path / "root", tmp_path / "empty"))
    with pytest.raises(svhn.SvhnNotFoundError) as error:
        svhn.split_folder(cfg, "train", progress=False)
    message = str(error.value)
    assert str(tmp_path / "empty") in message and "train.tar.gz" in message and "SVHN_SOURCE" in message


# ---------------------------------------------------------------- crop geometry


def test_crop_boxes_by_hand_on_train_1png():
    boxes = ((246, 77, 81, 219), (323, 81, 96, 219))  # train 1.png "19"
    # union: x 246 .. max(327, 419) = 419, y 77 .. max(296, 300) = 300 -> 173 x 223, centre (332.5, 188.5)
    assert svhn.sequence_box(boxes).tolist() == [246, 77, 419, 300]
    # x1.3: 224.9 x 289.9 about the centre
    np.testing.assert_allclose(svhn.crop_region(boxes, 1.3), [220.05, 43.55, 444.95, 333.45], atol=1e-9)
    # the 128px box: that box doubled, 449.8 x 579.8
    np.testing.assert_allclose(svhn.crop_region(boxes, 1.3, 2.0), [107.6, -101.4, 557.4, 478.4], atol=1e-9)
    # square: the longer side (289.9) for both
    np.testing.assert_allclose(svhn.crop_region(boxes, 1.3, square=True), [187.55, 43.55, 477.45, 333.45], atol=1e-9)


def test_crop_resize_copies_pixels_exactly_and_clips_or_pads_at_the_border():
    pixels = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)  # H 80, W 100
    image = Image.fromarray(pixels)
    inside = svhn.crop_resize(image, (10, 6, 74, 70), 64, "clip", "bilinear")  # 64x64 region -> 64x64: a copy
    assert np.array_equal(inside, pixels[6:70, 10:74].transpose(2, 0, 1))
    padded = svhn.crop_resize(image, (-8, -4, 56, 60), 64, "pad", "bilinear")  # 8 px left, 4 px above the image
    assert not padded[:, :4].any() and not padded[:, :, :8].any()
    assert np.array_equal(padded[:, 4:, 8:], pixels[:60, :56].transpose(2, 0, 1))
    clipped = svhn.crop_resize(image, (-8, -4, 56, 60), 64, "clip", "bilinear")  # = the region cut to (0, 0, 56, 60)
    reference = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR, box=(0, 0, 56, 60))).transpose(2, 0, 1)
    assert np.array_equal(clipped, reference) and clipped.dtype == np.uint8 and clipped.shape == (3, 64, 64)
    assert svhn.crop_resize(image, (120, 10, 150, 40), 64, "clip", "bilinear") is None  # outside: degenerate
    assert svhn.crop_resize(image, (120, 10, 150, 40), 64, "pad", "bilinear") is None


# ---------------------------------------------------------------- the stored sets


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory) -> dict[str, tuple[svhn.SvhnConfig, svhn.SvhnSplits]]:
    root = tmp_path_factory.mktemp("svhn")
    out = {}
    for name in ("svhn64", "svhn128"):
        cfg = data_cfg(name, root, sample, val_size=2)
        out[name] = (svhn.SvhnConfig.from_cfg(cfg), svhn.load_splits(cfg, progress=False))
    return out


@pytest.mark.parametrize(("name", "size", "crop"), [("svhn64", 64, 54), ("svhn128", 128, 110)])
def test_the_stored_sets_hold_the_sample(built, name, size, crop):
    cfg, splits = built[name]
    assert cfg.image_size == size and splits.crop_size == crop and splits.num_classes == 11
    assert splits.meta["sizes"] == {"train": 4, "val": 2, "test": 3}
    assert splits.meta["incomplete"] == {"train": "3 of 33402", "extra": "3 of 202353", "test": "3 of 13068"}
    for x, y, n in [
        (splits.train_x, splits.train_y, splits.train_len),
        (splits.test_x, splits.test_y, splits.test_len),
    ]:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, size, size) and y.dtype == torch.int64
        assert y.shape == (len(x), 5) and n.tolist() == [len(sequence(row)) for row in y]
        assert ((y == svhn.NULL_CLASS) == (torch.arange(5) >= n[:, None])).all()  # null class after the last digit
    train_val = sorted(sequence(y) for y in torch.cat([splits.train_y, splits.val_y]))
    assert train_val == sorted(KNOWN["train"] + KNOWN["extra"])
    assert [sequence(y) for y in splits.test_y] == KNOWN["test"]  # every test image, in file order
    arrays, attrs = read_verified(splits.meta["path"])  # the checksum verifies on reload
    assert attrs["sha256"] == splits.meta["sha256"] and attrs["generation"] == cfg.generation()
    assert attrs["sources"]["train"]["missing"] == 36 and attrs["sources"]["test"]["present"] == 3
    pool = {key: np.concatenate([arrays[f"train/{key}"], arrays[f"val/{key}"]]) for key in ("source", "image_id")}
    sizes = np.concatenate([arrays["train/image_sizes"], arrays["val/image_sizes"]])
    assert sizes[(pool["source"] == 0) & (pool["image_id"] == 1)].tolist() == [[741, 350]]  # train 1.png
    assert sorted(pool["source"].tolist()) == [0, 0, 0, 1, 1, 1] and arrays["test/source"].tolist() == [2, 2, 2]
    test_boxes = arrays["test/digit_boxes"]
    assert test_boxes[0, 0].tolist() == [43, 7, 19, 30] and np.isnan(test_boxes[0, 1:]).all()  # "5": one box


def test_the_crops_are_the_stored_geometry(built, sample):
    cfg, splits = built["svhn64"]
    with Image.open(sample / "test" / "2.png") as image:
        rgb = image.convert("RGB")
    boxes = svhn.parse_digit_struct(sample / "test" / "digitStruct.mat")[1].boxes
    expected = svhn.crop_resize(rgb, svhn.crop_region(boxes, 1.3), 64, "clip", "bilinear")
    assert np.array_equal(splits.test_x[1].numpy(), expected)


def test_a_rebuild_is_a_no_op_and_damage_is_detected(built, monkeypatch, tmp_path):
    cfg, splits = built["svhn64"]
    path = Path(splits.meta["path"])
    stamp = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(svhn, "build_dataset", no_build)
    assert svhn.ensure_dataset(cfg) == path and path.stat().st_mtime_ns == stamp
    damaged = tmp_path / path.name
    shutil.copyfile(path, damaged)
    with h5py.File(damaged, "r+") as file:
        file["test/labels"][0, 0] = 9
    with pytest.raises(CorruptDatasetError):
        read_verified(damaged)


def test_long_sequences_are_dropped_from_training_and_counted(sample, tmp_path, caplog):
    cfg = data_cfg("svhn64", tmp_path, sample, val_size=0, max_digits=2)  # "478", "174" count as too long here
    with caplog.at_level(logging.WARNING, logger="stn.data.svhn"):
        splits = svhn.load_splits(cfg, progress=False)
    assert sorted(sequence(y) for y in splits.train_y) == ["19", "23", "25", "71"]
    assert "2 sequences longer than 2 digits dropped from training" in caplog.text
    assert splits.meta["longer_than_max_digits"] == {"train": 0, "extra": 2, "test": 1}
    assert splits.test_len.tolist() == [1, 3, 1]  # test keeps "210": its true length, counted wrong
    assert sequence_correct(splits.test_y, splits.test_y, splits.test_len).tolist() == [True, False, True]


def test_configs_compose_with_hydra(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        for name, size, crop, scale, border in [("svhn64", 64, 54, 1.0, "clip"), ("svhn128", 128, 110, 2.0, "pad")]:
            data = compose(config_name="train", overrides=[f"data={name}", f"paths.data_dir={tmp_path}"]).data
            cfg = svhn.SvhnConfig.from_cfg(data)
            assert (cfg.image_size, cfg.crop_size, cfg.box_scale, cfg.border) == (size, crop, scale, border)
            assert cfg.box_expand == 1.3 and cfg.val_size == 5000 and cfg.train_splits == ("train", "extra")
            assert list(data.input_shape) == [3, crop, crop] and data.column == f"{size}px"
            assert cfg.root == tmp_path


# ---------------------------------------------------------------- on-device crops


def test_random_crops_draw_a_position_per_sample_inside_the_image():
    images = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    crops, params = transforms.random_crops(images, 54, torch.Generator().manual_seed(0), return_params=True)
    assert crops.shape == (32, 3, 54, 54) and crops.dtype == torch.uint8
    assert 0 <= params.top.min() and params.top.max() <= 10 and 0 <= params.left.min() and params.left.max() <= 10
    assert len(set(zip(params.top.tolist(), params.left.tolist(), strict=True))) > 16  # per-sample positions
    for i in range(32):
        t, left = int(params.top[i]), int(params.left[i])
        assert torch.equal(crops[i], images[i, :, t : t + 54, left : left + 54])
    again = transforms.random_crops(images, 54, torch.Generator().manual_seed(0))
    assert torch.equal(again, crops)  # the generator decides everything
    assert not params.flip.any()


def test_centre_crops_are_exact():
    images = torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8)
    assert torch.equal(transforms.center_crop(images, 110), images[:, :, 9:119, 9:119])
    assert torch.equal(transforms.center_crop(images[:, :, :64, :64], 54), images[:, :, 5:59, 5:59])
    with pytest.raises(ValueError, match="larger than the images"):
        transforms.random_crops(images, 129)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_random_crops_run_on_the_images_device():
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, device="cuda")
    crops = transforms.random_crops(images, 54, torch.Generator(device="cuda").manual_seed(0))
    assert crops.device == images.device and crops.shape == (8, 3, 54, 54)


# ---------------------------------------------------------------- from the archives, downloaded


def make_archives(sample: Path, folder: Path) -> dict[str, bytes]:
    """<split>.tar.gz of each sample folder (members <split>/...), as the official archives are laid out."""
    folder.mkdir(parents=True)
    bodies = {}
    for split in ("train", "test", "extra"):
        path = folder / f"{split}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for file in sorted((sample / split).iterdir()):
                tar.add(file, arcname=f"{split}/{file.name}")
        bodies[split] = path.read_bytes()
    return bodies


def test_a_build_from_downloaded_archives_matches_the_folder_build(sample, built, tmp_path, monkeypatch):
    bodies = make_archives(sample, tmp_path / "archives")
    for split, body in bodies.items():  # the published checksums belong to the full archives: use the test's
        monkeypatch.setitem(svhn.SVHN_ARCHIVES, split, (len(body), hashlib.sha256(body).hexdigest()))
    routes = {f"/housenumbers/{split}.tar.gz": (body, "") for split, body in bodies.items()}
    with local_server(routes) as (base, hits):
        cfg = data_cfg("svhn64", tmp_path / "root", None, val_size=2, download_url=f"{base}/housenumbers/")
        splits = svhn.load_splits(cfg, progress=False)
    assert sorted(hits) == sorted(routes)
    raw = tmp_path / "root" / "SVHN"
    assert sorted(p.name for p in raw.iterdir()) == [
        "extra",
        "extra.tar.gz",
        "parsed",
        "test",
        "test.tar.gz",
        "train",
        "train.tar.gz",
    ]
    reference = built["svhn64"][1]
    for part in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "test_len"):
        assert torch.equal(getattr(splits, part), getattr(reference, part)), part
    # an offline folder of archives works the same (verified, then extracted into root/SVHN)
    offline = data_cfg("svhn64", tmp_path / "root2", tmp_path / "archives", val_size=2)
    assert torch.equal(svhn.load_splits(offline, progress=False).test_x, reference.test_x)
    # ... and an archive that is not the published one is refused with the reason
    monkeypatch.setitem(svhn.SVHN_ARCHIVES, "train", (len(bodies["train"]), "0" * 64))
    with pytest.raises(DownloadError, match="sha256: expected 0000"):
        svhn.load_splits(data_cfg("svhn64", tmp_path / "root3", tmp_path / "archives", val_size=2), progress=False)
    assert not (tmp_path / "root3" / "SVHN" / "train").exists()


def test_published_archive_checksums_are_pinned():
    assert {split: size for split, (size, _) in svhn.SVHN_ARCHIVES.items()} == {
        "train": 404141560,
        "test": 276555967,
        "extra": 1955489752,
    }
    assert all(len(sha) == 64 for _, sha in svhn.SVHN_ARCHIVES.values())
    assert os.fspath(svhn.archive_remote("extra", "http://ufldl.stanford.edu/housenumbers/").urls[0]).endswith(
        "/housenumbers/extra.tar.gz"
    )
