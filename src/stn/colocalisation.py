"""Co-localisation (Appendix A.2): find the one digit class shared by 100 images, with no labels and no boxes.

An attention transformer (scale + translation) is trained, per run, on 100 images of one digit class so that its
windows, seen through a fixed digit encoder, look alike and unlike random crops (the triplet hinge loss of
PAPER.md §5); a digit counts as localised when its window overlaps the digit's true 28x28 box with IoU > 0.5.

    python -m stn.colocalisation [key=value ...]     (configs/colocalisation.yaml; make reproduce-colocalisation)

trains (or finds, cached) the encoder, runs every (variant, class) and writes results/colocalisation.{md,csv} and
results/figures/colocalisation_windows.png.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import stn
from stn.atomic import write_atomic
from stn.checkpoint import load_model
from stn.data.dataset import derived_seed
from stn.data.distortions import SOURCE_HALF, SOURCE_SIZE, DistortionSpec, generate
from stn.data.mnist import MNIST_MD5, load_mnist
from stn.data.store import ensure_stored, read_matching
from stn.data.store import write_atomic as store_atomic
from stn.runinfo import cpu_model
from stn.runtime import ALIGN_CORNERS
from stn.transformers import AttentionTransform, SpatialTransformer, StridedConvLocNet, warp

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "colocalisation.yaml"
GENERATOR_VERSION = 1
PAPER = {"T": "100", "TC": "75-93"}  # [paper] % localised: 100% on T, "between 75-93%" on TC by class


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ColocData:
    """One variant's stored set: images_per_run digits of every class, each in a canvas, with its true box."""

    variant: str
    spec: DistortionSpec
    classes: tuple[int, ...]
    per_class: int
    source_split: str
    seed: int
    root: Path

    def generation(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "variant": self.variant,
            "classes": list(self.classes),
            "per_class": self.per_class,
            "source_split": self.source_split,
            "distortion": self.spec.as_dict(),
        }

    @property
    def path(self) -> Path:
        short_hash = hashlib.sha256(json.dumps(self.generation(), sort_keys=True).encode()).hexdigest()[:8]
        return self.root / "colocalisation" / f"coloc_{self.variant.lower()}_seed{self.seed}_{short_hash}.h5"


def data_configs(cfg: DictConfig, seed: int) -> dict[str, ColocData]:
    """variant -> its ColocData of one seed (the config's shared distortion plus the variant's clutter), for the
    variants the config runs."""
    unknown = set(cfg.run_variants) - set(cfg.variants)
    if unknown:
        raise ValueError(f"run_variants {sorted(unknown)} are not among the variants {sorted(cfg.variants)}")
    return {
        variant: ColocData(
            variant=variant,
            spec=DistortionSpec.from_config(cfg.canvas, {**cfg.distortion, **cfg.variants[variant]}),
            classes=tuple(int(c) for c in cfg.classes),
            per_class=int(cfg.images_per_run),
            source_split=str(cfg.source_split),
            seed=int(seed),
            root=Path(cfg.data_dir),
        )
        for variant in cfg.run_variants
    }


def digit_boxes(spec: DistortionSpec, offset_px: Tensor) -> Tensor:
    """The placed 28x28 frames as [N, 4] boxes (x0, y0, x1, y1) in pixel-edge coordinates (pixel i spans [i, i+1])."""
    top_left = (offset_px + (spec.canvas_half - SOURCE_HALF)).round()  # as distortions.paste_digits places it
    return torch.cat([top_left, top_left + SOURCE_SIZE], 1)


def generate_set(data: ColocData, mnist_root: Path, mnist_source: Path | None) -> Path:
    """Draw per_class digits of every class from the source split, place them (and the clutter), store them."""
    mnist = load_mnist(mnist_root, mnist_source)
    images, labels = (
        (mnist.test_images, mnist.test_labels)
        if data.source_split == "test"
        else (
            mnist.train_images,
            mnist.train_labels,
        )
    )
    arrays = {}
    for digit in data.classes:
        generator = torch.Generator().manual_seed(derived_seed(data.seed, 10, digit))
        candidates = (labels == digit).nonzero().flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[: data.per_class]]
        # [paper] the clutter crops come from MNIST training digits
        canvases, params = generate(data.spec, images[chosen], generator, pool=mnist.train_images)
        arrays[f"{digit}/images"] = canvases.numpy()
        arrays[f"{digit}/boxes"] = digit_boxes(data.spec, params["offset_px"]).numpy()
        arrays[f"{digit}/source_index"] = chosen.numpy()
    attrs = {"name": f"coloc_{data.variant}", "seed": data.seed, "generation": data.generation()}
    store_atomic(data.path, arrays, {**attrs, "mnist_md5": MNIST_MD5, "stn_version": stn.__version__})
    return data.path


