"""Table 3 (CUB-200-2011): the Inception backbones and their weights, the CNN / NxST-CNN models (tiling at init,
shapes, the loc-net learning rate), a learning check on the real 50-image sample, the crops figure and the table.

Backbones are randomly initialised here (the machine has no internet, and the tests check behaviour, not ImageNet
features); the learning check and the figure use a small test-only CNN backbone (tests/cub_runs.py) to fit in
seconds on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cub_runs import compose_train, register_small_backbone, small_run_overrides
from hydra.utils import instantiate

from stn.checkpoint import load_model
from stn.data import load_splits
from stn.figures import crop_boxes
from stn.figures import main as figures_main
from stn.models import count_parameters
from stn.models.backbones import BackboneWeightsError, BNInception, build_backbone
from stn.models.cub import CubNet, tile_translations
from stn.optim import build_optimizer
from stn.results.cli import main as results_main
from stn.train import train
from stn.transformers import SpatialTransformer

ROWS = {  # Table 3 row -> the configs/table3/<row>.yaml choices it stands for
    "cnn_224": ("cub224", "cub_cnn"),
    "2st_cnn_224": ("cub224", "cub_2st"),
    "2st_cnn_448": ("cub448", "cub_2st"),
    "4st_cnn_448": ("cub448", "cub_4st"),
}


def table3_model(row: str, *extra: str) -> CubNet:
    cfg = compose_train(["experiment=table3", f"+table3={row}", "model.net.backbone.pretrained=false", *extra])
    assert (cfg.data.name, cfg.model.name) == (ROWS[row][0], row)
    torch.manual_seed(0)
    return instantiate(cfg.model.net)


@pytest.fixture(scope="module")
def model_4st() -> CubNet:
    return table3_model("4st_cnn_448")


# ---------------------------------------------------------------- backbones and their weights


def test_bninception_has_the_pretrainedmodels_layers_and_loads_its_state_dict_key_for_key(tmp_path):
    body = BNInception()
    # The port's state dict (pretrainedmodels bninception, less last_linear): 483 entries, 10,270,240 parameters.
    assert len(body.state_dict()) == 483 and count_parameters(body) == 10_270_240
    assert body.inception_3c_double_3x3_2.stride == (2, 2) and not hasattr(body, "inception_3c_pool_proj")
    torch.manual_seed(1)
    source = BNInception().eval()
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if "running" in name:  # non-trivial statistics, so a wrongly loaded BN layer shows in the output
                buffer.uniform_(0.5, 1.5)
    # As published: BN vectors as [1, C] (the TSN-era file), the ImageNet classifier, no BN step counters.
    state = {key: value.view(1, -1) if value.dim() == 1 else value for key, value in source.state_dict().items()}
    state = {key: value for key, value in state.items() if "num_batches" not in key}
    state |= {"last_linear.weight": torch.zeros(1000, 1024), "last_linear.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "bn_inception.pth")
    backbone = build_backbone("bninception", pretrained=True, weights_file=str(tmp_path / "bn_inception.pth")).eval()
    images = torch.rand(2, 3, 224, 224)
    bgr = images.flip(1) * 255 - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)  # the port's input
    with torch.no_grad():
        assert torch.allclose(backbone(images), source(bgr), atol=1e-4)
    assert backbone(images).shape == (2, 1024, 7, 7)


def test_a_cached_torchvision_checkpoint_loads_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(2)
    source = build_backbone("googlenet", pretrained=False)
    cached = tmp_path / "hub" / "checkpoints" / "googlenet-1378be20.pth"  # torchvision's file name for the weights
    cached.parent.mkdir(parents=True)
    torch.save({**source.body.state_dict(), "fc.weight": torch.zeros(1000, 1024)}, cached)
    loaded = build_backbone("googlenet", pretrained=True)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(), strict=True)
    )
    images = torch.rand(1, 3, 224, 224)
    assert torch.allclose(loaded.normalize(images), images * 2 - 1)  # TF-ported weights: inputs in [-1, 1]


def test_unreachable_weights_are_a_clear_error_never_a_silent_training_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    unreachable = ["http://127.0.0.1:9/bn_inception-52deb4733.pth"]  # nothing listens on the discard port
    with pytest.raises(BackboneWeightsError) as error:
        build_backbone("bninception", pretrained=True, weights_urls=unreachable)
    message = str(error.value)
    assert "could not be downloaded" in message and "127.0.0.1:9" in message
    assert str(tmp_path / "hub" / "checkpoints" / "bn_inception-52deb4733.pth") in message
    assert "weights_file" in message and "pretrained=false" in message
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_backbone("inception_v3", pretrained=True, weights_file=str(tmp_path / "missing.pth"))
    (tmp_path / "other.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="not a readable state dict"):
        build_backbone("googlenet", pretrained=True, weights_file=str(tmp_path / "other.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(BackboneWeightsError, match="lacks"):
        build_backbone("googlenet", pretrained=True, weights_file=str(tmp_path / "other.pth"))


# ---------------------------------------------------------------- the models


def test_tile_translations_lay_crops_side_by_side():
    assert tile_translations(2, 2, 0.5).tolist() == [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]
    assert tile_translations(1, 2, 0.5).tolist() == [[-0.5, 0.0], [0.5, 0.0]]
    with pytest.raises(ValueError, match="does not fit"):
        tile_translations(1, 3, 0.5)


def test_at_init_the_four_crops_tile_the_image_exactly(model_4st):
    """An image whose channels are its own pixel coordinates: bilinear sampling reproduces linear functions exactly,
    so each crop's values say which source pixels it covers."""
    size = 448
    coords = torch.arange(size, dtype=torch.float32)
    image = torch.stack([coords.view(1, -1).expand(size, size), coords.view(-1, 1).expand(size, size)])
    image = torch.cat([image, torch.zeros(1, size, size)]).unsqueeze(0) / (size - 1)  # in [0, 1], as the trainer's
    with torch.no_grad():
        crops = [crop[0, :2] * (size - 1) for crop in model_4st.eval().parts(image)]
    assert len(crops) == 4 and all(crop.shape == (2, 224, 224) for crop in crops)
    # Quadrants in row-major order: left/right halves [0, 223.5] and [223.5, 447] of each axis, meeting at the
    # centre line (ALIGN_CORNERS: normalised -1 and 1 are the centres of the first and last pixels).
    half = (size - 1) / 2
    spans = [(0.0, half), (half, size - 1.0)]
    expected = [(x_span, y_span) for y_span in spans for x_span in spans]
    for (x, y), ((x0, x1), (y0, y1)) in zip(crops, expected, strict=True):
        step = half / 223  # evenly spaced samples from edge to edge: no gap, no overlap, no fold
        columns = torch.linspace(x0, x1, 224).view(1, -1).expand(224, 224)
        rows = torch.linspace(y0, y1, 224).view(-1, 1).expand(224, 224)
        assert torch.allclose(x, columns, atol=1e-3) and torch.allclose(y, rows, atol=1e-3)
        assert torch.allclose(torch.diff(x, dim=1), torch.full((224, 223), step), atol=1e-3)


