"""What a run records about where it ran: the git commit of the code and the software/hardware environment."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import stn
from stn.runtime import PORTABLE_CPU_ENV

REPO_ROOT = Path(stn.__file__).resolve().parents[2]
KEY_PACKAGES = ("torch", "torchvision", "numpy", "hydra-core", "omegaconf", "h5py", "scipy", "wandb")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the stn package runs from; (None, None) outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")  # untracked, not ignored files count: they are code too
    return commit, None if status is None else bool(status)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed_packages_hash() -> str:
    """sha256 of the sorted name==version list of every installed distribution (a `pip freeze` fingerprint)."""
    frozen = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    return hashlib.sha256("\n".join(frozen).encode()).hexdigest()


def cpu_kernels() -> dict[str, Any]:
    """The instruction set torch's CPU kernels use and the variables that cap it (runtime.PORTABLE_CPU_ENV): CPU
    float results are bit-identical only between runs (and generated datasets) that agree on these."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {name: os.environ.get(name) for name in PORTABLE_CPU_ENV},
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Python, key package versions, the installed-packages fingerprint, CPU/GPU, the CPU kernels in use, host and
    thread count."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "stn": stn.__version__,
        "packages": versions,
        "packages_sha256": _installed_packages_hash(),
        "torch_cuda": torch.version.cuda,  # the CUDA torch was built for (set even when running on the CPU)
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_kernels": cpu_kernels(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
