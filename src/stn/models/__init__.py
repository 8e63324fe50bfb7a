"""Classifiers of each experiment, built from stn.transformers (configs/model/*.yaml instantiate them)."""

from stn.models.mnist import Table1Net, count_parameters, table1_net
from stn.models.normalize import Normalize

__all__ = ["Normalize", "Table1Net", "count_parameters", "table1_net"]
