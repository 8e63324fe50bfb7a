"""Generation speed of the distorted MNIST sets: our batched generator vs a per-image torchvision pipeline.

    python -m stn.bench.data [--device auto|cpu|cuda] [--variants R RTS P E TC] [--subset 2000]
                             [--repeats 3] [--out results/bench] [override ...]

Redraw: one epoch of `data.redraw_train=true`, i.e. stn.data.dataset.Redraw drawing fresh distortions of the 50k
training digits on the device (what fresh training data costs per epoch, on top of the training step itself).
Ours: sampling every parameter and rendering all 70k images of a variant (50k train + 10k val + 10k test
digits) with stn.data.distortions.generate on the device, as `make data` and the per-epoch redraw do (no
storage). Per-image: a straightforward torchvision.transforms.v2 pipeline applied to one uint8 image at a time
on the CPU (RandomRotation; Pad + RandomAffine; RandomAffine + RandomPerspective; RandomAffine +
ElasticTransform; for TC a Python loop pasting the digit and six patches), timed on the first `subset` digits
and extrapolated linearly to 70k. Both run in this process with the same torch threads; each takes the best of
`repeats` runs (blocks of the subset for the per-image pipeline), which filters out other processes' load on a
shared machine. Written atomically to <out>/data_<device>.md, with the timings and the machine in .json.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms import v2

from stn.bench import save_report
from stn.data.dataset import DataConfig, Redraw
from stn.data.distortions import DistortionSpec, generate
from stn.data.make import VARIANTS, compose_config
from stn.data.mnist import load_mnist
from stn.runinfo import environment
from stn.runtime import pick_device

TOTAL = 70_000
TRAIN = 50_000
BILINEAR = v2.InterpolationMode.BILINEAR


def per_image_pipeline(variant: str, spec: DistortionSpec, pool: Tensor) -> Callable[[Tensor], Tensor]:
    """What one would write without batching: a transform applied to each uint8 [1, 28, 28] image."""
    pad = (spec.canvas - 28) // 2
    if variant == "R":
        return v2.RandomRotation(spec.angle_deg, interpolation=BILINEAR)
    if variant == "RTS":
        shift = pad / spec.canvas
        affine = v2.RandomAffine(spec.angle_deg, (shift, shift), spec.scale, interpolation=BILINEAR)
        return v2.Compose([v2.Pad(pad), affine])
    scale = v2.RandomAffine(0, scale=spec.scale, interpolation=BILINEAR)
    if variant == "P":
        return v2.Compose([scale, v2.RandomPerspective(0.5, p=1.0, interpolation=BILINEAR)])
    if variant == "E":
        return v2.Compose([scale, v2.ElasticTransform(alpha=34.0, sigma=4.0, interpolation=BILINEAR)])

    def paste(image: Tensor) -> Tensor:
        canvas = torch.zeros(1, spec.canvas, spec.canvas, dtype=torch.int16)
        x, y = random.randint(0, spec.canvas - 28), random.randint(0, spec.canvas - 28)
        canvas[:, y : y + 28, x : x + 28] += image
        size = spec.clutter_size
        for _ in range(spec.clutter_count):
            source = pool[random.randrange(len(pool))]
            cx, cy = random.randint(0, 28 - size), random.randint(0, 28 - size)
            px, py = random.randint(0, spec.canvas - size), random.randint(0, spec.canvas - size)
            canvas[:, py : py + size, px : px + size] += source[cy : cy + size, cx : cx + size]
        return canvas.clamp_(max=255).to(torch.uint8)

    return paste


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(spec: DistortionSpec, digits: Tensor, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` seconds to sample and render the three splits on `device`, as generate_dataset does."""
    digits = digits.to(device)
    pool = digits[:TRAIN]
    splits = [(pool, torch.arange(TRAIN, device=device)), (digits[TRAIN:60_000], None), (digits[60_000:], None)]
    generate(spec, digits[:256], torch.Generator(device).manual_seed(1), pool)  # warm-up (lazy inits, caches)
    times = []
    for _ in range(repeats):
        _synchronise(device)
        start = time.perf_counter()
        for seed, (split, pool_index) in enumerate(splits):
            generate(spec, split, torch.Generator(device).manual_seed(seed), pool, pool_index)
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return min(times)


