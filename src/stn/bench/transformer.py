"""Forward+backward throughput of our grid generators + sampler, beside torch's and kornia's equivalents.

    python -m stn.bench.transformer [--device auto|cpu|cuda] [--batch 256] [--sizes 42 60]
                                    [--warmup 3] [--repeats 15] [--out results/bench]

One step warps a batch of 1-channel square images, each by its own random transform near the identity (grid +
bilinear sampling), then backpropagates to the transform parameters and the images. All methods run in the same
process on the same inputs, their repeats interleaved; the table gives the median (and fastest) of `repeats` steps
after `warmup` (CUDA is synchronised around each step). Written atomically to <out>/transformer_<device>.md, with raw
timings and the machine in .json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from stn.bench import save_report
from stn.runinfo import environment
from stn.runtime import ALIGN_CORNERS, pick_device
from stn.transformers import TRANSFORMS, TPSTransform, make_transform, warp

try:
    import kornia
    from kornia.geometry.conversions import denormalize_homography
    from kornia.geometry.transform import get_tps_transform, warp_affine, warp_image_tps, warp_perspective
except ImportError as error:  # kornia is a dev dependency, used only to compare against
    raise SystemExit(
        "the benchmark compares against kornia: install the dev extras (pip install -e '.[dev]')"
    ) from error

Run = Callable[[Tensor, Tensor], Tensor]  # (images, parameters) -> warped images


def _kornia_pixel_matrix(normalised: Tensor, size: int) -> Tensor:
    """Our target->source normalised 3x3 maps as kornia's source->destination pixel homographies."""
    return denormalize_homography(torch.linalg.inv(normalised), (size, size), (size, size), align_corners=ALIGN_CORNERS)


def methods(batch: int, size: int, device: torch.device, generator: torch.Generator) -> dict[str, tuple[Tensor, Run]]:
    """Each method's parameters (a leaf that receives gradients) and its warp, for one batch of size x size images."""

    def near(identity: Tensor) -> Tensor:
        noise = 0.05 * torch.randn(batch, identity.numel(), generator=generator)
        return identity.flatten() + noise

    out: dict[str, tuple[Tensor, Run]] = {}
    for name in TRANSFORMS:
        transform = make_transform(name)
        out[f"stn {name}"] = (near(transform.identity()), lambda x, p, t=transform: warp(x, t, p))

    affine = near(make_transform("affine").identity())
    out["torch affine_grid + grid_sample"] = (
        affine,
        lambda x, p: F.grid_sample(
            x, F.affine_grid(p.view(-1, 2, 3), list(x.shape), align_corners=ALIGN_CORNERS), align_corners=ALIGN_CORNERS
        ),
    )
    last_row = torch.tensor([0.0, 0.0, 1.0]).expand(batch, 1, 3)
    affine_pixels = _kornia_pixel_matrix(torch.cat([affine.view(-1, 2, 3), last_row], dim=1), size)[:, :2]
    out["kornia warp_affine"] = (
        affine_pixels,
        lambda x, p: warp_affine(x, p, (size, size), align_corners=ALIGN_CORNERS),
    )
    projective = make_transform("projective")
    homography = _kornia_pixel_matrix(projective.matrix(near(projective.identity())), size)
    out["kornia warp_perspective"] = (
        homography,
        lambda x, p: warp_perspective(x, p, (size, size), align_corners=ALIGN_CORNERS),
    )
    # kornia solves the TPS system per batch from the point pairs (its documented order for image warps).
    tps = TPSTransform()
    targets = tps.control_points.float().expand(batch, -1, -1).to(device)

    def kornia_tps(x: Tensor, sources: Tensor) -> Tensor:
        kernel_weights, affine_weights = get_tps_transform(targets, sources)
        return warp_image_tps(x, sources, kernel_weights, affine_weights, align_corners=ALIGN_CORNERS)

    out["kornia get_tps_transform + warp_image_tps"] = (near(tps.identity()).view(batch, -1, 2), kornia_tps)
    return {name: (params.to(device).requires_grad_(), run) for name, (params, run) in out.items()}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(run: Run, images: Tensor, params: Tensor) -> float:
    """Seconds of one forward+backward step (gradients w.r.t. the images and the parameters)."""
    images.grad = params.grad = None
    _synchronise(images.device)
    start = time.perf_counter()
    out = run(images, params)
    out.backward(torch.ones_like(out))
    _synchronise(images.device)
    return time.perf_counter() - start


