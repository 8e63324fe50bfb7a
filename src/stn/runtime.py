"""The one place that decides device, dtypes and the sampling-grid corner convention."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# Corner convention for every grid generator and the sampler (grid_sample / affine_grid).
# True: normalised -1 and +1 are the *centres* of the corner pixels, as in the original Torch layer
# (qassemoquab/stnbhwd) the paper used, so pixel-space geometry (rotations about the centre, corner
# displacements in px) maps one-to-one onto theta and identity reproduces the input at any size.
ALIGN_CORNERS = True

# Theta, grids and the TPS solve always run in this dtype, even under bf16/fp16 autocast.
GRID_DTYPE = torch.float32

# torch, oneDNN and MKL each pick their float kernels by the host's instruction set (AVX2, AVX-512, ...), and the
# kernels round differently, so a CPU run is bit-identical only on hosts of one kind. Set in the environment before
# Python starts (with one thread), these cap all three at kernels every x86-64 host has: bit-identical numbers
# across hosts, slower. Measured: each of the three on its own changes a 20-iteration ST-CNN run's weights.
PORTABLE_CPU_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested!r} was asked for but CUDA is not available; use device=auto or cpu")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU torch.Generator seeded the same for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)