def time_redraw(cfg: DataConfig, train_digits: Tensor, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` seconds for one epoch's redraw of the training digits (as the trainer calls it)."""
    redraw = Redraw(cfg, train_digits)
    redraw(0, device)  # warm-up: moves the digits to the device once, as in training
    times = []
    for epoch in range(1, repeats + 1):
        _synchronise(device)
        start = time.perf_counter()
        redraw(epoch, device)
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return min(times)


def time_per_image(pipeline: Callable[[Tensor], Tensor], digits: Tensor, repeats: int) -> float:
    """Seconds per image of the per-image pipeline: the best of `repeats` blocks that split `digits`."""
    random.seed(0)
    torch.manual_seed(0)
    per_image = []
    for block in digits[:, None].chunk(repeats):
        start = time.perf_counter()
        for image in block:
            pipeline(image)
        per_image.append((time.perf_counter() - start) / len(block))
    return min(per_image)


def render_markdown(rows: list[dict], args: argparse.Namespace, env: dict, device_text: str) -> str:
    lines = [
        f"# Distorted MNIST generation, 70k images per variant ({device_text})",
        "",
        f"`python -m stn.bench.data --device {args.device} --subset {args.subset} --repeats {args.repeats}`",
        "",
        "Ours: stn.data.distortions.generate (per-sample parameters; batched warps of the project's transformer, "
        f"TC's whole-pixel placement as a batched paste) on "
        f"{device_text}, all {TOTAL:,} images (50k train + 10k val + 10k test), best of {args.repeats} runs after a "
        f"warm-up. Per-image: torchvision.transforms.v2 on one uint8 image at a time on the CPU (TC: a Python paste "
        f"loop), timed on {args.subset:,} images in {args.repeats} blocks, the best block's time per image "
        f"extrapolated linearly to {TOTAL:,}. torch {torch.__version__}, {env['torch_threads']} threads, "
        f"CPU: {env['cpu']}; load average {args.load_before:.1f} before and {args.load_after:.1f} after "
        f"(other processes), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.",
        "",
        "| variant | canvas | ours: s / 70k | ours: images/s | per-image: s / 70k (extrapolated) | speed-up "
        "| redraw: s / epoch (50k) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['canvas']} | {row['ours_s']:.2f} | {TOTAL / row['ours_s']:,.0f} | "
            f"{row['per_image_s_70k']:.1f} | {row['speedup']:.0f}x | {row['redraw_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), type=str.upper, choices=VARIANTS)
    parser.add_argument("--subset", type=int, default=2000, help="images timed through the per-image pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs / per-image blocks")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.mnist_source=/data/mnist")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= args.subset <= TOTAL:
        parser.error(f"need 1 <= --repeats <= --subset <= {TOTAL}")

    args.load_before = os.getloadavg()[0]  # a shared machine's load skews timings: recorded with them
    device = pick_device(args.device)
    env = environment(device)
    device_text = env["gpu"] or f"CPU, {env['cpu']}"
    rows = []
    digits = None
    for variant in args.variants:
        cfg = DataConfig.from_cfg(compose_config(variant, args.overrides).data)
        if digits is None:
            mnist = load_mnist(cfg.root, cfg.mnist_source)
            digits = torch.cat([mnist.train_images, mnist.test_images])
        ours = time_ours(cfg.spec, digits, device, args.repeats)
        pipeline = per_image_pipeline(variant, cfg.spec, digits[:TRAIN])
        per_image_70k = time_per_image(pipeline, digits[: args.subset], args.repeats) * TOTAL
        redraw = time_redraw(cfg, digits[:TRAIN], device, args.repeats)
        rows.append(
            {
                "variant": variant,
                "canvas": cfg.spec.canvas,
                "ours_s": ours,
                "per_image_s_70k": per_image_70k,
                "speedup": per_image_70k / ours,
                "redraw_s": redraw,
            }
        )
        print(
            f"{variant}: ours {ours:.2f} s, per-image {per_image_70k:.1f} s (extrapolated), "
            f"{per_image_70k / ours:.0f}x, redraw {redraw:.3f} s / epoch",
            flush=True,
        )

    args.load_after = os.getloadavg()[0]
    table = render_markdown(rows, args, env, device_text)
    save_report("data", device, table, args, env, rows)


if __name__ == "__main__":
    main()