def load_set(data: ColocData, mnist_source: Path | None = None) -> dict[int, tuple[Tensor, Tensor]]:
    """class -> (uint8 images [N, 1, S, S], true boxes [N, 4]) of the stored (sha256-checked) set."""
    ensure_stored(data, lambda: generate_set(data, data.root, mnist_source))
    arrays, _ = read_matching(data)
    return {d: (torch.from_numpy(arrays[f"{d}/images"]), torch.from_numpy(arrays[f"{d}/boxes"])) for d in data.classes}


# ---------------------------------------------------------------- loss, windows, score


def triplet_hinge(anchors: Tensor, others: Tensor, crops: Tensor, margin: float = 1.0) -> Tensor:
    """Per pair (n, m): max(0, ||e(I_n^T) - e(I_m^T)||^2 - ||e(I_n^T) - e(I_n^rand)||^2 + margin) [paper]."""
    same = (anchors - others).pow(2).sum(1)
    crop = (anchors - crops).pow(2).sum(1)
    return F.relu(same - crop + margin)


def window_boxes(matrix: Tensor, canvas: int, out_size: int) -> Tensor:
    """Attention windows [N, 4] (x0, y0, x1, y1, pixel edges) of affine matrices [N, 2, 3] = [[s, 0, tx], [0, s, ty]]
    on a canvas: the span of the output's sample points in the input, widened by half a sample spacing each side."""
    scale, centre = matrix[:, 0, :1], matrix[:, :, 2]
    if ALIGN_CORNERS:  # -1 and 1 are the first and last pixel centres
        to_pixels, half_step = (canvas - 1) / 2, scale * (canvas - 1) / (out_size - 1) / 2
        low, high = (centre - scale + 1) * to_pixels + 0.5, (centre + scale + 1) * to_pixels + 0.5
        return torch.cat([low - half_step, high + half_step], 1)
    return torch.cat([(centre - scale + 1) * canvas / 2, (centre + scale + 1) * canvas / 2], 1)  # -1, 1: the edges


def box_iou(first: Tensor, second: Tensor) -> Tensor:
    """IoU of paired boxes [N, 4] (x0, y0, x1, y1)."""
    low, high = torch.maximum(first[:, :2], second[:, :2]), torch.minimum(first[:, 2:], second[:, 2:])
    inter = (high - low).clamp(min=0).prod(1)
    area = lambda boxes: (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(first) + area(second) - inter)


