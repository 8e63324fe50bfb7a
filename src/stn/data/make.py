"""Generate the stored distorted MNIST sets (`make data`) and a preview figure of each.

    python -m stn.data.make [--variants R RTS P E TC] [--no-figures] [override ...]

Configs come from configs/make_data.yaml + configs/data/mnist_<variant>.yaml through Hydra, so the values, the
environment overrides (STN_DATA_DIR, MNIST_SOURCE) and the file names are exactly those the trainer uses.
Overrides apply to every variant, e.g. `data.seed=1 paths.data_dir=/scratch/data`. An existing file is verified
(checksum) and left untouched.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig

from stn.atomic import write_atomic
from stn.data.dataset import DataConfig, generate_dataset, read_dataset

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
VARIANTS = ("R", "RTS", "P", "E", "TC")
PREVIEW_ROWS, PREVIEW_COLS = 4, 10


def preview_png(images: np.ndarray, labels: np.ndarray, title: str) -> bytes:
    """A grid of the first PREVIEW_ROWS x PREVIEW_COLS images (uint8 [N, 1, S, S]) with their labels, as PNG."""
    figure = Figure(figsize=(PREVIEW_COLS * 0.9, PREVIEW_ROWS * 1.0 + 0.4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(PREVIEW_ROWS, PREVIEW_COLS)
    for index, ax in enumerate(axes.flat):
        ax.imshow(images[index, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(str(int(labels[index])), fontsize=8, pad=2)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.05, hspace=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def ink_on_border(images: np.ndarray) -> float:
    """Fraction of images (uint8 [N, 1, S, S]) with ink on their outermost pixel ring: the share of digits the
    canvas may have cut (about 2% of plain MNIST digits touch it)."""
    ring = images[:, 0].copy()
    ring[:, 1:-1, 1:-1] = 0
    return float((ring.reshape(len(ring), -1).max(axis=1) > 0).mean())


def compose_config(variant: str, overrides: list[str]) -> DictConfig:
    """configs/make_data.yaml with data=mnist_<variant> and the overrides, composed by Hydra."""
    if not CONFIG_DIR.is_dir():
        raise SystemExit(f"configs not found at {CONFIG_DIR}: run from a source checkout (pip install -e .)")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("make_data", overrides=[f"data=mnist_{variant.lower()}", *overrides])


def make_variant(variant: str, overrides: list[str], figures: bool) -> Path:
    """Generate (if missing) and verify one variant's file; write its preview figure."""
    config = compose_config(variant, overrides)
    cfg = DataConfig.from_cfg(config.data)
    if cfg.path.exists():
        print(f"{cfg.name}: {cfg.path} exists, verifying its checksum")
    else:
        generate_dataset(cfg)
    arrays, attrs = read_dataset(cfg)
    print(f"{cfg.name}: {cfg.path} ok (sha256 {attrs['sha256'][:12]})")
    print(f"{cfg.name}: {ink_on_border(arrays['test/images']):.1%} of the test images have ink on the border ring")
    if figures:
        title = f"{cfg.name} (seed {cfg.seed}): first test images and labels"
        png = preview_png(arrays["test/images"], arrays["test/labels"], title)
        figure_path = Path(config.figures_dir) / f"{cfg.name}.png"
        write_atomic(figure_path, png)
        print(f"{cfg.name}: preview {figure_path} ({len(png) // 1024} KB)")
    return cfg.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), type=str.upper, choices=VARIANTS)
    parser.add_argument("--no-figures", action="store_true", help="skip the preview figures")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant, e.g. data.seed=1")
    args = parser.parse_args(argv)
    for variant in args.variants:
        make_variant(variant, args.overrides, figures=not args.no_figures)


if __name__ == "__main__":
    main()