def time_methods(cases: dict[str, tuple[Tensor, Run]], images: Tensor, warmup: int, repeats: int) -> dict[str, list]:
    """Step times per method. Repeats go round-robin over the methods, so load from other processes on a shared
    machine spreads over all of them instead of skewing whichever method ran at the time."""
    for params, run in cases.values():
        for _ in range(warmup):
            step_seconds(run, images, params)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (params, run) in cases.items():
            times[name].append(step_seconds(run, images, params))
    return times


def render_markdown(
    rows: list[dict], sizes: list[int], env: dict, args: argparse.Namespace, device_text: str, load: list[float]
) -> str:
    names = list(dict.fromkeys(row["method"] for row in rows))
    by_key = {(row["method"], row["size"]): row for row in rows}
    header = " | ".join(f"{s}x{s} images/s | {s}x{s} ms/batch | {s}x{s} best ms" for s in sizes)
    lines = [
        f"# Spatial transformer forward+backward throughput ({device_text})",
        "",
        f"`python -m stn.bench.transformer --device {args.device} --batch {args.batch} "
        f"--sizes {' '.join(map(str, sizes))} --warmup {args.warmup} --repeats {args.repeats}`",
        "",
        f"Batch {args.batch}, 1 channel, per-sample parameters near the identity; grid + bilinear sampling, backward "
        f"to parameters and input; images/s and ms/batch from the median of {args.repeats} steps, best ms the "
        f"fastest step (the least disturbed by other load). torch {torch.__version__}, kornia "
        f"{kornia.__version__}, {env['torch_threads']} threads, CPU: {env['cpu']}; 1-minute load average "
        f"{load[0]:.1f} before and {load[1]:.1f} after (other processes on a shared machine slow every row).",
        "",
        f"| method | {header} |",
        "|---|" + "---:|---:|---:|" * len(sizes),
    ]
    for name in names:
        cells = []
        for size in sizes:
            row = by_key[(name, size)]
            cells.append(
                f"{row['images_per_s']:,.0f} | {1000 * row['median_s']:.2f} | {1000 * min(row['times_s']):.2f}"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[42, 60], help="square input sides (MNIST RTS, TC)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or min(args.sizes) < 2:
        parser.error("need --batch >= 1, --repeats >= 1, --warmup >= 0 and every size >= 2")

    device = pick_device(args.device)
    env = environment(device)
    device_text = env["gpu"] or f"CPU, {env['cpu']}"
    generator = torch.Generator().manual_seed(0)
    load = [os.getloadavg()[0]]
    rows = []
    for size in args.sizes:
        images = torch.rand(args.batch, 1, size, size, generator=generator).to(device).requires_grad_()
        cases = methods(args.batch, size, device, generator)
        for name, times in time_methods(cases, images, args.warmup, args.repeats).items():
            median = statistics.median(times)
            rows.append({"method": name, "size": size, "times_s": times, "median_s": median})
            rows[-1]["images_per_s"] = args.batch / median
            print(f"{size}x{size} {name}: {args.batch / median:,.0f} images/s", flush=True)

    load.append(os.getloadavg()[0])
    table = render_markdown(rows, args.sizes, env, args, device_text, load)
    save_report(
        "transformer",
        device,
        table,
        args,
        env,
        rows,
        kornia=kornia.__version__,
        load_average_1min={"before": load[0], "after": load[1]},
    )


if __name__ == "__main__":
    main()
