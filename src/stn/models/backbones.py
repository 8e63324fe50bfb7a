"""ImageNet-pretrained Inception networks with batch normalisation, the CUB models' backbones (Table 3).

A Backbone maps float RGB images in [0, 1] (what stn.precision.to_input feeds) to its last feature map [N, C, h, w]: it
carries the input normalisation its weights were trained with, so the spatial transformers sample raw images and
every backbone copy sees what it expects. Three choices (configs/model/_cub.yaml, `backbone.name`):

- bninception: BN-Inception (Ioffe & Szegedy 2015), the paper's network [paper]; the Caffe port published for the
  `pretrainedmodels` package (73.5% ImageNet top-1; BGR input in [0, 255] minus the mean 104/117/128), rebuilt here
  in plain torch with that port's layer names so its state dict loads as is.
- inception_v3: torchvision's Inception v3 (77.3% top-1; weights ported from TensorFlow, input scaled to [-1, 1]).
- googlenet: torchvision's GoogLeNet with batch norm on every conv (69.8% top-1; input scaled to [-1, 1]).

Weights load from `weights_file` if given, else from torch's hub cache (TORCH_HOME; downloaded there on first use).
A pretrained backbone whose weights cannot be had is an error that says how to supply them, never a silent
training from scratch (which ends far below the paper's accuracy).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models

from stn.models.normalize import Normalize

# [pretrainedmodels] bninception's published weights; the second URL is the TSN authors' copy it names as an
# alternative (its BN vectors are stored as [1, C], which load_bninception_state reshapes).
BNINCEPTION_URLS = (
    "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
    "http://yjxiong.me/others/bn_inception-9f5701afb96c8044.pth",
)


class BackboneWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (no network, no cached or local file, unreadable)."""


@dataclass(frozen=True)
class InceptionUnit:
    """One BN-Inception mixed block: branch widths (0 = branch absent), pooling, stride of the reduction blocks."""

    name: str
    in_channels: int
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    double_reduce: int
    double: int
    pool: str  # "avg" or "max"
    pool_proj: int  # 0: the pooled input is concatenated as is (reduction blocks)
    stride: int = 1

    @property
    def out_channels(self) -> int:
        pooled = self.pool_proj or self.in_channels
        return self.c1x1 + self.c3x3 + self.double + pooled


