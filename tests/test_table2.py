"""Table 2 (SVHN): every cell of experiment=table2 composes and its model runs; transformers start at the identity on
real SVHN crops; the paper's optimiser (loc nets at 0.1 x lr); the Table 2 spec renders; the figure draws every
transformer of ST-CNN Multi."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stn.data import svhn
from stn.figures import draw_transformations, transformation_samples, transformer_calls
from stn.models import count_parameters
from stn.models.params import CONFIG_DIR
from stn.optim import build_optimizer
from stn.precision import to_input
from stn.results.cli import main as results_main
from stn.results.specs import TABLE2
from stn.results.tables import build_table, load_paper_table, render_markdown
from stn.tasks import SequenceClassification
from stn.train import train
from stn.transformers import SpatialTransformer

PAPER_COLUMNS, PAPER = load_paper_table(CONFIG_DIR.parent / TABLE2.paper_csv)
EXPERIMENT = OmegaConf.load(CONFIG_DIR / "experiment" / "table2.yaml").hydra.sweeper.params
CELLS = [(d, m) for d in EXPERIMENT.data.split(",") for m in EXPERIMENT.model.split(",")]
ST_MODELS = {"svhn_st_single": 1, "svhn_st_multi": 4}  # model config -> number of transformers


def compose_train(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test_table2"):
        return compose(config_name="train", overrides=["experiment=table2", *overrides])


def test_the_sweep_is_both_columns_times_the_three_paper_rows():
    assert sorted(CELLS) == sorted(
        (d, m) for d in ("svhn64", "svhn128") for m in ("svhn_cnn", "svhn_st_single", "svhn_st_multi")
    )
    assert str(EXPERIMENT.seed) == "0"  # the paper reports one run per cell


@pytest.mark.parametrize(("data", "model"), CELLS)
def test_every_cell_composes_and_its_model_runs_forward_and_backward(data, model):
    cfg = compose_train(f"data={data}", f"model={model}", "seed=0")
    # the result record's model/column are a row/column of the paper's table, in the paper recipe's folder
    assert cfg.model.name in PAPER and cfg.data.column in PAPER_COLUMNS
    assert cfg.recipe == "sgd_table2-svhn_paper" and cfg.experiment_name == "table2"
    assert cfg.run_dir.endswith(f"table2/sgd_table2-svhn_paper/{data}/{cfg.model.name}/seed0")
    assert (cfg.budget.iterations, cfg.budget.batch_size) == (400_000, 128)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    side = 54 if data == "svhn64" else 110  # the crops the model sees
    assert net.input_shape == tuple(cfg.data.input_shape) == (3, side, side)
    transformers = [m for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert len(transformers) == ST_MODELS.get(model, 0)
    x = torch.rand(2, 3, side, side)
    output = net(x)
    assert output.shape == (2, 5, 11)
    SequenceClassification().loss(output, (torch.randint(0, 11, (2, 5)), torch.full((2,), 5))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.padding == (2, 2)]
    assert [c.out_channels for c in convs] == [48, 64, 128, 160, 192, 192, 192, 192]  # [appendix]
    linears = [m for m in net.fc.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [3072, 3072, 3072] and len(net.heads) == 5
    dropouts = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5] * 10  # conv 2-8 and the 3 FC layers; none after conv 1 nor in the loc nets


@pytest.mark.parametrize("reading", ["before_dropout", "after_dropout"])
def test_multis_feature_map_transformers_read_the_maps_before_dropout(reading):
    """In training, the transformers before conv 3 and 4 see the previous layer's maps before its dropout (which
    then applies to the warped maps), unless the config asks for the dropped-out maps; the plain CNN's dropout count
    and order are unchanged."""
    torch.manual_seed(0)
    net = instantiate(compose_train("model=svhn_st_multi", f"model.net.transformers_read={reading}").model.net).train()
    seen = {}
    for k in (1, 2):  # blocks 2 and 3 (0-based 1, 2): the maps after pooling, and what the next transformer reads
        net.blocks[k].pool.register_forward_hook(lambda m, i, out, k=k: seen.__setitem__(f"pool{k}", out.clone()))
        net.blocks[k + 1].transformer.register_forward_pre_hook(lambda m, i, k=k: seen.__setitem__(f"read{k}", i[0]))
    net(torch.rand(2, 3, 54, 54))
    for k in (1, 2):
        assert torch.equal(seen[f"pool{k}"], seen[f"read{k}"]) == (reading == "before_dropout")
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5] * 10


@pytest.fixture(scope="module")
def svhn_crops(svhn_sample, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The real SVHN sample's test images as the models see them (centre crops), per data config."""
    source = svhn_sample
    root = tmp_path_factory.mktemp("svhn")
    crops = {}
    for name in ("svhn64", "svhn128"):
        cfg = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
        cfg.root, cfg.svhn_source, cfg.workers, cfg.val_size = str(root), str(source), 1, 2
        splits = svhn.load_splits(OmegaConf.to_container(cfg, resolve=True), progress=False)
        crops[name] = splits.eval_transform(splits.test_x)
    return crops