def test_the_shared_loc_net_trains_at_the_loc_lr_and_every_transformer_finds_it(model_4st):
    cfg = compose_train(["experiment=table3", "+table3=4st_cnn_448"])
    optimizer, _ = build_optimizer(model_4st, cfg.optim, cfg.budget.iterations)
    base, loc = optimizer.param_groups
    assert (base["lr"], loc["lr"]) == pytest.approx((0.1, 0.1 * 1e-4))
    assert base["weight_decay"] == loc["weight_decay"] == 1e-5 and base["momentum"] == 0.9
    transformers = [m for m in model_4st.modules() if isinstance(m, SpatialTransformer)]
    assert len(transformers) == 4 and all(t.loc_net is model_4st.loc_net for t in transformers)
    expected = {id(p) for p in model_4st.loc_net.parameters()} | {
        id(p) for t in transformers for p in t.regressor.parameters()
    }
    assert {id(p) for p in loc["params"]} == expected and len(loc["params"]) == len(expected)  # each once
    everything = {id(p) for p in model_4st.parameters()}
    assert {id(p) for p in base["params"]} == everything - expected


@pytest.mark.parametrize("row", list(ROWS))
def test_every_table3_model_runs_forward_and_backward_at_its_input_size(row, model_4st):
    model = model_4st.train() if row == "4st_cnn_448" else table3_model(row)
    size = model.input_shape[-1]
    assert size == int(row[-3:])
    logits = model(torch.rand(1, 3, size, size))  # batch 1: the Inceptions are heavy on 2 CPU cores
    assert logits.shape == (1, 200)
    logits.logsumexp(1).sum().backward()
    parts = 1 if row.startswith("cnn") else int(row[0])
    assert len(model.part_nets) == parts and len(model.transformers) == (0 if parts == 1 else parts)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if model.loc_net is not None:  # gradients reach the loc net through the sampler
        assert model.transformers[0].regressor.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("backbone", "channels"), [("inception_v3", 2048), ("googlenet", 1024)])
