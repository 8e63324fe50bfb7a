"""Table 1 networks (distorted MNIST, Appendix A): FCN / CNN classifiers, optionally behind a spatial transformer.

Every classification network has three weight layers [paper]: the FCN is 2 hidden FC layers + the classifier;
the CNN is conv 9x9 -> maxpool 2 -> conv 7x7 -> maxpool 2 -> the FC classifier (its third weight layer, so no
hidden FC layer). Each model has ONE free width (FCN hidden units, CNN filters per conv layer), solved so that
the whole model -- loc net included -- has as many parameters as a reference net of the same dataset
("approximately the same number of parameters" across the models of one experiment [paper]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from stn.transformers import ConvLocNet, FCLocNet, SpatialTransformer, make_transform
from stn.transformers.locnets import downsample_layer, downsampled

CLASSIFIERS = ("fcn", "cnn")
LOC_NETS = ("fc", "conv")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pooled(size: int, ceil_mode: bool) -> int:
    """Side of a 2x2/stride-2 max pool's output (PyTorch's rule; with ceil_mode a 1-pixel map stays 1 pixel)."""
    return math.ceil(size / 2) if ceil_mode else size // 2


def classifier_net(kind: str, in_shape: Sequence[int], num_classes: int, width: int, ceil_mode: bool) -> nn.Sequential:
    """The three-weight-layer classifier `kind` ('fcn' or 'cnn') for inputs of shape [C, H, W]."""
    channels, height, width_px = in_shape
    if kind == "fcn":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width_px, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )
    if kind == "cnn":
        sides = []
        for side in (height, width_px):
            after_conv2 = _pooled(side - 8, ceil_mode) - 6
            if side - 8 < 1 or after_conv2 < 1:
                raise ValueError(
                    f"CNN classifier: a {height}x{width_px} input is too small for conv 9x9 -> maxpool 2 -> conv 7x7 "
                    f"(ceil_mode={ceil_mode}); use ceil_mode=true or a larger input"
                )
            sides.append(_pooled(after_conv2, ceil_mode))
        return nn.Sequential(
            nn.Conv2d(channels, width, 9),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=ceil_mode),
            nn.Conv2d(width, width, 7),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=ceil_mode),
            nn.Flatten(),
            nn.Linear(width * sides[0] * sides[1], num_classes),
        )
    raise ValueError(f"unknown classifier {kind!r}; valid: {', '.join(CLASSIFIERS)}")


def pooled_shape(input_shape: Sequence[int], pool: int) -> tuple[int, int, int]:
    """Shape after a pool x pool average pool (pool=1: unchanged)."""
    channels, height, width = input_shape
    return channels, height // pool, width // pool


def solve_width(kind: str, in_shape: Sequence[int], num_classes: int, ceil_mode: bool, target: int) -> int:
    """The width whose classifier parameter count is nearest to `target` (counts grow with the width)."""

    def count(width: int) -> int:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            return count_parameters(classifier_net(kind, in_shape, num_classes, width, ceil_mode))

    low, high = 1, 1
    while count(high) < target:
        high *= 2
    while low < high:  # smallest width with count >= target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < target else (low, middle)
    return min((low, max(low - 1, 1)), key=lambda width: abs(count(width) - target))


def reference_parameters(
    input_shape: Sequence[int], num_classes: int, ceil_mode: bool, param_reference: Mapping
) -> int:
    """Parameter count of param_reference = {classifier, width, pool}: the plain net every model matches."""
    shape = pooled_shape(input_shape, param_reference["pool"])
    with torch.device("meta"):
        return count_parameters(
            classifier_net(param_reference["classifier"], shape, num_classes, param_reference["width"], ceil_mode)
        )


def spatial_transformer(transform: str, loc_net: Mapping, input_shape: Sequence[int]) -> SpatialTransformer:
    """A spatial transformer acting on the whole input (output size = input size), with the loc net `loc_net`."""
    settings = dict(loc_net)
    kind = settings.pop("kind", None)
    channels, height, width = input_shape
    if kind == "fc":
        # [open] optionally on the input downsampled x`downsample` (as the ST-CNN's loc net), which shrinks its first
        # layer, and so the share of the equal-parameter budget it takes from the classifier, by downsample^2
        factor, op = int(settings.pop("downsample", 1)), settings.pop("downsample_op", "max")
        pool = downsample_layer(op, factor)
        sides = [math.ceil(side / factor) for side in (height, width)]
        body = FCLocNet(channels * sides[0] * sides[1], **settings)
        if factor > 1:
            body = downsampled(pool, body)
    elif kind == "conv":
        body = ConvLocNet(channels, (height, width), **settings)
    else:
        raise ValueError(f"unknown loc_net kind {kind!r}; valid: {', '.join(LOC_NETS)}")
    return SpatialTransformer(body, make_transform(transform))


class Table1Net(nn.Module):
    """[spatial transformer] -> `st_pool` (average pool, or identity) -> classifier; forward returns logits.

    `transformer` is None for the plain FCN/CNN; `st_pool` is the pooling between the (transformed) input and
    the classifier (the paper's 2x2 average pool after the transformer on RTS/TC; for plain nets the
    baseline pool). `input_shape` is the [C, H, W] the model was built for, `width` its solved width.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        transformer: SpatialTransformer | None,
        pool: int,
        classifier: nn.Module,
        width: int,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.transformer = transformer
        self.st_pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.classifier = classifier
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        if self.transformer is not None:
            x = self.transformer(x)
        return self.classifier(self.st_pool(x))


def table1_net(
    input_shape: Sequence[int],
    num_classes: int,
    classifier: str,
    pool: int,
    ceil_mode: bool,
    param_reference: Mapping,
    transform: str | None = None,
    loc_net: Mapping | None = None,
    width: int | None = None,
) -> Table1Net:
    """Build a Table 1 model; its width is solved so its parameter count matches `param_reference`.

    param_reference = {classifier, width, pool}: the plain (transformer-free) net whose count every model of the
    dataset matches, e.g. the CNN with 64 filters on the baseline-pooled input. A given `width` overrides the
    solved one (for experiments on capacity; the model then no longer matches the others' parameter count).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be [channels, height, width], got {list(input_shape)}")
    if pool < 1:
        raise ValueError(f"pool must be >= 1 (1 = no pooling), got {pool}")
    if (transform is None) != (loc_net is None):
        raise ValueError(f"give both transform and loc_net or neither (got transform={transform!r}, loc_net={loc_net})")
    target = reference_parameters(input_shape, num_classes, ceil_mode, param_reference)
    transformer = None if transform is None else spatial_transformer(transform, loc_net, input_shape)
    loc_params = 0 if transformer is None else count_parameters(transformer)
    if loc_params >= target:
        raise ValueError(
            f"the loc net alone has {loc_params} parameters, more than the {target} of param_reference "
            f"{dict(param_reference)}: raise the reference width or shrink the loc net"
        )
    in_shape = pooled_shape(input_shape, pool)
    if width is None:
        width = solve_width(classifier, in_shape, num_classes, ceil_mode, target - loc_params)
    elif width < 1:
        raise ValueError(f"width must be a positive integer (or null: solved from param_reference), got {width}")
    return Table1Net(
        input_shape, transformer, pool, classifier_net(classifier, in_shape, num_classes, width, ceil_mode), width
    )
