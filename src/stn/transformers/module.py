"""The spatial transformer module: localisation net -> theta -> grid -> bilinear sampling."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from stn.transformers.grids import Transform, at_least_grid_dtype
from stn.transformers.sampler import warp


class SpatialTransformer(nn.Module):
    """Warps its input by theta = regressor(loc_net(input)); the regressor starts at the identity transform.

    The loc net body may run under autocast; the regressor, grid and sampling run in float32 (or float64 for a
    float64 model), so small theta changes are not lost to bfloat16 rounding.
    """

    def __init__(self, loc_net: nn.Module, transform: Transform, out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if not hasattr(loc_net, "out_features"):
            raise ValueError(f"loc_net {type(loc_net).__name__} must expose `out_features` (its output width)")
        self.loc_net = loc_net
        self.transform = transform
        self.out_size = None if out_size is None else tuple(out_size)
        self.regressor = nn.Linear(loc_net.out_features, transform.n_params)
        # The paper's initialisation: zero weights and identity bias, so training starts from the identity warp.
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(transform.identity())

    def localisation_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the loc net and its regressor (the trainer may give them their own learning rate)."""
        yield from self.loc_net.parameters()
        yield from self.regressor.parameters()

    def forward(
        self, x: Tensor, return_theta: bool = False, features: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Warp x; `features` = loc_net(x) computed by the caller, for transformers that share one loc net (it runs
        once for all of them)."""
        if features is None:
            features = self.loc_net(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            theta = at_least_grid_dtype(self.regressor(features.to(self.regressor.weight.dtype)))
        out = warp(x, self.transform, theta, self.out_size)
        return (out, theta) if return_theta else out
