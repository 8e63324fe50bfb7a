"""Localisation networks of the paper's MNIST experiments (Appendix A): ST-FCN and ST-CNN bodies.

Each exposes `out_features`, the width the SpatialTransformer's regression layer reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class FCLocNet(nn.Sequential):
    """ReLU MLP on the flattened input (ST-FCN: 3 x 32 units). An empty `hidden` feeds the pixels straight on."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (32, 32, 32)) -> None:
        if in_features < 1 or any(width < 1 for width in hidden):
            raise ValueError(f"FCLocNet needs positive widths, got in_features={in_features}, hidden={hidden}")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden]
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_features = widths[-1]


DOWNSAMPLE_OPS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def downsampled(pool: nn.Module, body: nn.Module) -> nn.Sequential:
    """`pool` (a downsampling of the input) -> `body`, exposing the body's out_features."""
    net = nn.Sequential(pool, body)
    net.out_features = body.out_features
    return net


def downsample_layer(op: str, factor: int, ceil_mode: bool = True) -> nn.Module:
    """The 2D `op` pooling ("max" | "avg") of `factor` x `factor` that downsamples a loc net's input."""
    if op not in DOWNSAMPLE_OPS:
        raise ValueError(f"downsample_op must be one of {sorted(DOWNSAMPLE_OPS)}, got {op!r}")
    if factor < 1:
        raise ValueError(f"downsample must be >= 1 (1 = none), got {factor}")
    return DOWNSAMPLE_OPS[op](factor, ceil_mode=ceil_mode)


class ConvLocNet(nn.Sequential):
    """ST-CNN loc net: downsample x`downsample` -> conv k x k x C -> ReLU -> maxpool 2 -> conv -> ReLU -> FC -> ReLU.

    `fc` is one FC width (Table 1: FC 20) or several, one ReLU layer each (Table 2's ST-CNN Single: FC 32 -> FC 32).
    """

    def __init__(
        self,
        in_channels: int,
        in_size: tuple[int, int],
        downsample: int = 2,
        downsample_op: str = "max",
        channels: int = 20,
        kernel: int = 5,
        fc: int | Sequence[int] = 20,
        pool_ceil: bool = True,
    ) -> None:
        pool = downsample_layer(downsample_op, downsample, pool_ceil)
        rounding = math.ceil if pool_ceil else math.floor
        size = list(in_size)
        layers: list[nn.Module] = []
        if downsample > 1:
            layers.append(pool)
            size = [rounding(s / downsample) for s in size]
        layers += [
            nn.Conv2d(in_channels, channels, kernel),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=pool_ceil),
        ]
        size = [rounding((s - kernel + 1) / 2) for s in size]
        layers += [nn.Conv2d(channels, channels, kernel), nn.ReLU(inplace=True), nn.Flatten()]
        size = [s - kernel + 1 for s in size]
        if min(size) < 1:
            raise ValueError(
                f"ConvLocNet: input {tuple(in_size)} is too small for downsample={downsample}, two {kernel}x{kernel} "
                f"convs and a 2x2 pool (final map would be {size[0]}x{size[1]}); use a larger input, a smaller "
                f"kernel or less downsampling"
            )
        widths = [channels * size[0] * size[1], *([fc] if isinstance(fc, int) else fc)]
        if len(widths) < 2 or min(widths[1:]) < 1:
            raise ValueError(f"ConvLocNet needs one or more positive FC widths, got fc={fc}")
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_features = widths[-1]


class StridedConvLocNet(nn.Sequential):
    """Co-localisation loc net (Appendix A.2): conv k x k x C with a stride -> ReLU -> maxpool 2 (stride 2) -> FC
    layers, one ReLU each (the paper: eight 9x9 filters, stride 4, then two 8-unit FC layers)."""

    def __init__(
        self,
        in_channels: int,
        in_size: tuple[int, int],
        channels: int = 8,
        kernel: int = 9,
        stride: int = 4,
        fc: Sequence[int] = (8, 8),
    ) -> None:
        size = [((s - kernel) // stride + 1) // 2 for s in in_size]
        if min(size) < 1 or not fc or min(fc) < 1:
            raise ValueError(f"StridedConvLocNet: input {tuple(in_size)} too small, or fc={fc} not positive widths")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel, stride=stride),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Flatten(),
        ]
        widths = [channels * size[0] * size[1], *fc]
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_features = widths[-1]
