"""Table 2 networks (SVHN multi-digit, §3.2 + Appendix A): the CNN and ST-CNN Single / Multi.

The CNN [appendix]: conv[48,5]-max2-conv[64,5]-conv[128,5]-max2-conv[160,5]-conv[192,5]-max2-conv[192,5]-
conv[192,5]-max2-conv[192,5]-fc3072-fc3072-fc3072, ReLU everywhere, dropout 0.5 on every layer but the first conv,
then five independent 11-way softmax heads (one per digit position, the null class ending a sequence).
ST-CNN Single puts one affine transformer (conv loc net) at the input; ST-CNN Multi one before each of the first
four conv layers (FC loc nets), the deeper ones warping conv feature maps, read before the dropout of the layer
before (the dropout then applies to the warped maps). Every transformer starts at the identity
(stn.transformers.SpatialTransformer) and its loc net has no dropout.

Layer sizes come from the model config (configs/model/svhn_*.yaml), so tests can narrow the net.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from stn.models.mnist import spatial_transformer
from stn.models.normalize import Normalize

READINGS = ("before_dropout", "after_dropout")  # what a transformer on conv maps reads (svhn_net's transformers_read)


class ConvBlock(nn.Module):
    """[spatial transformer] -> [input dropout] -> conv k x k ('same' padding) -> ReLU -> [max pool 2] -> [dropout].

    A transformer reads the previous layer's maps before its dropout: that layer's dropout then moves here, as the
    input dropout, applied to the transformer's output (`input_dropout`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        pool: bool,
        dropout: float,
        transformer: nn.Module | None,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.transformer is not None:
            x = self.transformer(x)
        return self.dropout(self.pool(self.relu(self.conv(self.input_dropout(x)))))


class SvhnNet(nn.Module):
    """Normalize -> conv blocks (some with a transformer in front) -> FC layers -> `num_digits` heads.

    forward: float images [N, C, H, W] in [0, 1] -> logits [N, num_digits, num_classes]. `input_shape` is the
    [C, H, W] the net was built for (the trainer checks the data against it).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        normalize: Normalize,
        blocks: Sequence[ConvBlock],
        fc: nn.Module,
        heads: Sequence[nn.Module],
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.normalize = normalize
        self.blocks = nn.Sequential(*blocks)
        self.fc = fc
        self.heads = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        features = self.fc(self.blocks(self.normalize(x)))
        return torch.stack([head(features) for head in self.heads], dim=1)


def svhn_net(
    input_shape: Sequence[int],
    num_classes: int,
    num_digits: int,
    channels: Sequence[int],
    kernel: int,
    pool_after: Sequence[int],
    fc: Sequence[int],
    dropout: float,
    mean: Sequence[float],
    std: Sequence[float],
    transformers: Sequence[Mapping] = (),
    transformers_read: str = "before_dropout",
) -> SvhnNet:
    """Build a Table 2 model.

    channels: output channels of each conv layer (layer k = channels[k - 1]); pool_after: the layers (1-based) a 2x2
    max pool follows; fc: the hidden FC widths; dropout: its rate on every layer but the first conv;
    transformers: [{before: k, transform: affine, loc_net: {kind: conv|fc, ...}}], a spatial transformer acting on
    the input of conv layer k (k = 1: the normalised image), its output the size of its input; transformers_read:
    whether a transformer on conv maps reads them before_dropout (the previous layer's dropout then applies to the
    transformer's output) or after_dropout.
    """
    if transformers_read not in READINGS:
        raise ValueError(f"transformers_read must be one of {READINGS}, got {transformers_read!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be [channels, height, width], got {list(input_shape)}")
    if not channels or min(channels) < 1 or not fc or min(fc) < 1 or num_classes < 2 or num_digits < 1:
        raise ValueError(
            f"need conv channels and FC widths >= 1, num_classes >= 2 and num_digits >= 1; got "
            f"channels={list(channels)}, fc={list(fc)}, num_classes={num_classes}, num_digits={num_digits}"
        )
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd ('same' padding keeps the map size), got {kernel}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if any(not 1 <= k <= len(channels) for k in pool_after):
        raise ValueError(f"pool_after names conv layers 1..{len(channels)}, got {list(pool_after)}")
    before = transformers_read == "before_dropout"
    placed = {}
    for spec in transformers:
        k = int(spec["before"])
        if not 1 <= k <= len(channels) or k in placed:
            raise ValueError(f"transformer `before` must name a distinct conv layer 1..{len(channels)}, got {k}")
        placed[k] = spec

    blocks = []
    shape = input_shape  # [C, H, W] entering the next block
    for layer, out_channels in enumerate(channels, start=1):
        spec = placed.get(layer)
        transformer = None if spec is None else spatial_transformer(spec["transform"], spec["loc_net"], shape)
        pool = layer in pool_after
        rate = 0.0 if layer == 1 else dropout
        # Read before dropout: the dropout of the layer before a transformer moves behind it (none after layer 1).
        out_rate = 0.0 if before and layer + 1 in placed else rate
        in_rate = dropout if before and transformer is not None and layer > 2 else 0.0
        blocks.append(ConvBlock(shape[0], out_channels, kernel, pool, out_rate, transformer, in_rate))
        height, width = (shape[1] // 2, shape[2] // 2) if pool else shape[1:]
        if min(height, width) < 1:
            raise ValueError(f"input {list(input_shape)} is too small for max pools after layers {list(pool_after)}")
        shape = (out_channels, height, width)

    layers: list[nn.Module] = [nn.Flatten()]
    widths = [shape[0] * shape[1] * shape[2], *fc]
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    heads = [nn.Linear(widths[-1], num_classes) for _ in range(num_digits)]
    return SvhnNet(input_shape, Normalize(mean, std), blocks, nn.Sequential(*layers), heads)
