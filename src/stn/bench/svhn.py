"""Forward+backward time per batch of the Table 2 models: ST-CNN Single and Multi beside the CNN, per input size.

    python -m stn.bench.svhn [--device auto|cpu|cuda] [--batch 128] [--data svhn64 svhn128]
                             [--models svhn_cnn svhn_st_single svhn_st_multi] [--warmup 2] [--repeats 10]
                             [--out results/bench]

The models are built from their Hydra configs exactly as training builds them (configs/model/svhn_*.yaml on the
data config's input size), in training mode (dropout on). One step: the sequence loss of a batch of random images
and labels, then backward (no optimiser step). All models of a size run in one process on the same batch, their
repeats interleaved, so load from other processes spreads over all of them; the table gives the median (and
fastest) step and its ratio to the CNN's (the paper: ST-CNN Multi "only 6% slower" forward and backward, on a GPU).
Each device runs its training default unless --precision says otherwise (CUDA: bf16 autocast and channels_last,
timed by the wall clock; the CPU: float32, or bf16 autocast and channels_last), the CPU timed by this process's CPU
time, which other processes on a shared machine do not inflate (run it with 1 thread:
OMP_NUM_THREADS=1, or the threads' times add up). Written atomically to <out>/svhn_<device>.{md,json}.
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
from torch import Tensor, nn

from stn.bench import save_report
from stn.models import count_parameters
from stn.models.params import CONFIG_DIR
from stn.precision import autocast, wants_channels_last
from stn.runinfo import environment
from stn.runtime import pick_device
from stn.tasks import SequenceClassification

MODELS = ("svhn_cnn", "svhn_st_single", "svhn_st_multi")
DATA = ("svhn64", "svhn128")
TASK = SequenceClassification()
CLOCKS = {
    "cpu": "this process's CPU time per step (other load on a shared machine does not inflate it; with 1 thread it is "
    "the wall time of an unloaded machine)",
    "cuda": "wall time per step, CUDA synchronised around it",
}


def build(data: str, model: str) -> tuple[nn.Module, str, tuple[int, ...], int, int]:
    """A Table 2 model as training builds it, its result name, input shape, classes and digit positions."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="bench_svhn"):
        cfg = compose(config_name="train", overrides=["experiment=table2", f"data={data}", f"model={model}"])
    return (
        instantiate(cfg.model.net),
        cfg.model.name,
        tuple(cfg.data.input_shape),
        int(cfg.data.num_classes),
        int(cfg.data.max_digits),
    )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model: nn.Module, x: Tensor, targets: tuple[Tensor, Tensor], precision: str) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one forward + loss + backward pass."""
    model.zero_grad(set_to_none=True)
    _synchronise(x.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    with autocast(x.device, precision):
        output = model(x)
    TASK.loss(output, targets).backward()
    _synchronise(x.device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def render_markdown(rows: list[dict], args: argparse.Namespace, env: dict, device_text: str, load: list[float]) -> str:
    lines = [
        f"# Table 2 models: forward+backward time per batch ({device_text})",
        "",
        f"`python -m stn.bench.svhn --device {args.device} --batch {args.batch} --data {' '.join(args.data)} "
        f"--models {' '.join(args.models)} --precision {args.precision} --warmup {args.warmup} "
        f"--repeats {args.repeats}`",
        "",
        f"Batch {args.batch} of random RGB images at each data config's model input (svhn64: 54x54, svhn128: 110x110 "
        f"crops), training mode (dropout on), five-head sequence loss + backward, no optimiser step; median and "
        f"fastest of {args.repeats} steps after {args.warmup} warm-up steps, the models' steps interleaved; ratio = "
        f"median / the CNN's median at the same size. Times are {CLOCKS[args.device_type]}. The paper: ST-CNN "
        f"Multi is only 6% slower than the CNN (forward and backward, on a GPU). torch {torch.__version__}, "
        f"{env['torch_threads']} threads, {'bf16 autocast, channels_last' if args.precision == 'bf16' else 'float32'}; "
        f"1-minute load average {load[0]:.1f} before and {load[1]:.1f} after.",
        "",
        "| data | input | model | params | ms/batch (median) | best ms | wall ms (median) | images/s | ratio to CNN |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['data']} | {row['input']} | {row['model']} | {row['params'] / 1e6:.2f}M "
            f"| {1000 * row['median_s']:.1f} | {1000 * min(row['times_s']):.1f} "
            f"| {1000 * statistics.median(row['wall_times_s']):.1f} | {args.batch / row['median_s']:,.0f} "
            f"| {row['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--batch", type=int, default=128, help="the paper's batch is 128")
    parser.add_argument("--data", nargs="+", default=list(DATA), help="data configs (input sizes)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model configs; the first is the baseline")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), help="default: the training default (bf16 on CUDA, fp32 on the CPU)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --batch >= 1, --repeats >= 1 and --warmup >= 0")
    unknown = [m for m in args.models if not (CONFIG_DIR / "model" / f"{m}.yaml").is_file()]
    unknown += [d for d in args.data if not (CONFIG_DIR / "data" / f"{d}.yaml").is_file()]
    if unknown:
        parser.error(f"no config for {unknown} under {CONFIG_DIR}/model or /data")

    device = pick_device(args.device)
    args.device_type = device.type
    if args.precision is None:  # configs/train.yaml's precision / cpu_precision
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    env = environment(device)
    device_text = env["gpu"] or f"CPU, {env['cpu']}"
    generator = torch.Generator().manual_seed(args.seed)
    load = [os.getloadavg()[0]]
    rows = []
    for data in args.data:
        torch.manual_seed(args.seed)
        built = [build(data, model) for model in args.models]
        _, _, shape, classes, digits = built[0]
        x = torch.rand(args.batch, *shape, generator=generator).to(device)
        labels = torch.randint(0, classes, (args.batch, digits), generator=generator).to(device)
        targets = (labels, torch.full((args.batch,), digits).to(device))
        models = []
        for model, *_ in built:
            model.to(device).train()
            if wants_channels_last(device, args.precision):
                model.to(memory_format=torch.channels_last)
            models.append(model)
        if wants_channels_last(device, args.precision):
            x = x.contiguous(memory_format=torch.channels_last)
        for model in models:
            for _ in range(args.warmup):
                step_seconds(model, x, targets, args.precision)
        times: list[list[tuple[float, float]]] = [[] for _ in models]
        for _ in range(args.repeats):
            for index, model in enumerate(models):
                times[index].append(step_seconds(model, x, targets, args.precision))
        column = 1 if device.type == "cpu" else 0  # see the module doc: CPU seconds on the CPU, wall time on CUDA
        baseline = statistics.median(t[column] for t in times[0])
        for (model, name, *_), config, pairs in zip(built, args.models, times, strict=True):
            seconds = [t[column] for t in pairs]
            median = statistics.median(seconds)
            rows.append(
                {
                    "data": data,
                    "input": "x".join(map(str, shape[1:])),
                    "model": name,
                    "config": config,
                    "params": count_parameters(model),
                    "times_s": seconds,
                    "wall_times_s": [t[0] for t in pairs],
                    "median_s": median,
                    "ratio": median / baseline,
                }
            )
            print(f"{data} {name}: {1000 * median:.1f} ms/batch ({median / baseline:.3f} x the CNN)", flush=True)
        del models, built
    load.append(os.getloadavg()[0])
    table = render_markdown(rows, args, env, device_text, load)
    save_report("svhn", device, table, args, env, rows, load_average_1min={"before": load[0], "after": load[1]})


if __name__ == "__main__":
    main()
