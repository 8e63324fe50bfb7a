"""The task seam (loss and per-example correctness from a model's output) and model-side input normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.data.svhn import NULL_CLASS
from stn.models import Normalize
from stn.models.params import CONFIG_DIR
from stn.tasks import Classification, SequenceClassification, higher_is_better, metric_percent


def one_hot_logits(classes: list, num_classes: int = NULL_CLASS + 1) -> torch.Tensor:
    """Logits whose argmax is `classes` (any shape), with a softmax that is not one-hot (the loss stays finite)."""
    return 5.0 * F.one_hot(torch.tensor(classes), num_classes).float()


def test_classification_scores_argmax_against_the_label_and_trains_on_cross_entropy():
    task = Classification()
    logits, labels = torch.randn(6, 10), torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(task.loss(logits, labels), F.cross_entropy(logits, labels))
    logits = one_hot_logits([0, 1, 7, 3, 9, 5], 10)
    assert task.correct(logits, labels).tolist() == [True, True, False, True, False, True]


def test_metrics_report_error_or_accuracy_in_percent_with_their_direction():
    assert metric_percent("error", correct=3, total=4) == 25.0 and not higher_is_better("error")
    assert metric_percent("accuracy", correct=3, total=4) == 75.0 and higher_is_better("accuracy")
    with pytest.raises(ValueError, match="metric must be one of"):
        Classification(metric="top5")


def test_a_sequence_is_right_only_when_every_position_is():
    task = SequenceClassification()
    null = NULL_CLASS
    labels = torch.tensor([[1, 2, 3, null, null]] * 4 + [[1, 2, null, null, null]] + [[1, 2, 3, 4, 5]] * 2)
    lengths = torch.tensor([3, 3, 3, 3, 2, 5, 6])
    predicted = [
        [1, 2, 3, null, null],  # right
        [1, null, 3, null, null],  # a null in the middle
        [1, 2, 3, 4, null],  # a digit past the length
        [1, 2, null, null, null],  # one digit short
        [1, 2, null, null, null],  # right
        [1, 2, 3, 4, 5],  # right: five digits fill every head
        [1, 2, 3, 4, 5],  # every head right, but the sequence has six digits: never right
    ]
    correct = task.correct(one_hot_logits(predicted), (labels, lengths))
    assert correct.tolist() == [True, False, False, False, True, True, False]


def test_the_sequence_loss_is_the_sum_of_the_heads_cross_entropies_averaged_over_images():
    task = SequenceClassification()
    logits = torch.randn(4, 5, NULL_CLASS + 1, dtype=torch.float64)
    labels = torch.randint(0, NULL_CLASS + 1, (4, 5))
    heads = sum(F.cross_entropy(logits[:, position].float(), labels[:, position]) for position in range(5))
    loss = task.loss(logits, (labels, torch.full((4,), 5)))
    assert loss.dtype == torch.float32 and torch.allclose(loss, heads)


@pytest.mark.parametrize(
    "data, loader, task, metric",
    [
        ("mnist_rts", "stn.data.dataset", Classification, "error"),
        ("svhn64", "stn.data.svhn", SequenceClassification, "error"),
        ("cub224", "stn.data.cub", Classification, "accuracy"),
    ],
)
def test_each_data_config_picks_its_loader_and_task(data, loader, task, metric):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        cfg = compose(config_name="train", overrides=[f"data={data}"])
    built = instantiate(cfg.data.task)
    assert cfg.data.loader == loader and isinstance(built, task) and built.metric == metric


def test_normalize_standardises_each_channel_inside_the_model():
    normalize = Normalize(mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    x = torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    assert normalize(x).flatten().tolist() == pytest.approx([1.0, 1.0, 0.2])
    assert set(dict(normalize.named_buffers())) == {"mean", "std"}  # saved with the checkpoint, not trained
    with pytest.raises(ValueError, match="positive std"):
        Normalize(mean=[0.5], std=[0.0])
