"""Datasets: distorted MNIST (R, RTS, P, E, TC), SVHN sequences, CUB-200-2011, each stored once in HDF5, all
returning one Splits interface (stn.data.splits) chosen by the data config's `loader:`."""

from stn.data.dataset import DataConfig
from stn.data.splits import Splits, load_splits, prepare

__all__ = ["DataConfig", "Splits", "load_splits", "prepare"]
