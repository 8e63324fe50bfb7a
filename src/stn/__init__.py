"""Spatial Transformer Networks (Jaderberg et al., NIPS 2015): a reproduction in PyTorch."""

__version__ = "0.1.0"
