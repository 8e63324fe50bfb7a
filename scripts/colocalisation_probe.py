"""Why the co-localisation windows collapse onto blank canvas: three probes of the triplet loss on real T digits.

    PYTHONPATH=src python scripts/colocalisation_probe.py [key=value ...]   (configs/colocalisation.yaml overrides)

writes results/evidence/colocalisation_collapse.md. The true boxes are used here only to probe the loss (where its
windows could be), never in training. Probes, per class (the config's encoder, crop, margin and 28px window):
1. the mean triplet loss with every window on its digit's true box, on blank canvas, and centred (the start);
2. at the centred start, the share of windows whose descent direction (minus the loss's gradient w.r.t. the window's
   translation) points toward their own digit: for the crop term, the pair term and their sum, the pair term's
   gradient taken through both windows of each pair (the full gradient) or through the anchor only;
3. free windows (one translation per image, no loc net), Adam from the centred start: % localised after the steps.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from stn.atomic import write_atomic
from stn.checkpoint import load_model
from stn.colocalisation import (
    CONFIG,
    Encoder,
    box_iou,
    data_configs,
    encoder_run,
    load_set,
    random_crops,
    triplet_hinge,
    window_boxes,
)
from stn.runinfo import cpu_model
from stn.transformers import AttentionTransform, warp

CLASSES = (1, 4, 8)
PAIRS_PER_IMAGE = 4
FREE_STEPS, FREE_LR = 200, 0.01


def pairs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    anchors = torch.arange(count).repeat(PAIRS_PER_IMAGE)
    return anchors, (anchors + torch.randint(1, count, anchors.shape, generator=generator)) % count


def main() -> None:
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(sys.argv[1:]))
    started = time.perf_counter()
    record, run_dir = encoder_run(cfg)
    encoder = Encoder(load_model(run_dir), cfg.encoder.layers, cfg.encoder.normalise)
    sets = load_set(data_configs(cfg, cfg.seeds[0])["T"], Path(cfg.mnist_source) if cfg.mnist_source else None)
    attention, size, crop = AttentionTransform(float(cfg.transformer.fixed_scale)), 28, int(cfg.crop_size)
    centre = (cfg.canvas - 1) / 2  # pixel centre of the canvas; normalised units are (px - centre) / centre
    rows_loss, rows_grad, rows_free = [], [], []
    for digit in CLASSES:
        images, boxes = sets[digit]
        x, count = images.float() / 255, len(images)
        to_digit = (boxes[:, :2].float() + (size - 1) / 2 - centre) / centre  # the digit's box centre, normalised
        generator = torch.Generator().manual_seed(digit)
        anchors, others = pairs(count, generator)
        crops = encoder(random_crops(x[anchors], crop, generator)).detach()

        def loss_at(
            translation: torch.Tensor,
            through_other: bool = True,
            term: str = "sum",
            x: torch.Tensor = x,
            anchors: torch.Tensor = anchors,
            others: torch.Tensor = others,
            crops: torch.Tensor = crops,
        ) -> torch.Tensor:
            """The loss (or one term of it) with the windows at `translation` [N, 2], this class's pairs and crops."""
            codes = encoder(warp(x, attention, translation, (size, size)))
            targets = codes[others] if through_other else codes[others].detach()
            if term == "sum":
                return triplet_hinge(codes[anchors], targets, crops, float(cfg.margin)).mean()
            same, away = (codes[anchors] - targets).pow(2).sum(1), (codes[anchors] - crops).pow(2).sum(1)
            active = (same - away + float(cfg.margin) > 0).float()
            return (active * (same if term == "pair" else -away)).mean()

        with torch.no_grad():
            oracle = loss_at(to_digit).item()
            blank_codes = encoder(torch.zeros(len(anchors), 1, size, size))
            blank = triplet_hinge(blank_codes, blank_codes, crops, float(cfg.margin)).mean().item()
            start = loss_at(torch.zeros(count, 2)).item()
        rows_loss.append(f"| {digit} | {oracle:.3f} | {blank:.3f} | {start:.3f} |")

        shares = []
        for term, through_other in (("crop", True), ("pair", True), ("sum", True), ("pair", False), ("sum", False)):
            translation = torch.zeros(count, 2, requires_grad=True)
            loss_at(translation, through_other, term).backward()
            moved = translation.grad.abs().sum(1) > 0
            toward = F.cosine_similarity(-translation.grad[moved], to_digit[moved], dim=1) > 0
            shares.append(f"{100 * toward.float().mean().item():.0f}%")
        rows_grad.append(f"| {digit} | {' | '.join(shares)} |")

        localised = []
        for through_other in (True, False):
            translation = torch.zeros(count, 2, requires_grad=True)
            optimizer = torch.optim.Adam([translation], lr=FREE_LR)
            step_generator = torch.Generator().manual_seed(digit)
            for _ in range(FREE_STEPS):
                anchors_s, others_s = pairs(count, step_generator)
                codes = encoder(warp(x, attention, translation, (size, size)))
                targets = codes[others_s] if through_other else codes[others_s].detach()
                step_crops = encoder(random_crops(x[anchors_s], crop, step_generator))
                loss = triplet_hinge(codes[anchors_s], targets, step_crops, float(cfg.margin)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            windows = window_boxes(attention.matrix(translation.detach()), cfg.canvas, size)
            localised.append(f"{100 * (box_iou(windows, boxes.float()) > cfg.iou_threshold).float().mean():.0f}%")
        rows_free.append(f"| {digit} | {' | '.join(localised)} |")
        print(rows_loss[-1], rows_grad[-1], rows_free[-1], flush=True)

    text = "\n".join(
        [
            "# Co-localisation: why the windows collapse onto blank canvas (T, probes of the triplet loss)",
            "",
            f"Command: `PYTHONPATH=src python scripts/colocalisation_probe.py {' '.join(sys.argv[1:])}`".rstrip()
            + f"; encoder: test error {record['test_error']:.2f}% ({run_dir.name}, {' '.join(cfg.encoder.overrides)});"
            f" 28px window, {crop}px random crop, margin {cfg.margin}, unit codes: {cfg.encoder.normalise}, "
            f"{PAIRS_PER_IMAGE} random pairs per image. Machine: CPU ({cpu_model()}), {torch.get_num_threads()} "
            f"thread(s), torch {torch.__version__}, {platform.python_version()}; "
            f"{(time.perf_counter() - started) / 60:.1f} min.",
            "",
            "1. Mean triplet loss with every window on its digit's true box, on blank canvas, and centred (the start):",
            "",
            "| Class | on the digit | blank | centred (start) |",
            "|---|---|---|---|",
            *rows_loss,
            "",
            "2. At the centred start, the share of windows whose descent direction points toward their own digit:",
            "",
            "| Class | crop term | pair term, full gradient | loss, full gradient | pair term, anchor only "
            "| loss, anchor only |",
            "|---|---|---|---|---|---|",
            *rows_grad,
            "",
            f"3. Free windows (a translation per image, no loc net), {FREE_STEPS} Adam steps (lr {FREE_LR}) from the "
            "centred start: % localised (IoU > 0.5)",
            "",
            "| Class | full gradient | anchor only |",
            "|---|---|---|",
            *rows_free,
            "",
            "Reading: the loss is lowest with the windows on their digits, but the start (windows holding parts of "
            "their digits at scattered offsets) is worse than blank canvas, and there the pair term pulls most windows "
            "off their digit (toward each other's emptier contents) more than the crop term pushes them on. A blank "
            "window then gets no gradient at all. With the gradient through the anchor only, the pull on each window "
            "is halved and the crop term can win.",
            "",
        ]
    )
    out = Path(cfg.out) / "evidence" / "colocalisation_collapse.md"
    write_atomic(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