# BN-Inception's mixed blocks (Ioffe & Szegedy 2015, Figure 5; the layer widths of the pretrainedmodels port).
BNINCEPTION_BLOCKS = (
    InceptionUnit("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    InceptionUnit("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    InceptionUnit("3c", 320, 0, 128, 160, 64, 96, "max", 0, stride=2),
    InceptionUnit("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    InceptionUnit("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    InceptionUnit("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    InceptionUnit("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    InceptionUnit("4e", 608, 0, 128, 192, 192, 256, "max", 0, stride=2),
    InceptionUnit("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    InceptionUnit("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
)


class BNInception(nn.Module):
    """BN-Inception's convolutional body (no classifier): [N, 3, H, W] BGR in [0, 255] minus the mean -> [N, 1024,
    H/32, W/32]. Every conv is followed by batch norm and ReLU; modules are flat attributes named as in the Caffe
    port (conv1_7x7_s2, conv1_7x7_s2_bn, ..., inception_5b_pool_proj_bn), so its state dict loads key for key."""

    out_channels = 1024

    def __init__(self) -> None:
        super().__init__()
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for block in BNINCEPTION_BLOCKS:
            prefix, stride = f"inception_{block.name}", block.stride
            if block.c1x1:
                self._unit(f"{prefix}_1x1", block.in_channels, block.c1x1, 1)
            self._unit(f"{prefix}_3x3_reduce", block.in_channels, block.c3x3_reduce, 1)
            self._unit(f"{prefix}_3x3", block.c3x3_reduce, block.c3x3, 3, stride)
            self._unit(f"{prefix}_double_3x3_reduce", block.in_channels, block.double_reduce, 1)
            self._unit(f"{prefix}_double_3x3_1", block.double_reduce, block.double, 3)
            self._unit(f"{prefix}_double_3x3_2", block.double, block.double, 3, stride)
            if block.pool_proj:
                self._unit(f"{prefix}_pool_proj", block.in_channels, block.pool_proj, 1)
        self.blocks = BNINCEPTION_BLOCKS

    def _unit(self, name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(out_channels))

    def _run(self, name: str, x: Tensor) -> Tensor:
        return torch.relu_(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _block(self, block: InceptionUnit, x: Tensor) -> Tensor:
        prefix = f"inception_{block.name}"
        branches = [self._run(f"{prefix}_1x1", x)] if block.c1x1 else []
        branches.append(self._run(f"{prefix}_3x3", self._run(f"{prefix}_3x3_reduce", x)))
        double = self._run(f"{prefix}_double_3x3_reduce", x)
        branches.append(self._run(f"{prefix}_double_3x3_2", self._run(f"{prefix}_double_3x3_1", double)))
        if block.stride == 2:  # reduction block: 3x3/2 max pool, concatenated without a projection
            branches.append(nn.functional.max_pool2d(x, 3, 2, ceil_mode=True))
        elif block.pool == "avg":
            branches.append(self._run(f"{prefix}_pool_proj", nn.functional.avg_pool2d(x, 3, 1, 1, ceil_mode=True)))
        else:
            branches.append(self._run(f"{prefix}_pool_proj", nn.functional.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
        return torch.cat(branches, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.max_pool2d(self._run("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
        x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
        x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
        for block in self.blocks:
            x = self._block(block, x)
        return x


class Backbone(nn.Module):
    """normalise (as the weights expect) -> convolutional body: RGB in [0, 1] [N, 3, H, W] -> [N, C, h, w]."""

    def __init__(self, name: str, normalize: Normalize, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.name = name
        self.normalize = normalize
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))

    def extra_repr(self) -> str:
        return f"name={self.name}, out_channels={self.out_channels}"


# Caffe's BGR mean pixel (104, 117, 128) in [0, 255], applied after the channel flip: (x - m / 255) / (1 / 255).
CAFFE_BGR = dict(mean=(104 / 255, 117 / 255, 128 / 255), std=(1 / 255,) * 3, reverse_channels=True)
TORCHVISION_HEADS = ("AuxLogits", "aux1", "aux2", "avgpool", "dropout", "fc")  # what the body leaves out


def _torchvision_body(network: nn.Module) -> nn.Sequential:
    """The convolutional layers of a torchvision GoogLeNet / Inception v3, in forward order, under their own names
    (so the network's state dict loads into it), without auxiliary heads, pooling and classifier."""
    return nn.Sequential(OrderedDict((n, m) for n, m in network.named_children() if n not in TORCHVISION_HEADS))


def _cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _supply_hint(name: str, urls: Sequence[str]) -> str:
    return (
        f"Supply the weights of backbone {name!r}: on a machine with internet, download {urls[0]} and copy it to "
        f"{_cache_path(urls[0])} (torch's hub cache; TORCH_HOME moves it), or point model.net.backbone.weights_file "
        f"at it. model.net.backbone.pretrained=false trains from scratch instead (far below the paper's accuracy)."
    )


def fetch_state_dict(name: str, urls: Sequence[str], weights_file: str | None, check_hash: bool) -> dict[str, Tensor]:
    """The weights of backbone `name`: from `weights_file`, else from the hub cache, downloading the first of `urls`
    that answers (with check_hash, the sha256 prefix in the file name is verified, as torchvision does)."""
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            missing = f"model.net.backbone.weights_file={str(path)!r} does not exist. "
            raise BackboneWeightsError(missing + _supply_hint(name, urls))
    else:
        failures = []
        for url in urls:
            path = _cache_path(url)
            if path.is_file():
                break
            try:
                hash_prefix = re.search(torch.hub.HASH_REGEX, path.name).group(1) if check_hash else None
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=True)  # atomic: temp + move
                break
            except Exception as error:  # no network, DNS, HTTP errors, hash mismatch: all mean "not here"
                failures.append(f"{url}: {type(error).__name__}: {error}")
        else:
            raise BackboneWeightsError(
                f"ImageNet weights of backbone {name!r} are not cached and could not be downloaded "
                f"({'; '.join(failures)}). " + _supply_hint(name, urls)
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"{path} is not a readable state dict ({type(error).__name__}: {error})") from None
    return state.get("state_dict", state)  # a training checkpoint that wraps its state dict is accepted too


def load_state(body: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load `state` into `body` by key (keys of removed heads are ignored); BN vectors stored [1, C] by old Caffe
    ports are reshaped to [C]; a missing key (other than the BN step counter of old checkpoints) is an error."""
    own = body.state_dict()
    matched = {}
    for key, value in state.items():
        if key in own:
            matched[key] = value.reshape(own[key].shape) if value.numel() == own[key].numel() else value
    missing = [key for key in own if key not in matched and not key.endswith("num_batches_tracked")]
    if missing:
        raise BackboneWeightsError(
            f"{source} lacks {len(missing)} weights of the backbone (e.g. {missing[:3]}): is it the right file?"
        )
    try:
        body.load_state_dict(matched, strict=False)
    except RuntimeError as error:  # shape mismatches: another network's weights
        raise BackboneWeightsError(f"{source} does not fit the backbone: {error}") from None


@dataclass(frozen=True)
class BackboneKind:
    build: Callable[[bool], tuple[nn.Module, int]]  # random init? -> (body, out_channels)
    normalize: dict
    urls: tuple[str, ...]
    check_hash: bool  # the URLs' file names carry a sha256 prefix


def _bninception(random_init: bool) -> tuple[nn.Module, int]:
    return BNInception(), BNInception.out_channels  # PyTorch's default init when not pretrained


def _inception_v3(random_init: bool) -> tuple[nn.Module, int]:
    network = models.inception_v3(weights=None, aux_logits=False, init_weights=random_init, transform_input=False)
    return _torchvision_body(network), 2048


def _googlenet(random_init: bool) -> tuple[nn.Module, int]:
    network = models.googlenet(weights=None, aux_logits=False, init_weights=random_init, transform_input=False)
    return _torchvision_body(network), 1024


# torchvision's GoogLeNet / Inception v3 weights come from TensorFlow and expect inputs in [-1, 1] (exactly what their
# transform_input makes of ImageNet-standardised inputs).
_PLUS_MINUS_ONE = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
BACKBONES = {
    "bninception": BackboneKind(_bninception, CAFFE_BGR, BNINCEPTION_URLS, check_hash=False),
    "inception_v3": BackboneKind(
        _inception_v3, _PLUS_MINUS_ONE, (models.Inception_V3_Weights.IMAGENET1K_V1.url,), check_hash=True
    ),
    "googlenet": BackboneKind(
        _googlenet, _PLUS_MINUS_ONE, (models.GoogLeNet_Weights.IMAGENET1K_V1.url,), check_hash=True
    ),
}


def build_backbone(
    name: str, pretrained: bool = True, weights_file: str | None = None, weights_urls: Sequence[str] | None = None
) -> Backbone:
    """The backbone `name` (bninception, inception_v3, googlenet), with its ImageNet weights when `pretrained`
    (from `weights_file`, else the hub cache or `weights_urls` / the published URLs)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    kind = BACKBONES[name]
    body, out_channels = kind.build(not pretrained)
    if pretrained:
        urls = tuple(weights_urls or kind.urls)
        state = fetch_state_dict(name, urls, weights_file, kind.check_hash and not weights_urls)
        load_state(body, state, weights_file or urls[0])
    elif weights_file:
        raise ValueError(f"backbone.weights_file={weights_file!r} is given but pretrained=false: set one of them")
    return Backbone(name, Normalize(**kind.normalize), body, out_channels)
