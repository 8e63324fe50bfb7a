"""Table 1's data must not move: each column's generator, as shipped in configs/data/, pinned bit for bit.

The sha256 covers the rendered images and every drawn parameter of 512 real MNIST test digits (clutter from 1000
training digits), generated in a child process under runtime.PORTABLE_CPU_ENV and one thread, so the pins hold on
every x86-64 host. A pin changes only when that column's data change: a new default reading changes its column's pin
and no other (the commit that changes one says why).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stn.data import DataConfig
from stn.data.distortions import generate
from stn.data.mnist import load_mnist
from stn.models.params import CONFIG_DIR
from stn.runtime import PORTABLE_CPU_ENV

EXPECTED = {
    "mnist_r": "447b8c3536c99d4500e6b1cee386882ad59b6b0af6fba77a2d449b55cfdf52f0",
    "mnist_rts": "d0a5ac261a2ee7189761c7f3603ef3f3690e39711ab6f4498f784de4e30524fd",
    "mnist_p": "b9885661b490b983f7c5dd857ca867cc667c98230856f91aa0b675c3f1fb27d3",
    "mnist_e": "78c5ea90ee9ea5c1ab885fda5dc58a76f0c9d8f8a88ab5f8476eec09d037bac2",
    "mnist_tc": "8782ccc21c5dd1af7e1a2a86da2ff09e5d7105f7673beefb2949c35193959488",
}


def column_sha256(name: str, data_dir: str, mnist_source: str) -> str:
    """sha256 of the images and parameters configs/data/<name>.yaml gives 512 test digits (seed 0)."""
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "data" / f"{name}.yaml")
    cfg.root, cfg.mnist_source = data_dir, mnist_source
    spec = DataConfig.from_cfg(OmegaConf.to_container(cfg, resolve=True)).spec
    mnist = load_mnist(data_dir, mnist_source)
    images, params = generate(
        spec, mnist.test_images[:512], torch.Generator().manual_seed(0), mnist.train_images[:1000]
    )
    digest = hashlib.sha256(images.numpy().tobytes())
    for key in sorted(params):
        digest.update(key.encode())
        digest.update(params[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.skipif(
    platform.machine().lower() not in {"x86_64", "amd64"},
    reason="the pinned bits are those of the portable x86-64 kernels (runtime.PORTABLE_CPU_ENV)",
)
def test_each_table1_column_generates_its_recorded_bits(mnist_raw_root, tmp_path):
    env = {**os.environ, **PORTABLE_CPU_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [str(tmp_path / "data"), str(mnist_raw_root)]
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured.pop("cpu_capability") == "DEFAULT"
    assert measured == EXPECTED


if __name__ == "__main__":  # the child process of the test above
    torch.set_num_threads(1)
    shas = {name: column_sha256(name, *sys.argv[1:]) for name in EXPECTED}
    print(json.dumps({**shas, "cpu_capability": torch.backends.cpu.get_cpu_capability()}))
