"""Steady-state training throughput of the Table 1 models per training mode (precision, compile), e.g. on the CPU.

    python -m stn.bench.train [--device auto|cpu|cuda] [--columns mnist_r mnist_rts] [--models fcn cnn ...]
                              [--modes fp32 bf16 fp32+compile] [--batch 256] [--warmup 5] [--steps 5]
                              [--repeats 7] [--out results/bench]

One step is train.py's training step (autocast forward, float32 loss, backward, optimiser and lr step) of the model
built from its Hydra config for the column (experiment=table1, optim=fast), fed by train.py's batch iterator from
uint8 images of the column's shape (random: the speed does not depend on the content). A mode trains as a run with
that precision would on the device (`precision` on CUDA, `cpu_precision` on the CPU; bf16 = bf16 autocast and a
channels_last model), "+compile" under torch.compile. The modes of one model run in one process, their repeats
interleaved, so other load spreads over all of them; a repeat times `steps` steps, the table gives the median repeat
(and the fastest). Written atomically to <out>/train_<device>.md, with the raw timings and the machine in .json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.bench import save_report
from stn.models.params import CONFIG_DIR
from stn.optim import build_optimizer, train_step
from stn.precision import PRECISIONS, use_precision, wants_channels_last
from stn.runinfo import environment
from stn.runtime import pick_device, seed_everything
from stn.stream import epoch_batches

COLUMNS = ("mnist_r", "mnist_rts")
MODELS = ("fcn", "cnn", "st_fcn_aff", "st_fcn_tps", "st_cnn_aff", "st_cnn_tps")
FAST_SAMPLES = 15_000 * 256  # configs/budget/fast.yaml: what a fast-recipe run trains on


def parse_mode(mode: str) -> tuple[str, bool]:
    """ "bf16+compile" -> ("bf16", True)."""
    precision, _, extra = mode.partition("+")
    if precision not in PRECISIONS or extra not in ("", "compile"):
        raise argparse.ArgumentTypeError(f"a mode is a precision {PRECISIONS}, optionally +compile; got {mode!r}")
    return precision, extra == "compile"


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(column: str, model_name: str, mode: str, batch: int, device: torch.device):
    """A function doing one training step of `model_name` on `column` in `mode`, as a run would."""
    precision, compiled = parse_mode(mode)
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("train", [f"data={column}", f"model={model_name}", "experiment=table1", "optim=fast"])
    seed_everything(0)
    model = instantiate(cfg.model.net).to(device)
    if wants_channels_last(device, precision):
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.budget.iterations)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * batch, *cfg.data.input_shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, cfg.data.num_classes, (4 * batch,), generator=generator)
    batches = epoch_batches(images.to(device), labels.to(device), batch, 0, 0, None)

    def step() -> None:
        use_precision(precision, device)  # process-wide: set before each step, as the modes interleave
        train_step(step_model, optimizer, scheduler, *next(batches), precision)

    return step


def seconds_per_step(step, steps: int, device: torch.device) -> float:
    _synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronise(device)
    return (time.perf_counter() - started) / steps


def render_markdown(rows: list[dict], args: argparse.Namespace, env: dict, device_text: str, load: list[float]) -> str:
    base = args.modes[0]
    command = (
        f"python -m stn.bench.train --device {args.device_type} --columns {' '.join(args.columns)} "
        f"--models {' '.join(args.models)} --modes {' '.join(args.modes)} --batch {args.batch} "
        f"--warmup {args.warmup} --steps {args.steps} --repeats {args.repeats}"
    )
    lines = [
        f"# Table 1 models: training images/s per mode ({device_text})",
        "",
        f"`{command}`",
        "",
        f"Batch {args.batch}; train.py's training step (forward, loss, backward, optimiser and lr step) on uint8 "
        f"images of the column's shape; bf16 = bf16 autocast with a channels_last model (theta, grids and sampling "
        f"stay float32), +compile = torch.compile. Images/s from the median of {args.repeats} repeats of "
        f"{args.steps} steps after {args.warmup} warm-up steps (best: the fastest repeat), the modes interleaved; "
        f"x{base}: the speed-up over {base}; minutes: the training steps of one fast-recipe run (15k x 256) at the "
        f"best mode's median, without evaluation. torch {torch.__version__}, {env['torch_threads']} threads, "
        f"{device_text}; 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after (other processes slow "
        f"every row).",
        "",
        "| column | model | "
        + " | ".join(f"{m} images/s (best)" for m in args.modes)
        + " | "
        + " | ".join(f"{m} x{base}" for m in args.modes[1:])
        + " | minutes |",
        "|---|---|" + "---:|" * (2 * len(args.modes)),
    ]
    for row in rows:
        ips = row["images_per_s"]
        cells = [f"{ips[m]:,.0f} ({row['best_images_per_s'][m]:,.0f})" for m in args.modes]
        ratios = [f"{ips[m] / ips[base]:.2f}" for m in args.modes[1:]]
        minutes = FAST_SAMPLES / max(ips.values()) / 60
        lines.append(f"| {row['column']} | {row['model']} | " + " | ".join(cells + ratios) + f" | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), help="data configs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model configs")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "fp32+compile"], help="the first is the base")
    parser.add_argument("--batch", type=int, default=256, help="the paper's batch is 256")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing (compilation happens here)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("need --batch, --steps, --repeats >= 1 and --warmup >= 0")
    for mode in args.modes:
        try:
            parse_mode(mode)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    unknown = [m for m in args.models if not (CONFIG_DIR / "model" / f"{m}.yaml").is_file()]
    unknown += [c for c in args.columns if not (CONFIG_DIR / "data" / f"{c}.yaml").is_file()]
    if unknown:
        parser.error(f"no config for {unknown} under {CONFIG_DIR}/model or /data")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.device_type = device.type
    env = environment(device)
    device_text = env["gpu"] or f"CPU, {env['cpu']}"
    load = [os.getloadavg()[0]]
    rows = []
    for column in args.columns:
        for model in args.models:
            steps = {mode: trainer(column, model, mode, args.batch, device) for mode in args.modes}
            for step in steps.values():
                seconds_per_step(step, args.warmup, device)
            times: dict[str, list[float]] = {mode: [] for mode in args.modes}
            for _ in range(args.repeats):
                for mode, step in steps.items():
                    times[mode].append(seconds_per_step(step, args.steps, device))
            row = {
                "column": column,
                "model": model,
                "images_per_s": {m: args.batch / statistics.median(t) for m, t in times.items()},
                "best_images_per_s": {m: args.batch / min(t) for m, t in times.items()},
                "seconds_per_step": times,
            }
            rows.append(row)
            print(column, model, {m: round(v) for m, v in row["images_per_s"].items()}, flush=True)
    load.append(os.getloadavg()[0])
    table = render_markdown(rows, args, env, device_text, load)
    save_report("train", device, table, args, env, rows, load_average=load)


if __name__ == "__main__":
    main()
