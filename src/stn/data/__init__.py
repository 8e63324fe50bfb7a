"""Datasets: distorted MNIST (R, RTS, P, E, TC), generated once per config and seed, stored in HDF5."""

from stn.data.dataset import DataConfig, Splits, load_splits

__all__ = ["DataConfig", "Splits", "load_splits"]
