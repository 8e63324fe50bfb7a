"""Config checks made before any data is built or any step is trained: one clear sentence per mistake."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

MODEL_FAMILIES = "mnist_* data with the Table 1 models, svhn* with svhn_*, cub* with cub_*"


def check_config(cfg: DictConfig) -> None:
    """Refuse a config that cannot train: a non-finite number anywhere, or a model that does not fit the data."""
    check_finite(cfg)
    check_model_fits_data(cfg)


def check_finite(cfg: DictConfig) -> None:
    """Raise ValueError naming the first NaN or infinite number in the config (e.g. optim.optimizer.lr=nan)."""

    def visit(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                visit(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{key}[{index}]")
        elif isinstance(value, str) and "${" in value:  # an interpolation: check what it resolves to
            try:
                resolved = OmegaConf.select(cfg, key)
            except (OmegaConfBaseException, ValueError, KeyError):
                return  # an unresolvable value fails later, with its own error
            if isinstance(resolved, float):
                visit(resolved, key)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}={value} is not a finite number: set it to a finite value")

    visit(OmegaConf.to_container(cfg, resolve=False), "")


def check_model_fits_data(cfg: DictConfig) -> None:
    """Raise ValueError when the model config reads a data value the data config lacks (a model of another table)."""
    try:
        OmegaConf.to_container(cfg.model, resolve=True)
    except OmegaConfBaseException as error:
        missing = re.search(r"Interpolation key '([^']+)' not found", str(error))
        if missing is None:
            raise
        raise ValueError(
            f"model {cfg.model.get('name')} does not fit data {cfg.data.get('name')}: the model reads "
            f"{missing.group(1)}, which that data config lacks; pick a pair that fit ({MODEL_FAMILIES})"
        ) from None
