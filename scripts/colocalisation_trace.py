"""How co-localisation runs succeed or fail over their steps: the runs of `python -m stn.colocalisation`, traced.

    PYTHONPATH=src python scripts/colocalisation_trace.py T:9 TC:7 [...] [key=value ...] \
        [--every 50] [--out results/evidence/colocalisation_trace.md]

Each VARIANT:CLASS is one optimisation run of the config's first seed (configs/colocalisation.yaml and the overrides),
exactly as the command runs it (same set, start and pairs, so its final % matches the command's table). Every
`--every` steps the trace records the % of windows localised (IoU > threshold), the mean IoU of the windows with
their digits' boxes and the spread of the window centres across the images (px, the std over images, mean of x and
y): a loc net that ignores its input puts every window at one place (spread 0), whatever the digits' places.
Per run it also evaluates the triplet loss (the same 4 x `optim.pairs` random pairs and crops for both) with every
window on its digit's true box and with the windows where the run ends: a run ending above the truth's loss was
stopped by its optimisation, not by the objective.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from stn.atomic import write_atomic
from stn.checkpoint import load_model
from stn.colocalisation import (
    CONFIG,
    Encoder,
    box_iou,
    colocalise,
    data_configs,
    encoder_run,
    load_set,
    optimizer_name,
    random_crops,
    triplet_hinge,
)
from stn.data.dataset import derived_seed
from stn.runinfo import cpu_model
from stn.transformers import AttentionTransform, warp


def trace_row(windows: dict[int, torch.Tensor], boxes: torch.Tensor, threshold: float) -> list[str]:
    """Per recorded step: '% localised / mean IoU / spread px'."""
    cells = []
    for step in sorted(windows):
        iou = box_iou(windows[step], boxes.float())
        centres = (windows[step][:, :2] + windows[step][:, 2:]) / 2
        cells.append(f"{100 * (iou > threshold).float().mean():.0f} / {iou.mean():.2f} / {centres.std(0).mean():.1f}")
    return cells


def loss_at_boxes(cfg, encoder: Encoder, images: torch.Tensor, boxes: torch.Tensor, seed: int) -> float:
    """The mean triplet loss with each image's window centred on its box [N, 4] (pixel edges), over 4 draws of the
    config's pairs and crops (the same draws for every call with this seed)."""
    inputs, size, half = images.float() / 255, int(cfg.transformer.out_size), (cfg.canvas - 1) / 2
    centres = (boxes[:, :2] + boxes[:, 2:]).float() / 2 - 0.5  # pixel-centre coordinates
    attention = AttentionTransform(float(cfg.transformer.fixed_scale))
    generator, losses = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        codes = encoder(warp(inputs, attention, centres / half - 1, (size, size)))
        for _ in range(4):
            anchors = torch.randint(len(inputs), (int(cfg.optim.pairs),), generator=generator)
            others = (anchors + torch.randint(1, len(inputs), anchors.shape, generator=generator)) % len(inputs)
            crops = encoder(random_crops(inputs[anchors], int(cfg.crop_size), generator))
            losses.append(triplet_hinge(codes[anchors], codes[others], crops, float(cfg.margin)).mean().item())
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="VARIANT:CLASS runs, then key=value overrides of the config")
    parser.add_argument("--every", type=int, default=50, help="record the windows every this many steps")
    parser.add_argument("--out", type=Path, default=Path("results/evidence/colocalisation_trace.md"))
    args = parser.parse_args()
    runs = [r.split(":") for r in args.runs if "=" not in r]
    overrides = [r for r in args.runs if "=" in r]
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(overrides))
    seed = int(cfg.pop("seed")) if "seed" in cfg else int(cfg.seeds[0])
    steps = int(cfg.optim.steps)
    cfg.figure_steps = list(range(0, steps + 1, args.every))
    started = time.perf_counter()
    record, run_dir = encoder_run(cfg)
    encoder = Encoder(load_model(run_dir), cfg.encoder.layers, cfg.encoder.normalise)
    source = Path(cfg.mnist_source) if cfg.mnist_source else None
    sets = {variant: load_set(data, source) for variant, data in data_configs(cfg, seed).items()}
    threshold = float(cfg.iou_threshold)
    rows = []
    for variant, digit in runs:
        if variant not in sets or int(digit) not in sets[variant]:
            parser.error(f"run {variant}:{digit}: variants {', '.join(sets)}, classes {list(cfg.classes)}")
        images, boxes = sets[variant][int(digit)]
        run = colocalise(cfg, encoder, images, boxes, derived_seed(seed, 11, int(digit)))
        trace = " | ".join(trace_row(run.windows, boxes, threshold))
        truth, end = (loss_at_boxes(cfg, encoder, images, b, int(digit)) for b in (boxes, run.windows[steps]))
        rows.append(f"| {variant} {digit} | {run.localised:.0f} | {truth:.0f} / {end:.0f} | {trace} |")
        print(rows[-1], flush=True)
    recorded = sorted(run.windows)
    command = " ".join(["python scripts/colocalisation_trace.py", *args.runs, f"--every {args.every}"])
    lines = [
        "# Co-localisation runs over their steps: % localised / mean IoU / window-centre spread (px)",
        "",
        f"Command: `PYTHONPATH=src {command}`; seed {seed}, the config of this commit otherwise: {steps} "
        f"{optimizer_name(cfg.optim)} steps (lr {cfg.optim.lr}) of {cfg.optim.pairs} pairs, loc net "
        f"{dict(cfg.transformer.loc_net)}. Each run is the one `python -m stn.colocalisation seed={seed}` makes for "
        f"its class. Encoder test error {record['test_error']:.2f}%. Machine: CPU ({cpu_model()}, "
        f"{platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
        "",
        f"| Run | Final % | Loss: true boxes / final windows | {' | '.join(f'step {s}' for s in recorded)} |",
        "|---|---:|---:|" + "---|" * len(recorded),
        *rows,
        "",
    ]
    write_atomic(args.out, "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
