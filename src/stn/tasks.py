"""What a model's output is scored against: the loss to train on and which examples it gets right.

A data config picks its task (`task:` with a `_target_`), so the trainer never knows whether it classifies digits,
digit sequences or birds. Targets are whatever per-example tensors a split carries (a Tensor of labels, or a tuple
of them); every tensor in them is indexed along its first dimension like the images.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor

METRICS = {"error": False, "accuracy": True}  # % of the examples; is higher better?


class Task(Protocol):
    metric: str  # the reported % metric: "error" or "accuracy" (result keys val_<metric>, test_<metric>)

    def loss(self, output: Tensor, targets: Any) -> Tensor: ...

    def correct(self, output: Tensor, targets: Any) -> Tensor: ...


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"task metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric


def higher_is_better(metric: str) -> bool:
    return METRICS[check_metric(metric)]


def metric_percent(metric: str, correct: int, total: int) -> float:
    """The % metric from a count of correct examples (error as 100 * wrong / total, exactly as Table 1 always did)."""
    count = correct if higher_is_better(metric) else total - correct
    return 100.0 * count / total


class Classification:
    """One softmax over classes: output [N, C] logits, targets int64 labels [N] (Table 1: error; Table 3: accuracy)."""

    def __init__(self, metric: str = "error") -> None:
        self.metric = check_metric(metric)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), targets)

    def correct(self, output: Tensor, targets: Tensor) -> Tensor:
        return output.argmax(1) == targets


def sequence_correct(predicted: Tensor, labels: Tensor, lengths: Tensor) -> Tensor:
    """Per image: all five positions right (digits and null class) and the sequence not longer than five digits."""
    return (predicted == labels).all(dim=1) & (lengths <= labels.shape[1])


class SequenceClassification:
    """Independent softmax heads, one per position (Table 2: five 11-way digit heads, the null class ending a
    sequence): output [N, P, C] logits, targets (labels [N, P], lengths [N]). The loss is the sum of the heads'
    cross-entropies (the sequence's negative log-likelihood), averaged over images; an image is right only if every
    head is (and the sequence fits in P positions)."""

    def __init__(self, metric: str = "error") -> None:
        self.metric = check_metric(metric)

    def loss(self, output: Tensor, targets: tuple[Tensor, Tensor]) -> Tensor:
        labels, _ = targets
        return F.cross_entropy(output.float().transpose(1, 2), labels, reduction="sum") / len(labels)

    def correct(self, output: Tensor, targets: tuple[Tensor, Tensor]) -> Tensor:
        labels, lengths = targets
        return sequence_correct(output.argmax(-1), labels, lengths)