def test_the_torchvision_backbones_serve_the_table3_models(backbone, channels):
    model = table3_model("cnn_224", f"model.net.backbone.name={backbone}")  # the NxST wiring is backbone-agnostic
    logits = model(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 200) and model.classifier.in_features == channels
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- training on the real sample, figure, table


@pytest.fixture(scope="module")
def sample(cub_sample) -> Path:
    return cub_sample


def test_learning_check_a_small_2st_model_fits_the_sample_far_above_chance(sample, tmp_path_factory):
    """A learning check, not a reproduction: can the model fit the 25 training images of the sample's 5 classes
    (chance 20%)? A small randomly initialised CNN as backbone, the whole image at 32px (no crop or flip), no
    dropout, Adam (the fast recipe) for 100 iterations."""
    register_small_backbone()
    root, runs = tmp_path_factory.mktemp("cub_data"), tmp_path_factory.mktemp("cub_runs")
    cfg = compose_train(
        small_run_overrides(sample, root, runs)
        + ["data.image_size=32", "data.flip=false", "model.net.dropout=0"]
        + ["optim=fast", "optim.optimizer.lr=0.01", "optim.loc_lr_mult=0.0001"]
        + ["budget.iterations=100", "budget.eval_every=50", "budget.checkpoint_every=50", "budget.log_every=25"]
    )
    result = train(cfg)
    assert result["status"] == "finished" and result["metric"] == "accuracy" and result["best_val_accuracy"] is None
    model, splits = load_model(Path(cfg.run_dir)), load_splits(cfg.data)
    with torch.no_grad():
        predictions = model(splits.eval_transform(splits.train_x).float() / 255).argmax(1)
    assert (predictions == splits.train_y).float().mean() >= 0.8


@pytest.fixture(scope="module")
def finished_4st_run(sample, tmp_path_factory) -> Path:
    """A (few-iteration) 4xST run on the sample: what the figure and table commands read."""
    register_small_backbone()
    root, runs = tmp_path_factory.mktemp("cub_data"), tmp_path_factory.mktemp("cub_runs")
    overrides = small_run_overrides(sample, root, runs, model="cub_4st") + ["experiment_name=table3", "seed=0"]
    cfg = compose_train(overrides + ["budget.iterations=2", "budget.eval_every=2", "budget.checkpoint_every=2"])
    assert train(cfg)["status"] == "finished"
    return runs / "table3"


def test_the_crops_figure_draws_the_boxes_of_every_transformer(finished_4st_run, tmp_path):
    model = load_model(next(finished_4st_run.rglob("result.json")).parent)
    boxes = crop_boxes(model, torch.rand(3, 3, 32, 32))
    assert boxes.shape == (3, 4, 4)  # images x transformers x (left, top, right, bottom) in input pixels
    # Freshly trained for 2 steps at the loc lr: still the quadrants (31 = the last pixel's centre)
    assert torch.allclose(boxes[0, 0], torch.tensor([0.0, 0.0, 15.5, 15.5]), atol=0.05)
    assert torch.allclose(boxes[0, 3], torch.tensor([15.5, 15.5, 31.0, 31.0]), atol=0.05)
    out = tmp_path / "table3_crops.png"
    figures_main(["table3", "--runs", str(finished_4st_run), "--out", str(out), "--images", "3"])  # in-process:
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the test-only backbone is registered here only


def test_the_table3_command_renders_our_rows_beside_the_papers(finished_4st_run, tmp_path):
    results_main(["table3", "--runs", str(finished_4st_run), "--out", str(tmp_path)])  # python -m stn.results table3
    lines = (tmp_path / "table3.md").read_text().splitlines()
    assert "% test accuracy" in lines[0] and "loc-net lr x0.0001" in lines[0]
    ours = next(line for line in lines if line.startswith("| 4xST-CNN 32px |"))  # the sample run, at its 32px
    assert "(n=1)<br>paper —" in ours
    assert "| 4xST-CNN 448px | — | —<br>paper 84.1 |" in lines and "| Lin 2015 | — | —<br>paper 80.9 |" in lines
    assert {"table3.md", "table3.csv", "table3.tex"} <= {p.name for p in tmp_path.iterdir()}
