"""The training-throughput benchmark: its modes, its arguments and the report it writes (tiny real steps)."""

from __future__ import annotations

import argparse
import json

import pytest

from stn.bench.train import main, parse_args, parse_mode


def test_a_mode_is_a_precision_optionally_compiled():
    assert parse_mode("fp32") == ("fp32", False)
    assert parse_mode("bf16+compile") == ("bf16", True)
    for bad in ("fp16", "bf16+jit", "compile"):
        with pytest.raises(argparse.ArgumentTypeError, match="a mode is a precision"):
            parse_mode(bad)


def test_bad_arguments_are_refused_with_what_was_wrong(capsys):
    for argv, message in (
        (["--modes", "fp16"], "a mode is a precision"),
        (["--models", "no_such_model"], "no config for ['no_such_model']"),
        (["--repeats", "0"], "--repeats >= 1"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_the_benchmark_times_every_mode_of_every_model_and_writes_its_report(tmp_path):
    main(
        [
            "--device",
            "cpu",
            "--columns",
            "mnist_r",
            "--models",
            "fcn",
            "cnn",
            "--modes",
            "fp32",
            "bf16",
            "--batch",
            "16",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    record = json.loads((tmp_path / "train_cpu.json").read_text())
    assert [(r["column"], r["model"]) for r in record["results"]] == [("mnist_r", "fcn"), ("mnist_r", "cnn")]
    for row in record["results"]:
        assert set(row["images_per_s"]) == {"fp32", "bf16"} and all(v > 0 for v in row["images_per_s"].values())
        assert all(len(times) == 2 for times in row["seconds_per_step"].values())
    table = (tmp_path / "train_cpu.md").read_text()
    assert "--modes fp32 bf16 --batch 16" in table and "| mnist_r | cnn |" in table and "bf16 xfp32" in table
