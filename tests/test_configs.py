"""Every Hydra config composes; every (data, model) pair of Table 1 instantiates and runs on its input shape."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from stn.models import count_parameters
from stn.models.mnist import reference_parameters
from stn.models.params import CONFIG_DIR, TABLE1_DATA, TABLE1_MODELS, params_table
from stn.optim import build_optimizer
from stn.setup import check_budget

BUDGETS = sorted(p.stem for p in (CONFIG_DIR / "budget").glob("*.yaml"))
OPTIMS = sorted(p.stem for p in (CONFIG_DIR / "optim").glob("*.yaml"))


@pytest.fixture
def hydra_configs():
    """compose(train.yaml, overrides) inside an initialised Hydra, cleared after the test."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test"):
        yield lambda *overrides: compose(config_name="train", overrides=list(overrides))


def test_table1_lists_every_model_and_mnist_data_config():
    models = {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not p.stem.startswith("_")}
    assert set(TABLE1_MODELS) <= models
    assert set(TABLE1_DATA) <= {p.stem for p in (CONFIG_DIR / "data").glob("mnist_*.yaml")}


@pytest.mark.parametrize("data", TABLE1_DATA)
def test_every_model_instantiates_on_every_dataset(hydra_configs, data):
    for model_name in TABLE1_MODELS:
        cfg = hydra_configs(f"data={data}", f"model={model_name}")
        model = instantiate(cfg.model.net)
        assert model.input_shape == tuple(cfg.data.input_shape)
        x = torch.rand(2, *cfg.data.input_shape)
        assert model(x).shape == (2, cfg.data.num_classes)
        net = cfg.model.net
        target = reference_parameters(net.input_shape, net.num_classes, net.ceil_mode, net.param_reference)
        assert abs(count_parameters(model) - target) / target < 0.02, (data, model_name)
        assert (model.transformer is None) == (model_name in ("fcn", "cnn"))
        optimizer, _ = build_optimizer(model, cfg.optim, cfg.budget.iterations)
        assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_parameters(model)


def test_paths_defaults_and_run_dir(hydra_configs, monkeypatch):
    monkeypatch.delenv("STN_DATA_DIR", raising=False)
    monkeypatch.delenv("STN_RUNS_DIR", raising=False)
    monkeypatch.delenv("MNIST_SOURCE", raising=False)
    cfg = hydra_configs("data=mnist_r", "model=cnn", "seed=3")
    assert cfg.paths.data_dir == "data" and cfg.paths.runs_dir == "runs" and cfg.paths.mnist_source is None
    assert cfg.data.root == "data"
    assert cfg.run_dir == "runs/adhoc/sgd_table1-paper/mnist_r/cnn/seed3"
    assert cfg.data.name == "mnist_r" and cfg.model.name == "cnn"


def test_the_fast_budgets_are_the_stated_fractions_of_the_papers_samples(hydra_configs):
    def samples(budget: str) -> int:
        cfg = hydra_configs(f"budget={budget}")
        return cfg.budget.iterations * cfg.budget.batch_size

    assert samples("paper") == 150_000 * 256
    assert samples("fast") * 10 == samples("paper") and samples("quarter") * 4 == samples("paper")


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_is_valid(hydra_configs, budget):
    cfg = hydra_configs(f"budget={budget}")
    check_budget(cfg.budget, cfg.seed)
    assert cfg.budget.name == budget


@pytest.mark.parametrize("optim", OPTIMS)
def test_every_optimiser_builds_with_its_schedule(hydra_configs, optim):
    cfg = hydra_configs(f"optim={optim}", "model=st_cnn_aff", "budget=paper")
    model = instantiate(cfg.model.net)
    optimizer, scheduler = build_optimizer(model, cfg.optim, 150_000)
    assert cfg.optim.name == optim
    if optim == "sgd_table1":  # [appendix] lr 0.01, x0.1 at 50k and 100k of 150k
        assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01]
        factor = scheduler.lr_lambdas[0]
        assert [factor(s) for s in (0, 49_999, 50_000, 99_999, 100_000, 149_999)] == pytest.approx(
            [1, 1, 0.1, 0.1, 0.01, 0.01]
        )
    if optim == "fast":  # linear warm-up over 2% of the budget, then a cosine decay to zero
        factor = scheduler.lr_lambdas[0]
        assert factor(0) == pytest.approx(1 / 3000) and factor(2999) == 1.0
        assert factor(3000 + 73_500) == pytest.approx(0.5) and factor(150_000) == pytest.approx(0.0)


def test_lr_schedules_reject_bad_settings(hydra_configs):
    cfg = hydra_configs("optim=fast", "model=fcn")
    model = instantiate(cfg.model.net)
    for key, value, message in (
        ("lr_schedule", "linear", "optim.lr_schedule must be one of"),
        ("lr_warmup", 1.5, "optim.lr_warmup must be a fraction"),
        ("lr_milestones", [0.6, 0.3], "optim.lr_milestones must be increasing fractions"),
    ):
        optim = cfg.optim.copy()
        optim[key] = value
        with pytest.raises(ValueError, match=message):
            build_optimizer(model, optim, 100)


def test_bad_budgets_and_unknown_groups_give_clear_errors(hydra_configs):
    cfg = hydra_configs("budget=smoke", "budget.iterations=0")
    with pytest.raises(ValueError, match="budget.iterations must be a positive integer, got 0"):
        check_budget(cfg.budget, cfg.seed)
    cfg = hydra_configs("budget=smoke", "budget.batch_size=-4")
    with pytest.raises(ValueError, match="budget.batch_size must be a positive integer"):
        check_budget(cfg.budget, cfg.seed)
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/resnet'"):
        hydra_configs("model=resnet")
    with pytest.raises(ConfigCompositionException, match="Could not find 'data/mnist_x'"):
        hydra_configs("data=mnist_x")


def test_params_table_lists_every_model_and_dataset():
    table = params_table(("mnist_r", "mnist_rts"), ("fcn", "st_cnn_tps"))
    lines = table.splitlines()
    assert lines[0] == "| model | mnist_r | mnist_rts |"
    assert lines[2].startswith("| fcn | 208,842 (208) | 229,078 (303) |")  # RTS: the 2x-pooled input
    assert lines[3].startswith("| st_cnn_tps |")
    assert "largest deviation" in table
