"""The 3D transformer's classifier (Appendix A.3): [3D affine spatial transformer] -> the volume flattened along depth
(a 2D projection) -> a Table 1 classifier, its width solved so the models with and without the transformer have the
same parameter count (Table 1's rule, stn.models.mnist)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from stn.models.mnist import classifier_net, count_parameters, pooled_shape, reference_parameters, solve_width
from stn.transformers import Affine3DTransform, FCLocNet, SpatialTransformer
from stn.transformers.locnets import downsampled

PROJECTIONS = ("mean", "max")


class Volume3DNet(nn.Module):
    """[transformer] -> flatten depth (`projection`) -> `pool` (average) -> classifier; forward takes volumes
    [B, D, H, W] and returns logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        transformer: SpatialTransformer | None,
        projection: str,
        pool: int,
        classifier: nn.Module,
        width: int,
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.input_shape = tuple(input_shape)
        self.transformer = transformer
        self.projection = projection
        self.st_pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.classifier = classifier
        self.width = width

    def project(self, volume: Tensor) -> Tensor:
        """[B, C, D, H, W] -> [B, C, H, W] along depth."""
        return volume.mean(2) if self.projection == "mean" else volume.amax(2)

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(1)  # [B, D, H, W] (the data's layout: depth as channels) -> one-channel volumes
        if self.transformer is not None:
            x = self.transformer(x)
        return self.classifier(self.st_pool(self.project(x)))


def volume_loc_net(input_shape: Sequence[int], downsample: int, hidden: Sequence[int]) -> nn.Sequential:
    """Average-pool the volume `downsample` x per axis, then Table 1's FC loc net body (out_features: its width)."""
    channels, *sides = input_shape
    return downsampled(nn.AvgPool3d(downsample), FCLocNet(channels * (min(sides) // downsample) ** 3, hidden))


def volume3d_net(
    input_shape: Sequence[int],
    num_classes: int,
    classifier: str,
    pool: int,
    ceil_mode: bool,
    projection: str,
    param_reference: Mapping,
    loc_net: Mapping | None = None,
    width: int | None = None,
) -> Volume3DNet:
    """The classifier of volumes [D, H, W]; with `loc_net` = {downsample, hidden} a 3D affine transformer first.
    param_reference = {classifier, width, pool} on the projected [1, H, W] input: the count every model matches."""
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or len(set(input_shape)) != 1:
        raise ValueError(f"input_shape must be a cubic volume [S, S, S], got {list(input_shape)}")
    projected = (1, *input_shape[1:])
    target = reference_parameters(projected, num_classes, ceil_mode, param_reference)
    transformer = None
    if loc_net is not None:
        body = volume_loc_net((1, *input_shape), int(loc_net["downsample"]), list(loc_net["hidden"]))
        transformer = SpatialTransformer(body, Affine3DTransform())
    loc_params = 0 if transformer is None else count_parameters(transformer)
    if loc_params >= target:
        raise ValueError(f"the loc net's {loc_params} parameters exceed the {target} of {dict(param_reference)}")
    in_shape = pooled_shape(projected, pool)
    if width is None:
        width = solve_width(classifier, in_shape, num_classes, ceil_mode, target - loc_params)
    net = classifier_net(classifier, in_shape, num_classes, width, ceil_mode)
    return Volume3DNet(input_shape, transformer, projection, pool, net, width)
