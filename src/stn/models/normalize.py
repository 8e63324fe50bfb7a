"""Input normalisation as part of the model: every dataset feeds uint8 -> [0, 1] (stn.precision.to_input), and a model
that wants its inputs standardised (e.g. ImageNet statistics for a pretrained CUB backbone) carries them itself, so
a checkpoint is all it takes to run it on raw images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, for float inputs [N, C, H, W] in [0, 1]; with `reverse_channels` the channel
    order is reversed first (RGB -> BGR, for Caffe-trained weights), and mean/std are given in the reversed order."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], reverse_channels: bool = False) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"Normalize needs one positive std per mean, got mean {list(mean)}, std {list(std)}")
        self.reverse_channels = reverse_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.reverse_channels:
            x = x.flip(1)
        return (x - self.mean) / self.std
