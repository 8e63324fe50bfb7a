"""How tensors meet the model: the precision a run trains in, its autocast, float32 matmul mode and memory format."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor

PRECISIONS = ("bf16", "fp32")


def device_precision(cfg: DictConfig, device: torch.device) -> str:
    """The precision a run trains in on `device`: cfg.precision on CUDA, cfg.cpu_precision on the CPU (both checked,
    so a typo in either fails on any machine)."""
    for key in ("precision", "cpu_precision"):
        if cfg.get(key, "fp32") not in PRECISIONS:
            raise ValueError(
                f"{key} must be one of {PRECISIONS} (bf16: bf16 autocast, theta and grids stay float32; fp32: "
                f"float32, TF32 matmuls on CUDA), got {cfg.get(key)!r}"
            )
    return cfg.precision if device.type == "cuda" else cfg.get("cpu_precision", "fp32")


def use_precision(precision: str, device: torch.device) -> None:
    """Set the float32 matmul mode `precision` implies: TF32 for fp32 on CUDA (the fast float32 path), full float32
    otherwise (a bf16 run keeps its float32 theta and grids exact). Set either way, as it is process-wide and one
    process may train several runs."""
    torch.set_float32_matmul_precision("high" if precision == "fp32" and device.type == "cuda" else "highest")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for precision bf16 (the spatial transformer keeps theta and grids in float32), on either
    device; off for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def wants_channels_last(device: torch.device, precision: str) -> bool:
    """channels_last models: always on CUDA; on the CPU with bf16, whose oneDNN convolutions it speeds up (the CNN on
    R trains 2.7x faster in bf16 + channels_last than in float32: results/bench/train_cpu.md)."""
    return device.type == "cuda" or precision == "bf16"


def to_input(images: Tensor) -> Tensor:
    """uint8 [N, C, H, W] (on the device) -> float in [0, 1], channels_last on CUDA."""
    x = images.float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
