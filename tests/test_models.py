"""Table 1 models: shapes on every input size, the three-weight-layer classifiers, equal parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stn.models import Table1Net, count_parameters, table1_net
from stn.models.mnist import classifier_net, solve_width
from stn.transformers import SpatialTransformer

LOC_NETS = {
    "fc": {"kind": "fc", "hidden": [32, 32, 32]},
    "conv": {"kind": "conv", "downsample": 2, "downsample_op": "max", "channels": 20, "kernel": 5, "fc": 20},
}
REFERENCE = {"classifier": "cnn", "width": 64, "pool": 1}
# (canvas side, the pool after a transformer): R/P/E 28x28 unpooled, RTS 42 -> 21, TC 60 -> 30.
SIZES = [(28, 1), (42, 2), (60, 2)]
VARIANTS = [
    (None, None),
    ("affine", "fc"),
    ("projective", "fc"),
    ("tps", "fc"),
    ("affine", "conv"),
    ("projective", "conv"),
    ("tps", "conv"),
]


def build(side: int, classifier: str, transform: str | None, loc_net: str | None, pool: int) -> Table1Net:
    loc = None if loc_net is None else LOC_NETS[loc_net]
    return table1_net([1, side, side], 10, classifier, pool, True, REFERENCE, transform, loc)


def weight_layers(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules())


@pytest.mark.parametrize(("side", "st_pool"), SIZES)
@pytest.mark.parametrize("classifier", ["fcn", "cnn"])
def test_every_model_runs_forward_and_backward_with_equal_parameter_counts(side, st_pool, classifier):
    torch.manual_seed(0)
    reference = count_parameters(build(side, "cnn", None, None, 1))
    for transform, loc_net in VARIANTS:
        pool = 1 if transform is None else st_pool
        model = build(side, classifier, transform, loc_net, pool)
        x = torch.rand(4, 1, side, side, requires_grad=True)
        logits = model(x)
        assert logits.shape == (4, 10)
        logits.logsumexp(1).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in model.classifier.parameters())
        assert weight_layers(model.classifier) == 3  # "three weight layers in the classification network"
        assert abs(count_parameters(model) - reference) / reference < 0.02, (transform, loc_net)
        assert (model.transformer is None) == (transform is None)


def test_transformer_output_keeps_input_size_then_st_pool_halves_it():
    model = build(42, "cnn", "affine", "conv", 2)
    x = torch.rand(2, 1, 42, 42)
    warped = model.transformer(x)
    assert warped.shape == x.shape
    assert model.st_pool(warped).shape == (2, 1, 21, 21)
    # identity-initialised: before training the transformer reproduces its input
    torch.testing.assert_close(warped, x, atol=1e-5, rtol=0)
    assert isinstance(model.transformer, SpatialTransformer)


def test_cnn_on_21x21_needs_ceil_mode_pooling():
    assert classifier_net("cnn", (1, 21, 21), 10, 8, ceil_mode=True)(torch.rand(1, 1, 21, 21)).shape == (1, 10)
    with pytest.raises(ValueError, match="too small.*ceil_mode"):
        classifier_net("cnn", (1, 21, 21), 10, 8, ceil_mode=False)


def test_solved_width_is_the_nearest_count():
    for kind, shape in [("fcn", (1, 42, 42)), ("cnn", (1, 21, 21))]:
        width = solve_width(kind, shape, 10, True, 150_000)
        counts = [count_parameters(classifier_net(kind, shape, 10, w, True)) for w in (width - 1, width, width + 1)]
        assert abs(counts[1] - 150_000) <= min(abs(counts[0] - 150_000), abs(counts[2] - 150_000))


def test_bad_model_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="unknown classifier 'mlp'"):
        table1_net([1, 28, 28], 10, "mlp", 1, True, REFERENCE)
    with pytest.raises(ValueError, match="unknown loc_net kind 'rnn'"):
        table1_net([1, 28, 28], 10, "cnn", 1, True, REFERENCE, "affine", {"kind": "rnn"})
    with pytest.raises(ValueError, match="both transform and loc_net"):
        table1_net([1, 28, 28], 10, "cnn", 1, True, REFERENCE, "affine")
    with pytest.raises(ValueError, match="loc net alone"):
        table1_net([1, 28, 28], 10, "cnn", 1, True, {**REFERENCE, "width": 4}, "affine", LOC_NETS["fc"])
