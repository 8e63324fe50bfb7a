"""Nothing silently wrong: damaged or foreign files, bad config values, two writers at once, killed writers and full
disks each give one clear error naming the file or value (and what to do), and nothing wrong is recorded as
finished."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from stn import atomic
from stn.atomic import WriteError, folder_lock, remove_stale_temporaries, write_atomic
from stn.checkpoint import CHECKPOINT, RESULT, DamagedFileError, load_checkpoint, read_result, save_checkpoint
from stn.data import cub
from stn.data.download import DownloadError, Remote, extract_tar, verify_file
from stn.data.mnist import MNIST_FILES, load_mnist, raw_folder
from stn.data.store import PROVENANCE, CorruptDatasetError, read_verified
from stn.data.store import write_atomic as store_write
from stn.models.params import CONFIG_DIR
from stn.results.cli import main as results_main
from stn.results.runs import load_local_results
from stn.run_folder import record_failure, run_sweep_job
from stn.sweep import SweepCallback
from stn.train import train
from stn.validation import check_config


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=list(overrides))


def state(weights: torch.Tensor) -> dict:
    return {"iteration": 10, "model": {"w": weights}, "optimizer": {"state": {}, "param_groups": []}}


# ---------------------------------------------------------------- checkpoints


def test_flipped_bytes_in_a_checkpoints_weights_are_refused(tmp_path):
    weights = torch.arange(4096, dtype=torch.float32)
    save_checkpoint(state(weights), tmp_path)
    data = bytearray((tmp_path / CHECKPOINT).read_bytes())
    at = data.find(weights.numpy().tobytes()[4000:4016])  # stored uncompressed: find the weights' bytes
    assert at > 0
    data[at : at + 3] = bytes(b ^ 0x10 for b in data[at : at + 3])
    (tmp_path / CHECKPOINT).write_bytes(bytes(data))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["iteration"] == 10  # torch itself loads it
    with pytest.raises(DamagedFileError, match="does not match its sha256") as error:
        load_checkpoint(tmp_path)
    assert str(tmp_path / CHECKPOINT) in str(error.value) and "Delete it" in str(error.value)


def test_non_finite_restored_weights_and_foreign_checkpoints_are_refused(tmp_path, caplog):
    save_checkpoint(state(torch.tensor([1.0, float("nan")])), tmp_path / "nan")
    with pytest.raises(DamagedFileError, match="model/w holds NaN"):
        load_checkpoint(tmp_path / "nan")
    for name, content in {"tensor": torch.ones(3), "other dict": {"weights": torch.ones(3)}, "list": [1]}.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        torch.save(content, folder / CHECKPOINT)
        with pytest.raises(DamagedFileError, match="not a checkpoint of this code") as error:
            load_checkpoint(folder)
        assert str(folder / CHECKPOINT) in str(error.value), name
    legacy = tmp_path / "legacy"  # written before checkpoints carried a checksum: loads, with a warning
    legacy.mkdir()
    torch.save(state(torch.ones(3)), legacy / CHECKPOINT)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(legacy)["iteration"] == 10
    assert "no checksum" in caplog.text


def test_a_run_never_resumes_from_flipped_checkpoint_bytes(tmp_path, data_store, mnist_raw_root):
    """The review's case: a few flipped bytes in the weights of a run's checkpoint. The resumed run stops with the
    file named, and its record says failed, never finished."""
    cfg = config(
        "data=mnist_rts", "model=fcn", "budget=smoke", f"paths.data_dir={data_store}",
        f"paths.mnist_source={mnist_raw_root}", f"paths.runs_dir={tmp_path}",
    )  # fmt: skip
    run_dir = Path(cfg.run_dir)
    train(cfg)
    weights = load_checkpoint(run_dir)["model"]
    largest = max(weights.values(), key=lambda t: t.numel()).numpy().tobytes()
    data = bytearray((run_dir / CHECKPOINT).read_bytes())
    at = data.find(largest[:64])
    assert at > 0  # stored uncompressed
    data[at + 100 : at + 104] = bytes(b ^ 0x40 for b in data[at + 100 : at + 104])
    (run_dir / CHECKPOINT).write_bytes(bytes(data))
    (run_dir / RESULT).unlink()  # as if the run had been interrupted before its end
    with pytest.raises(DamagedFileError, match="does not match its sha256"):
        run_sweep_job(train, cfg, run_dir)
    record = read_result(run_dir)
    assert record["status"] == "failed" and str(run_dir / CHECKPOINT) in record["error"]


@pytest.mark.parametrize("content", ["{}", "[]", '"finished"', '{"status": 1}'])
def test_a_foreign_result_json_is_named(tmp_path, content):
    (tmp_path / RESULT).write_text(content)
    with pytest.raises(DamagedFileError, match="not a run's result record") as error:
        read_result(tmp_path)
    assert str(tmp_path / RESULT) in str(error.value)


def test_results_table_names_a_non_utf8_result_json(tmp_path, capsys):
    run = tmp_path / "runs" / "a" / "b"
    run.mkdir(parents=True)
    (run / RESULT).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(DamagedFileError):
        load_local_results(tmp_path / "runs")
    with pytest.raises(SystemExit) as exit_:
        results_main(["table1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and str(run / RESULT) in capsys.readouterr().err


# ---------------------------------------------------------------- config values, and every failure recorded


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_config_value_is_refused_before_training_and_recorded(tmp_path, value):
    cfg = config(f"optim.optimizer.lr={value}", f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path}")
    with pytest.raises(ValueError, match=rf"^optim.optimizer.lr={value} is not a finite number") as error:
        run_sweep_job(train, cfg, Path(cfg.run_dir))
    assert error.value.__cause__ is None and error.value.__context__ is None  # one error, not a chain
    assert not (tmp_path / "data").exists()  # refused before any data was built
    record = read_result(Path(cfg.run_dir))
    assert record["status"] == "failed" and "optim.optimizer.lr" in record["error"]
    assert record["config"]["optim"]["optimizer"]["lr"] == value  # recorded by name: JSON has no NaN


@pytest.mark.parametrize(("data", "model", "key"), [("mnist_tc", "svhn_cnn", "data.max_digits"), ("svhn64", "cnn", "")])
def test_a_model_that_does_not_fit_the_data_is_one_sentence_before_the_data(tmp_path, data, model, key):
    cfg = config(f"data={data}", f"model={model}", f"paths.data_dir={tmp_path / 'data'}")
    with pytest.raises(ValueError, match=f"model {cfg.model.name} does not fit data {data}: the model reads {key}"):
        check_config(cfg)
    with pytest.raises(ValueError, match="does not fit"):
        train(cfg)
    assert not (tmp_path / "data").exists()


def test_a_damaged_result_json_in_a_multirun_is_kept_and_listed_as_failed(tmp_path, caplog):
    damaged, fine = tmp_path / "a", tmp_path / "b"
    damaged.mkdir()
    (damaged / RESULT).write_bytes(b'{"status": "fini')
    record_failure(damaged, config(), DamagedFileError("x"))  # must not raise, must not overwrite
    assert (damaged / RESULT).read_bytes() == b'{"status": "fini'
    callback = SweepCallback()
    callback.run_dirs = [damaged, fine]
    record_failure(fine, config(), RuntimeError("boom"))
    finished, failed, pending = callback.tally()
    assert not finished and not pending and [run for run, _ in failed] == [damaged, fine]
    assert "is damaged" in failed[0][1]
    with caplog.at_level(logging.INFO):
        callback.on_job_end(None, None)
        callback.on_multirun_end(None)
    assert "2/2 done (0 finished, 2 failed)" in caplog.text and "sweep ended: 0 finished, 2 failed" in caplog.text


# ---------------------------------------------------------------- locks, temporaries, full disks


def _hold_lock(folder: str, ready, release) -> None:
    with folder_lock(folder):
        ready.set()
        release.wait(30)


def test_the_data_folder_lock_excludes_other_processes_and_is_reentrant(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        probe = [sys.executable, "-c", f"import fcntl; fcntl.flock(open({str(tmp_path / '.stn.lock')!r}, 'a'), 6)"]
        assert subprocess.run(probe, capture_output=True).returncode != 0  # LOCK_EX | LOCK_NB fails: held
    finally:
        release.set()
        holder.join(60)
    with folder_lock(tmp_path), folder_lock(tmp_path):  # nested in one process: no deadlock
        pass
    assert subprocess.run(probe, capture_output=True).returncode == 0


def _load(root: str, source: str) -> str:
    mnist = load_mnist(root, source)
    return str(int(mnist.train_images.sum()) + int(mnist.test_labels.sum()))


def test_two_processes_preparing_mnist_at_once_both_succeed(tmp_path, mnist_raw_root):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        sums = pool.starmap(_load, [(str(tmp_path), str(mnist_raw_root))] * 2)
    assert sums[0] == sums[1]
    assert not [p for p in raw_folder(tmp_path).iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("source", [True, False])
def test_a_damaged_extracted_mnist_file_is_extracted_again(tmp_path, mnist_raw_root, source):
    reference = load_mnist(tmp_path, mnist_raw_root)
    extracted = raw_folder(tmp_path) / MNIST_FILES[0].removesuffix(".gz")
    extracted.write_bytes(extracted.read_bytes()[:1000])  # a half-written extraction
    again = load_mnist(tmp_path, mnist_raw_root if source else None)  # the .gz files are there: no download
    assert torch.equal(again.train_images, reference.train_images)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_dead_writers_temporaries_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".checkpoint.pt.{atomic.HOST}.{_dead_pid()}.0123abcd.tmp"
    live = tmp_path / f".checkpoint.pt.{atomic.HOST}.{os.getpid()}.0123abcd.tmp"
    other_host = tmp_path / f".checkpoint.pt.elsewhere.{_dead_pid()}.0123abcd.tmp"
    dead_folder = tmp_path / f".extract-train.tar.gz.{atomic.HOST}.{_dead_pid()}.0123abcd.tmp"
    for path in (dead, live, other_host):
        path.write_bytes(b"partial")
    (dead_folder / "train").mkdir(parents=True)
    write_atomic(tmp_path / "result.json", "{}")  # any atomic write cleans its folder first
    assert not dead.exists() and not dead_folder.exists() and live.exists() and other_host.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


WRITE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys, torch
from pathlib import Path
from stn.atomic import WriteError, write_atomic
from stn.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG (errno 27), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
folder = Path(sys.argv[1])
for write in (lambda: write_atomic(folder / "big.bin", b"x" * 1_000_000),
              lambda: save_checkpoint({"iteration": 1, "model": {"w": torch.ones(1_000_000)}}, folder)):
    try:
        write()
    except WriteError as error:
        print(error)
"""