@pytest.mark.parametrize("data", ["svhn64", "svhn128"])
@pytest.mark.parametrize("model", list(ST_MODELS))
def test_every_transformer_starts_at_the_identity_on_real_svhn(svhn_crops, data, model):
    net = instantiate(compose_train(f"data={data}", f"model={model}").model.net)
    inputs = to_input(svhn_crops[data])
    _, calls = transformer_calls(net, inputs)
    assert len(calls) == ST_MODELS[model]
    for call in calls:  # feature maps for Multi's 2nd-4th: output == input exactly where theta is the identity
        assert torch.equal(call.theta, call.module.transform.identity().expand_as(call.theta))
        torch.testing.assert_close(call.output, call.input, atol=1e-5, rtol=1e-6)
    assert calls[0].input.std() > 0.1  # a real picture (standardised), not blank


def test_the_paper_optimiser_trains_loc_nets_at_a_tenth_of_the_lr():
    cfg = compose_train("model=svhn_st_multi")
    net = instantiate(cfg.model.net)
    optimizer, scheduler = build_optimizer(net, cfg.optim, cfg.budget.iterations)
    main_group, loc_group = optimizer.param_groups
    assert (main_group["lr"], loc_group["lr"]) == pytest.approx((0.01, 0.001))
    loc_ids = {id(p) for m in net.modules() if isinstance(m, SpatialTransformer) for p in m.parameters()}
    assert {id(p) for p in loc_group["params"]} == loc_ids
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_parameters(net)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in optimizer.param_groups)
    factor = scheduler.lr_lambdas[0]  # [appendix] x0.1 every 80k of 400k
    steps = (0, 79_999, 80_000, 159_999, 160_000, 320_000, 399_999)
    assert [factor(s) for s in steps] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 1e-4, 1e-4])


# ---------------------------------------------------------------- the table and the figure


