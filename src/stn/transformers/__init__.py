"""Spatial transformers: grid generators (affine, attention, projective, TPS), the sampler, loc nets, the module."""

from stn.transformers.grids import (
    TRANSFORMS,
    Affine3DTransform,
    AffineTransform,
    AttentionTransform,
    ProjectiveTransform,
    TPSTransform,
    Transform,
    make_transform,
)
from stn.transformers.locnets import ConvLocNet, FCLocNet, StridedConvLocNet
from stn.transformers.module import SpatialTransformer
from stn.transformers.sampler import sample, warp

__all__ = [
    "TRANSFORMS",
    "Affine3DTransform",
    "AffineTransform",
    "AttentionTransform",
    "ConvLocNet",
    "FCLocNet",
    "ProjectiveTransform",
    "SpatialTransformer",
    "StridedConvLocNet",
    "TPSTransform",
    "Transform",
    "make_transform",
    "sample",
    "warp",
]