def test_a_write_that_fails_for_space_names_the_file_and_leaves_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITE_UNDER_A_SIZE_LIMIT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert (
        f"could not write {tmp_path / 'big.bin'}" in lines[0] and f"could not write {tmp_path / CHECKPOINT}" in lines[1]
    )
    assert all("Free some space" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left, no half file
    assert issubclass(WriteError, OSError)


# ---------------------------------------------------------------- stored sets


def small_store(path: Path) -> None:
    arrays = {"train/images": np.arange(600, dtype=np.uint8).reshape(6, 10, 10), "train/labels": np.arange(6)}
    store_write(path, arrays, {"name": "tiny", "seed": 0, "mnist_md5": {"a": "0" * 32}, "stn_version": "1"})


def test_every_byte_flip_in_a_stores_header_is_caught_or_harmless(tmp_path):
    small_store(tmp_path / "good.h5")
    good = (tmp_path / "good.h5").read_bytes()
    reference, _ = read_verified(tmp_path / "good.h5")
    damaged = tmp_path / "damaged.h5"
    for at in range(0, 2048, 8):
        data = bytearray(good)
        data[at] ^= 0xFF
        damaged.write_bytes(bytes(data))
        try:
            arrays, _ = read_verified(damaged)
        except CorruptDatasetError as error:
            assert str(damaged) in str(error) and "Delete it and run again" in str(error), at
            continue
        assert arrays.keys() == reference.keys() and all(np.array_equal(arrays[k], reference[k]) for k in arrays), at


@pytest.mark.parametrize(("attr", "value"), [("mnist_md5", {"a": "1" * 32}), ("name", "other"), ("stn_version", "9")])
def test_the_store_checksum_covers_its_provenance(tmp_path, attr, value, caplog):
    path = tmp_path / "set.h5"
    small_store(path)
    with h5py.File(path, "r+") as file:
        file.attrs[attr] = json.dumps(value)
    with pytest.raises(CorruptDatasetError, match=f"attributes do not match its {PROVENANCE}"):
        read_verified(path)
    with h5py.File(path, "r+") as file:  # a set stored before the provenance checksum: arrays verified, a warning
        del file.attrs[PROVENANCE]
    with caplog.at_level(logging.WARNING):
        read_verified(path)
    assert "before its provenance" in caplog.text and str(path) in caplog.text


# ---------------------------------------------------------------- source folders and half-extracted folders


def test_a_wrong_archive_in_a_source_folder_is_not_advised_to_be_downloaded(tmp_path):
    archive = tmp_path / "train.tar.gz"
    archive.write_bytes(b"not it")
    remote = Remote(("http://example.invalid/train.tar.gz",), "train.tar.gz", size=10)
    with pytest.raises(DownloadError) as error:
        verify_file(archive, remote, in_source=True)
    assert "Replace it with the original file" in str(error.value) and "download it (from" not in str(error.value)


def test_a_half_extracted_cub_folder_is_named_instead_of_the_archive(tmp_path):
    (tmp_path / cub.FOLDER / "images").mkdir(parents=True)  # no images.txt
    cfg = cub.CubConfig.from_cfg(
        {"name": "cub224", "root": str(tmp_path), "image_size": 64, "crop_size": 48, "num_classes": 200,
         "seed": 0, "val_size": 0, "download_urls": ["http://127.0.0.1:9/CUB_200_2011.tgz"]}
    )  # fmt: skip
    with pytest.raises(DownloadError, match="half-extracted") as error:
        cub.find_folder(cfg, progress=False)
    assert str(tmp_path / cub.FOLDER) in str(error.value)


def test_extraction_removes_a_killed_extractions_folder(tmp_path):
    import tarfile

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(tmp_path / "src", arcname="src")
    stale = tmp_path / "dest" / f".extract-x.tar.{atomic.HOST}.{_dead_pid()}.0123abcd.tmp"
    (stale / "src").mkdir(parents=True)
    extract_tar(tmp_path / "x.tar", tmp_path / "dest")
    assert not stale.exists() and (tmp_path / "dest" / "src" / "a.txt").read_text() == "a"