def random_crops(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One uniformly placed size x size crop of each image [N, C, S, S]."""
    corners = torch.randint(0, images.shape[-1] - size + 1, (len(images), 2), generator=generator)
    pairs = zip(images, corners.tolist(), strict=True)
    return torch.stack([image[:, y : y + size, x : x + size] for image, (x, y) in pairs])


def random_windows(images: Tensor, scale: Tensor, out_size: int, generator: torch.Generator) -> Tensor:
    """One attention window of each image [N, C, S, S] at the given scales [N] (normalised units: 1 = the whole
    canvas), uniformly placed where it fits (a window larger than the canvas: anywhere it covers the canvas),
    resampled as the transformer resamples: a random crop of the transformer's own window size."""
    slack = (1 - scale).abs().unsqueeze(1)
    centre = (2 * torch.rand(len(images), 2, generator=generator, dtype=scale.dtype) - 1) * slack
    theta = torch.cat([scale.unsqueeze(1), centre], 1)
    return warp(images, AttentionTransform(), theta, (out_size, out_size))


# ---------------------------------------------------------------- encoder and transformer


class Encoder(nn.Module):
    """A trained classifier's activations at `layers` (module names), flattened and concatenated; frozen.

    normalise: "none" (raw activations), "all" (the concatenation scaled to unit length: the largest layer dominates)
    or "layer" (each layer scaled to length 1 / sqrt(#layers), so each weighs alike and the whole has unit length)."""

    NORMALISE = ("none", "all", "layer")

    def __init__(self, model: nn.Module, layers: Sequence[str], normalise: str = "none") -> None:
        super().__init__()
        if normalise not in self.NORMALISE:
            raise ValueError(f"encoder.normalise={normalise!r}; valid: {', '.join(self.NORMALISE)}")
        self.model, self.layers, self.normalise = model.eval().requires_grad_(False), list(layers), normalise
        self._seen: list[Tensor] = []
        modules = dict(model.named_modules())
        for name in self.layers:
            modules[name].register_forward_hook(lambda module, args, output: self._seen.append(output.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        self._seen.clear()
        self.model(x)
        if self.normalise == "layer":
            return torch.cat([F.normalize(codes, dim=1) for codes in self._seen], 1) / len(self._seen) ** 0.5
        codes = torch.cat(self._seen, 1)
        return F.normalize(codes, dim=1) if self.normalise == "all" else codes


def encoder_run(cfg: DictConfig) -> tuple[dict, Path]:
    """Train the encoder with stn.train once (a finished run is found and returned as it is): its result record and
    run folder."""
    from hydra import compose, initialize_config_dir

    from stn.train import train

    overrides = [
        *cfg.encoder.overrides,
        f"paths.data_dir={cfg.data_dir}",
        f"paths.runs_dir={cfg.runs_dir}",
        f"paths.mnist_source={cfg.mnist_source or 'null'}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG.parent), job_name="colocalisation"):
        train_cfg = compose(config_name="train", overrides=overrides)
    return train(train_cfg), Path(train_cfg.run_dir)


class InsideAttention(AttentionTransform):
    """Attention whose window stays inside the image: the translation is (1 - s) tanh(theta's translation), so the
    window [t - s, t + s] (normalised) never leaves [-1, 1]; theta = 0 is still the centred window."""

    def matrix(self, theta: Tensor) -> Tensor:
        matrix = super().matrix(theta)
        scale, translation = matrix[:, :1, :1], matrix[:, :, 2:]
        return torch.cat([matrix[:, :, :2], (1 - scale).clamp(min=0) * translation.tanh()], 2)


REGRESSOR_INITS = ("zero", "default")
LOC_NET_INPUTS = ("unit", "standardised")


def attention_transformer(cfg: DictConfig) -> SpatialTransformer:
    """The attention transformer with the paper's loc net, centred; its scale fixed, or learnt from init_scale."""
    settings = cfg.transformer
    loc_net = StridedConvLocNet(1, (cfg.canvas, cfg.canvas), **settings.loc_net)
    size = int(settings.out_size)
    fixed = None if settings.fixed_scale is None else float(settings.fixed_scale)
    transform = InsideAttention(fixed) if settings.inside else AttentionTransform(fixed)
    transformer = SpatialTransformer(loc_net, transform, (size, size))
    if settings.regressor_init not in REGRESSOR_INITS:
        raise ValueError(f"transformer.regressor_init={settings.regressor_init!r}; valid: {', '.join(REGRESSOR_INITS)}")
    with torch.no_grad():
        if settings.regressor_init == "default":  # torch's Linear init for the weights; the bias stays centred
            bias = transformer.regressor.bias.clone()
            transformer.regressor.reset_parameters()
            transformer.regressor.bias.copy_(bias)
        if fixed is None:
            transformer.regressor.bias[0] = float(settings.init_scale)
    return transformer


def loc_net_inputs(settings: DictConfig, inputs: Tensor) -> Tensor:
    """What the loc net sees of a run's images (in [0, 1]): as they are, or standardised over the run's images."""
    if settings.loc_net_input not in LOC_NET_INPUTS:
        raise ValueError(f"transformer.loc_net_input={settings.loc_net_input!r}; valid: {', '.join(LOC_NET_INPUTS)}")
    if settings.loc_net_input == "unit":
        return inputs
    return (inputs - inputs.mean()) / inputs.std()


# ---------------------------------------------------------------- one optimisation run


@dataclass
class RunResult:
    localised: float  # % of the images whose final window has IoU > threshold with the true box
    windows: dict[int, Tensor]  # step -> windows [N, 4] (figure_steps)
    loss: float  # the last step's mean triplet loss


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(settings: DictConfig, parameters) -> torch.optim.Optimizer:
    """optim.name: Adam, or SGD with optim.momentum (the paper says SGD and gives no settings)."""
    if settings.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={settings.name!r}; valid: {', '.join(OPTIMIZERS)}")
    if settings.name == "adam":
        return torch.optim.Adam(parameters, lr=float(settings.lr))
    return torch.optim.SGD(parameters, lr=float(settings.lr), momentum=float(settings.momentum))


def colocalise(cfg: DictConfig, encoder: Encoder, images: Tensor, boxes: Tensor, seed: int) -> RunResult:
    """One run: train a fresh attention transformer on the images (uint8 [N, 1, S, S]) with the triplet loss."""
    torch.manual_seed(seed)
    transformer = attention_transformer(cfg)
    optimizer = make_optimizer(cfg.optim, transformer.parameters())
    generator = torch.Generator().manual_seed(seed)
    inputs, count, steps = images.float() / 255, len(images), int(cfg.optim.steps)
    size = int(cfg.transformer.out_size)
    windows, loss = {}, torch.zeros(())
    located = loc_net_inputs(cfg.transformer, inputs)

    def record(step: int) -> None:
        if step in cfg.figure_steps or step == steps:
            with torch.no_grad():
                _, theta = transformer(inputs, return_theta=True, features=transformer.loc_net(located))
            matrix = transformer.transform.matrix(theta)
            windows[step] = window_boxes(matrix, cfg.canvas, int(cfg.transformer.out_size))

    for step in range(steps):
        record(step)
        anchors = torch.randint(count, (int(cfg.optim.pairs),), generator=generator)
        others = (anchors + torch.randint(1, count, anchors.shape, generator=generator)) % count  # m != n
        warped, theta = transformer(inputs, return_theta=True, features=transformer.loc_net(located))
        codes = encoder(warped)
        if cfg.crop_size == "window":  # the crop at the anchor's own window scale, a sample: no gradient through it
            scale = transformer.transform.matrix(theta)[anchors, 0, 0].detach()
            crops = encoder(random_windows(inputs[anchors], scale, size, generator))
        else:
            crops = encoder(random_crops(inputs[anchors], int(cfg.crop_size), generator))
        targets = codes[others] if cfg.optim.through_other else codes[others].detach()  # m: moved too, or a target
        loss = triplet_hinge(codes[anchors], targets, crops, float(cfg.margin)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss.detach()
    record(steps)
    hits = box_iou(windows[steps], boxes.float()) > float(cfg.iou_threshold)
    return RunResult(100.0 * hits.float().mean().item(), windows, loss.item())


# ---------------------------------------------------------------- the command


def draw_windows(variant_runs: Mapping[str, tuple[Tensor, RunResult]], steps: Sequence[int], count: int):
    """Per variant, `count` images (rows) with the window at each step (columns), as the paper's figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = count * len(variant_runs)
    figure = Figure(figsize=(1.2 * len(steps), 1.2 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(steps), squeeze=False)
    for block, (variant, (images, run)) in enumerate(variant_runs.items()):
        for i in range(count):
            for column, step in enumerate(steps):
                axis = axes[block * count + i, column]
                axis.imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
                x0, y0, x1, y1 = run.windows[step][i].tolist()
                axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="tab:orange"))
                axis.set_xticks([])
                axis.set_yticks([])
                if i == 0:
                    axis.set_title(f"{variant}, step {step}", fontsize=8)
    return figure


def optimizer_name(settings: DictConfig) -> str:
    """How the rendered tables name the optimiser."""
    return "Adam" if settings.name == "adam" else f"SGD (momentum {settings.momentum})"


def spread(values: Sequence[float], digits: int = 1) -> str:
    """One seed's value, or the mean ± sample std over several seeds."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def render_tables(
    cfg: DictConfig,
    scores: dict[str, dict[int, list[float]]],
    encoder: dict,
    seconds: float,
    overrides: Sequence[str] = (),
) -> tuple[str, str]:
    """The markdown and CSV of % localised per class and variant (per seed, and their mean ± std), against the
    paper; the mean row averages the classes within each seed first."""
    variants, seeds = list(scores), [int(s) for s in cfg.seeds]
    lines = [
        "# Co-localisation (Appendix A.2) — % of the 100 digits localised (IoU > 0.5)",
        "",
        f"| Class | {' | '.join(f'{v} (ours) | {v} (paper)' for v in variants)} |",
        "|---|" + "---|---|" * len(variants),
    ]
    table = io.StringIO()
    writer = csv.writer(table)
    per_seed = [f"{v}_seed{s}" for v in variants for s in seeds]
    writer.writerow(["class", *[f"{v}_{who}" for v in variants for who in ("ours", "std", "paper")], *per_seed])
    for digit in cfg.classes:
        values = {v: scores[v][digit] for v in variants}
        cells = [f"{spread(values[v], 0 if len(seeds) == 1 else 1)} | {PAPER.get(v, '')}" for v in variants]
        lines.append(f"| {digit} | {' | '.join(cells)} |")
        summary = [
            (
                f"{np.mean(values[v]):.1f}",
                f"{np.std(values[v], ddof=1):.1f}" if len(seeds) > 1 else "",
                PAPER.get(v, ""),
            )
            for v in variants
        ]
        writer.writerow(
            [digit, *[x for row in summary for x in row], *[f"{x:.0f}" for v in variants for x in values[v]]]
        )
    seed_means = {v: np.mean([scores[v][d] for d in cfg.classes], axis=0).tolist() for v in variants}
    means = [f"{spread(seed_means[v])} | {PAPER.get(v, '')}" for v in variants]
    lines.append(f"| mean | {' | '.join(means)} |")
    by_seed = "; ".join(f"{v}: " + " / ".join(f"{m:.1f}" for m in seed_means[v]) for v in variants)
    lines += [
        "",
        f"Seeds {', '.join(map(str, seeds))}: each seed draws its own T and TC sets, transformer starts and pairs"
        + (
            f"; a cell is the mean ± sample std over the {len(seeds)} seeds (a run tends to localise all or none of "
            f"its digits, so one seed's cell is a coarse estimate); the class means per seed, {by_seed}."
            if len(seeds) > 1
            else "."
        ),
        f"Command: `{' '.join(['python -m stn.colocalisation', *overrides])}` (make reproduce-colocalisation); "
        f"one run per seed, class and variant: {cfg.images_per_run} images, {cfg.optim.steps} "
        f"{optimizer_name(cfg.optim)} steps (lr {cfg.optim.lr}) of {cfg.optim.pairs} random pairs, margin "
        f"{cfg.margin}, transformer output {cfg.transformer.out_size}px, window scale "
        f"{cfg.transformer.fixed_scale or 'learnt'}, random crop {cfg.crop_size}, encoder codes normalised: "
        f"{cfg.encoder.normalise}, loc net input {cfg.transformer.loc_net_input}, regressor start "
        f"{cfg.transformer.regressor_init} (configs/colocalisation.yaml). "
        f"Encoder: the Table 1 CNN trained on plain MNIST ({' '.join(cfg.encoder.overrides)}): "
        f"test error {encoder['test_error']:.2f}%, "
        f"{encoder['params']:,} parameters, its run in {encoder['run_dir']}.",
        f"Machine: CPU ({cpu_model()}, {platform.machine()}), no GPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); wall time {seconds / 60:.1f} min (all runs, plus the encoder's "
        "training unless it was cached). Paper: 100% on T, 75-93% on TC "
        "depending on the class (per-class values not recovered).",
        "",
    ]
    return "\n".join(lines), table.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stn.colocalisation", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/colocalisation.yaml")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(args.overrides))
    if "seed" in cfg:  # one seed, as the evidence files' commands (seed=N) ran it
        cfg.seeds = [int(cfg.pop("seed"))]
    started = time.perf_counter()
    record, run_dir = encoder_run(cfg)
    print(f"encoder: test error {record['test_error']:.2f}% ({record['params']:,} parameters), {run_dir}")
    encoder = Encoder(load_model(run_dir), cfg.encoder.layers, cfg.encoder.normalise)
    source = None if cfg.mnist_source in (None, "") else Path(cfg.mnist_source)
    scores: dict[str, dict[int, list[float]]] = {}
    shown: dict[str, tuple[Tensor, RunResult]] = {}
    for seed in (int(s) for s in cfg.seeds):
        for variant, data in data_configs(cfg, seed).items():
            sets = load_set(data, source)
            for digit in data.classes:
                images, boxes = sets[digit]
                run = colocalise(cfg, encoder, images, boxes, derived_seed(seed, 11, digit))
                scores.setdefault(variant, {}).setdefault(digit, []).append(run.localised)
                print(
                    f"seed {seed}, {variant} class {digit}: {run.localised:.0f}% localised (last loss {run.loss:.3f})"
                )
                shown.setdefault(variant, (images, run))  # the figure: the first seed's first class
    seconds = time.perf_counter() - started
    where = Path("<runs_dir>") / run_dir.relative_to(cfg.runs_dir)  # no path of this machine in the result file
    markdown, table = render_tables(cfg, scores, {**record, "run_dir": str(where)}, seconds, args.overrides)
    out = Path(cfg.out)
    for path, text in ((out / "colocalisation.md", markdown), (out / "colocalisation.csv", table)):
        write_atomic(path, text)
        print(f"wrote {path}")
    steps = [int(s) for s in cfg.figure_steps if s <= cfg.optim.steps]
    figure = draw_windows(shown, steps, int(cfg.figure_images))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    write_atomic(out / "figures" / "colocalisation_windows.png", buffer.getvalue())
    print(f"wrote {out / 'figures' / 'colocalisation_windows.png'}")


if __name__ == "__main__":
    main()
