"""MNIST addition's NxST-FCN (Appendix A.1): N spatial transformers each see the whole multi-channel input and warp
all of its channels; their outputs, concatenated along channels (2 x 2 = 4 for the 2xST-FCN [paper]), feed one
Table 1 classifier. The plain FCN / CNN and the single ST-FCN are Table 1's own builders (stn.models.mnist) on the
2-channel input. The classifier's width is solved by Table 1's equal-parameter rule, loc nets included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from stn.models.mnist import (
    classifier_net,
    count_parameters,
    pooled_shape,
    reference_parameters,
    solve_width,
    spatial_transformer,
)
from stn.transformers import SpatialTransformer, make_transform


class ParallelSTNet(nn.Module):
    """N transformers side by side -> channel concat -> `pool` (average pool) -> classifier; returns logits.

    With a shared loc net the transformers hold the same body (each its own regression layer) and forward runs it
    once for all of them.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        transformers: Sequence[SpatialTransformer],
        pool: int,
        classifier: nn.Module,
        width: int,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.transformers = nn.ModuleList(transformers)
        self.shared = all(t.loc_net is transformers[0].loc_net for t in transformers)
        self.st_pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.classifier = classifier
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        features = self.transformers[0].loc_net(x) if self.shared else None
        warped = [transformer(x, features=features) for transformer in self.transformers]
        return self.classifier(self.st_pool(torch.cat(warped, 1)))


def parallel_st_net(
    input_shape: Sequence[int],
    num_classes: int,
    classifier: str,
    pool: int,
    ceil_mode: bool,
    param_reference: Mapping,
    transform: str,
    loc_net: Mapping,
    transformers: int = 2,
    shared_loc_net: bool = False,
    width: int | None = None,
) -> ParallelSTNet:
    """`transformers` spatial transformers of family `transform` on the whole input, their outputs concatenated for
    the classifier, whose width is solved so the whole model matches `param_reference` (as stn.models.table1_net)."""
    input_shape = tuple(int(s) for s in input_shape)
    if transformers < 1:
        raise ValueError(f"transformers must be at least 1, got {transformers}")
    first = spatial_transformer(transform, loc_net, input_shape)
    if shared_loc_net:
        rest = [SpatialTransformer(first.loc_net, make_transform(transform)) for _ in range(transformers - 1)]
    else:
        rest = [spatial_transformer(transform, loc_net, input_shape) for _ in range(transformers - 1)]
    sts = [first, *rest]
    target = reference_parameters(input_shape, num_classes, ceil_mode, param_reference)
    loc_params = count_parameters(nn.ModuleList(sts))  # a shared body counts once
    if loc_params >= target:
        raise ValueError(
            f"the {transformers} transformers alone have {loc_params} parameters, more than the {target} of "
            f"param_reference {dict(param_reference)}: share the loc net, shrink it or raise the reference width"
        )
    channels, height, width_px = pooled_shape(input_shape, pool)
    in_shape = (transformers * channels, height, width_px)
    if width is None:
        width = solve_width(classifier, in_shape, num_classes, ceil_mode, target - loc_params)
    return ParallelSTNet(
        input_shape, sts, pool, classifier_net(classifier, in_shape, num_classes, width, ceil_mode), width
    )