def record(model: str, column: str, error: float, seed: int = 0) -> dict:
    cfg = compose_train(f"model=svhn_{model.replace('st_cnn_', 'st_')}", f"data=svhn{column[:-2]}", f"seed={seed}")
    return {
        "model": model,
        "column": column,
        "seed": seed,
        "status": "finished",
        "metric": "error",
        "test_error": error,
        "params": 1000,
        "iterations": 400_000,
        "budget": "svhn_paper",
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def test_table2_renders_sequence_errors_against_the_paper(tmp_path):
    records = [record("st_cnn_multi", "64px", 3.9), record("cnn", "128px", 6.0), record("cnn", "128px", 5.0, seed=1)]
    table = build_table(records, PAPER_COLUMNS, PAPER, spec=TABLE2)
    assert table.cells["st_cnn_multi", "64px"].diff == pytest.approx(0.3)
    assert table.cells["cnn", "128px"].mean == pytest.approx(5.5) and table.cells["cnn", "128px"].n == 2
    text = render_markdown(table)
    assert "Table 2 — SVHN multi-digit sequences, % test error" in text and "one run per cell" in text
    assert "loc-net lr x0.1" in text and "51.20M samples (100% of the paper's 51.2M)" in text
    assert "| ST-CNN Multi | 1k | 3.90 (n=1)<br>paper 3.6, Δ +0.30 |" in text
    for index, item in enumerate(records):  # the CLI reads result.json files and writes the three formats
        path = tmp_path / "runs" / str(index) / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(item))
    results_main(["table2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "table2.md").read_text() == text
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"table2.md", "table2.csv", "table2.tex"}


def test_the_figure_draws_multis_feature_map_transformers_on_the_input(svhn_crops):
    """ST-CNN Multi: the first transformer's RGB output is the picture (un-standardised); the later ones, on feature
    maps, are drawn through the chain -- here the first zooms in x2 and the second shifts right by half its frame."""
    torch.manual_seed(0)
    net = instantiate(compose_train("data=svhn64", "model=svhn_st_multi").model.net)
    first, second = [m for m in net.modules() if isinstance(m, SpatialTransformer)][:2]
    with torch.no_grad():
        first.regressor.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]))
        second.regressor.bias.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.0]))
    images = svhn_crops["svhn64"]
    samples = transformation_samples(net, images, svhn.NULL_CLASS * torch.ones(len(images), 5, dtype=torch.int64))
    assert samples.grids.shape == (3, 4, 33, 33, 2) and samples.outputs.shape == (3, 4, 54, 54, 3)
    assert samples.composed[0].tolist() == [False, True, True, True]
    # x2 zoom (corners at pixel centres): output pixel 2k samples input 13.25 + k along each axis, so the picture (in
    # [0, 1], not standardised) at even pixels is the 3:1 mix of input pixels 13 + k and 14 + k in each direction
    x = images.float().permute(0, 2, 3, 1).numpy() / 255
    rows = 0.75 * x[:, 13:40] + 0.25 * x[:, 14:41]
    expected = 0.75 * rows[:, :, 13:40] + 0.25 * rows[:, :, 14:41]
    np.testing.assert_allclose(samples.outputs[:, 0, ::2, ::2], expected, atol=1e-5)
    # transformer 2 in input pixels: its frame is the zoomed one shifted right by half: x_n in [-0.25, 0.75]
    grid = samples.grids[0, 1]
    np.testing.assert_allclose([grid[0, 0, 0], grid[0, -1, 0], grid[0, 0, 1]], [19.875, 46.375, 13.25], atol=1e-4)
    np.testing.assert_array_equal(samples.outputs[:, 2], samples.outputs[:, 1])  # 3 and 4 stay at the identity
    figure = draw_transformations([("64px: ST-CNN Multi", samples)])
    labels = [axis.get_xlabel() for axis in figure.subfigs[0].axes[-9:]]
    assert labels == ["(a) input", "(b) grid 1", "(c) output 1", "(b) grid 2", "(c) input via 1-2", "(b) grid 3",
                      "(c) input via 1-3", "(b) grid 4", "(c) input via 1-4"]  # fmt: skip


def test_a_short_training_on_the_real_svhn_sample_finishes_with_a_sequence_error(svhn_sample, tmp_path):
    """train() end to end on the real SVHN sample: stored crops, random crops per batch, the five-head task, the
    result record. The ST-CNN Single's structure, narrowed so that a few steps take seconds on the CPU."""
    cfg = compose_train(
        "data=svhn64",
        "model=svhn_st_single",
        "budget=smoke",
        "logger=none",
        "device=cpu",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"data.svhn_source={svhn_sample}",
        "data.workers=1",
        "data.val_size=2",
        "model.net.channels=[8,8,8,8,8,8,8,8]",
        "model.net.fc=[32]",
        "budget.batch_size=2",
        "budget.iterations=4",
        "budget.eval_every=2",
        "budget.checkpoint_every=4",
        "budget.log_every=2",
    )
    result = train(cfg)
    assert (result["status"], result["data"], result["model"], result["metric"]) == (
        "finished",
        "svhn64",
        "st_cnn_single",
        "error",
    )
    assert result["iterations"] == 4 and result["val_examples"] == 2 and 0 <= result["test_error"] <= 100
    assert result["data_meta"]["crop_size"] == 54
