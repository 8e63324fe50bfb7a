"""Input normalisation as part of the model: every dataset feeds uint8 -> [0, 1] (stn.train.to_input), and a model
that wants its inputs standardised (e.g. ImageNet statistics for a pretrained CUB backbone) carries them itself, so
a checkpoint is all it takes to run it on raw images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, for float inputs [N, C, H, W] in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"Normalize needs one positive std per mean, got mean {list(mean)}, std {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
