"""Every model config (configs/model/*.yaml, globbed: a new model is tested by adding its file) builds with its
dataset's config and runs forward and backward on a batch of that dataset's input size, with the dataset's task."""

from __future__ import annotations

import pytest
import torch
from cub_runs import SMALL, register_small_backbone
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.models.params import CONFIG_DIR

MODELS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml") if not path.stem.startswith("_"))
# The data config each model family is built with (by the module its net comes from).
DATA = {
    "stn.models.table1_net": "mnist_rts",
    "stn.models.addition": "mnist_addition",
    "stn.models.volume3d": "mnist_3d",
    "stn.models.svhn": "svhn64",
    "stn.models.cub": "cub224",
}
# CUB models on the CPU in seconds: the small random test backbone instead of a pretrained Inception, smaller crops.
SMALL_CUB = [
    f"model.net.backbone.name={SMALL}",
    "model.net.backbone.pretrained=false",
    "data.crop_size=32",
    "model.net.part_size=16",
]


def compose_model(model: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        return compose(config_name="train", overrides=[f"model={model}", *overrides])


def test_the_model_configs_are_found():
    assert {"cnn", "fcn", "st_cnn_aff", "svhn_cnn", "svhn_st_multi", "cub_cnn", "cub_4st"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains_forward_and_backward(model):
    target = compose_model(model).model.net._target_
    family = next(module for module in DATA if target.startswith(module))
    cfg = compose_model(model, f"data={DATA[family]}", *(SMALL_CUB if family == "stn.models.cub" else []))
    register_small_backbone()
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    shape = tuple(getattr(net, "input_shape", None) or cfg.data.input_shape)
    if family == "stn.models.cub":
        shape = (3, cfg.data.crop_size, cfg.data.crop_size)
    x = torch.rand(2, *shape)
    task = instantiate(cfg.data.task)
    output = net(x)
    if family == "stn.models.svhn":  # five digits (or the null class) and the sequence length
        targets = (torch.randint(0, 11, (2, 5)), torch.tensor([1, 3]))
    else:
        targets = torch.randint(0, cfg.data.num_classes, (2,))
    loss = task.loss(output, targets)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
