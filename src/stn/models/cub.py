"""Table 3 networks (CUB-200-2011): the fine-tuned Inception baseline and the NxST-CNN part models.

CNN [paper]: an ImageNet-pretrained Inception (stn.models.backbones) fine-tuned on 224px crops, its globally
average-pooled features -> dropout 0.7 -> a 200-way classifier.

NxST-CNN [paper, appendix]: N spatial transformers in parallel act on the input image; each is an attention
transform (isotropic scale fixed at 0.5, translation predicted), and all N share ONE localisation net (an Inception
-> conv 1x1 (128) -> FC 128 -> FC 2N, the last layer being the N transformers' regressors side by side). Each
transformer samples a 224x224 crop that goes to its own part net (an ImageNet-initialised copy of the backbone);
the N part features are concatenated -> dropout 0.7 -> one 200-way classifier. At 448px input the crops keep
224x224 outputs, so the part nets cost the same as at 224px [paper].
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from stn.models.backbones import Backbone, build_backbone
from stn.transformers import AttentionTransform, SpatialTransformer


def tile_translations(rows: int, cols: int, scale: float) -> Tensor:
    """[rows * cols, 2] (tx, ty) of attention crops of `scale` laid out as a rows x cols grid of adjacent,
    non-overlapping crops centred on the image (row-major). A crop spans 2 * scale of the normalised [-1, 1] image
    per axis, so 2x2 crops of scale 0.5 are the four quadrants and 1x2 the two halves of the central band."""
    if rows < 1 or cols < 1 or max(rows, cols) * scale > 1 + 1e-9:
        raise ValueError(f"a {rows}x{cols} grid of crops of scale {scale} does not fit in the image (rows, cols >= 1)")
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([scale * (2 * xs + 1 - cols), scale * (2 * ys + 1 - rows)], -1).reshape(-1, 2).float()


class LocalisationHead(nn.Sequential):
    """The shared loc net body [appendix]: backbone features -> conv 1x1 (channels) -> ReLU -> FC (hidden) -> ReLU;
    each transformer's regressor (FC 2) reads its `out_features`."""

    def __init__(self, backbone: Backbone, input_size: int, channels: int = 128, hidden: int = 128) -> None:
        with torch.no_grad():  # the feature map's size, from shapes only (meta tensors: no compute, no memory)
            probe = copy.deepcopy(backbone).to("meta")
            height, width = probe(torch.empty(1, 3, input_size, input_size, device="meta")).shape[-2:]
        super().__init__(
            backbone,
            nn.Conv2d(backbone.out_channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(inplace=True),
        )
        self.out_features = hidden


class CubNet(nn.Module):
    """[N spatial transformers sharing one loc net ->] N part nets -> concatenated pooled features -> dropout ->
    classifier (N = 0: the plain CNN on the whole input). Forward: float RGB [B, 3, S, S] in [0, 1] -> logits."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        input_size: int,
        layout: Sequence[int] | None = None,
        part_size: int = 224,
        scale: float = 0.5,
        loc_channels: int = 128,
        loc_hidden: int = 128,
        dropout: float = 0.7,
    ) -> None:
        super().__init__()
        self.input_shape = (3, input_size, input_size)
        self.transformers = nn.ModuleList()
        if layout is None:
            self.loc_net = None
            self.part_nets = nn.ModuleList([backbone])
        else:
            rows, cols = layout
            translations = tile_translations(rows, cols, scale)
            # Every copy starts from the same (ImageNet) weights, copied before any of them trains.
            self.loc_net = LocalisationHead(copy.deepcopy(backbone), input_size, loc_channels, loc_hidden)
            self.part_nets = nn.ModuleList([backbone] + [copy.deepcopy(backbone) for _ in range(len(translations) - 1)])
            for translation in translations:
                # The same loc net object in each transformer: localisation_parameters() (the trainer's loc lr group)
                # and stn.figures find it through any of them; forward computes its features once for all.
                transformer = SpatialTransformer(self.loc_net, AttentionTransform(scale), (part_size, part_size))
                with torch.no_grad():  # zero weights (from SpatialTransformer) + this bias: the tiling at init
                    transformer.regressor.bias.copy_(translation)
                self.transformers.append(transformer)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(len(self.part_nets) * backbone.out_channels, num_classes)

    def parts(self, x: Tensor) -> list[Tensor]:
        """What each part net sees: the transformers' crops, or the input itself for the plain CNN."""
        if self.loc_net is None:
            return [x]
        features = self.loc_net(x)
        return [transformer(x, features=features) for transformer in self.transformers]

    def forward(self, x: Tensor) -> Tensor:
        pooled = [net(part).mean((2, 3)) for net, part in zip(self.part_nets, self.parts(x), strict=True)]
        return self.classifier(self.dropout(torch.cat(pooled, 1)))


def cub_net(
    backbone: Mapping,
    num_classes: int,
    input_size: int,
    layout: Sequence[int] | None = None,
    part_size: int = 224,
    scale: float = 0.5,
    loc_channels: int = 128,
    loc_hidden: int = 128,
    dropout: float = 0.7,
) -> CubNet:
    """A Table 3 model from its config (configs/model/_cub.yaml): `backbone` = build_backbone's arguments, `layout` =
    [rows, cols] of the transformers' initial crops (null: the plain CNN)."""
    if layout is not None and (len(layout) != 2 or min(layout) < 1):
        raise ValueError(f"layout must be [rows, cols] of crops (or null for the plain CNN), got {layout}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return CubNet(
        build_backbone(**backbone),
        num_classes,
        input_size,
        None if layout is None else tuple(layout),
        part_size,
        scale,
        loc_channels,
        loc_hidden,
        dropout,
    )
