"""Co-localisation (Appendix A.2): the triplet loss, the IoU scorer, the windows, the data's boxes and a real check."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from omegaconf import OmegaConf

from stn.checkpoint import load_model
from stn.colocalisation import (
    CONFIG,
    Encoder,
    attention_transformer,
    box_iou,
    colocalise,
    data_configs,
    encoder_run,
    load_set,
    loc_net_inputs,
    make_optimizer,
    render_tables,
    triplet_hinge,
    window_boxes,
)
from stn.transformers import AttentionTransform


def config(tmp_path, mnist_raw_root, *overrides: str):
    base = [f"data_dir={tmp_path / 'data'}", f"runs_dir={tmp_path / 'runs'}", f"mnist_source={mnist_raw_root}"]
    return OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist([*base, *overrides]))


def test_triplet_hinge_on_a_hand_computed_example():
    anchors = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    others = torch.tensor([[1.0, 0.0], [1.0, 3.0]])  # squared distances 1 and 4
    crops = torch.tensor([[0.0, 2.0], [1.0, 2.0]])  # squared distances 4 and 1
    # max(0, 1 - 4 + 1) = 0 and max(0, 4 - 1 + 1) = 4
    assert triplet_hinge(anchors, others, crops, margin=1.0).tolist() == [0.0, 4.0]
    assert triplet_hinge(anchors, anchors, crops, margin=1.0).tolist() == [0.0, 0.0]  # max(0, 0 - 4 + 1), (0 - 1 + 1)


def test_the_encoder_concatenates_its_layers_raw_or_scaled():
    """none: the raw activations side by side; all: their concatenation at unit length; layer: each layer at length
    1/sqrt(3), so each weighs alike and the whole has unit length."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.rand(4, 1, 4, 4)
    hidden = model[:3](x)
    raw = torch.cat([model[1](x.flatten(1)), hidden, model(x)], 1)
    codes = {kind: Encoder(model, ["1", "2", "3"], kind)(x) for kind in Encoder.NORMALISE}
    assert torch.allclose(codes["none"], raw)
    assert torch.allclose(codes["all"], raw / raw.norm(dim=1, keepdim=True))
    blocks = codes["layer"].split([5, 5, 3], 1)
    for block in blocks:
        assert torch.allclose(block.norm(dim=1), torch.full((4,), 3**-0.5))
    with pytest.raises(ValueError, match="encoder.normalise='unit'; valid: none, all, layer"):
        Encoder(model, ["1"], "unit")


def test_iou_on_hand_made_boxes():
    first = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    second = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 3.0, 3.0]])
    torch.testing.assert_close(box_iou(first, second), torch.tensor([1.0, 2 / 6, 0.0, 4 / 16]))


def test_window_boxes_of_the_identity_and_of_a_28px_window():
    # scale 1, centred: the whole 84px canvas (its sample points span the pixel centres 0..83, +- half a step)
    attention = AttentionTransform()
    whole = window_boxes(attention.matrix(torch.tensor([[1.0, 0.0, 0.0]])), 84, 28)[0]
    torch.testing.assert_close(whole, torch.tensor([-1.037, -1.037, 85.037, 85.037]), atol=1e-3, rtol=0)
    # a window whose 28 samples land on 28 consecutive pixel centres, from pixel 10: exactly the box [10, 38)
    scale = 27 / 83
    centre = (10 + 13.5) / 83 * 2 - 1
    box = window_boxes(attention.matrix(torch.tensor([[scale, centre, centre]])), 84, 28)[0]
    torch.testing.assert_close(box, torch.tensor([10.0, 10.0, 38.0, 38.0]), atol=1e-4, rtol=0)


def test_the_paper_loc_net_and_identity_at_initialisation(tmp_path, mnist_raw_root):
    transformer = attention_transformer(config(tmp_path, mnist_raw_root, "transformer.regressor_init=zero"))
    convs = [m for m in transformer.loc_net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(8, (9, 9), (4, 4))]
    assert [m.out_features for m in transformer.loc_net if isinstance(m, torch.nn.Linear)] == [8, 8]
    x = torch.rand(2, 1, 84, 84)
    out, theta = transformer(x, return_theta=True)
    assert out.shape == (2, 1, 28, 28) and transformer.regressor.out_features == 2  # the configured fixed scale
    torch.testing.assert_close(theta, torch.zeros(2, 2))  # centred
    zero_start = ["transformer.fixed_scale=null", "transformer.regressor_init=zero"]
    learnt = attention_transformer(config(tmp_path, mnist_raw_root, *zero_start))
    _, theta = learnt(x, return_theta=True)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0.0, 0.0]] * 2))  # the paper's identity: scale 1


def test_the_regressor_starts_centred_or_spread_and_the_loc_net_input_is_raw_or_standardised(tmp_path, mnist_raw_root):
    x = torch.rand(4, 1, 84, 84)
    torch.manual_seed(0)
    # the default start: evidence/colocalisation_regressor_init.md
    assert config(tmp_path, mnist_raw_root).transformer.regressor_init == "default"
    spread = attention_transformer(config(tmp_path, mnist_raw_root))
    assert spread.regressor.weight.abs().min() > 0 and spread.regressor.bias.tolist() == [0.0, 0.0]
    _, theta = spread(x, return_theta=True)
    assert theta.std(0).min() > 0  # each image's window starts at its own place
    settings = config(tmp_path, mnist_raw_root).transformer
    assert settings.loc_net_input == "standardised"  # the default (evidence/colocalisation_loc_input.md)
    scaled = loc_net_inputs(settings, x)
    torch.testing.assert_close((scaled.mean(), scaled.std()), (torch.tensor(0.0), torch.tensor(1.0)))
    torch.testing.assert_close(scaled, (x - x.mean()) / x.std())
    settings.loc_net_input = "unit"
    assert loc_net_inputs(settings, x) is x  # the images as the encoder sees them
    settings.loc_net_input = "imagenet"
    with pytest.raises(ValueError, match="transformer.loc_net_input='imagenet'; valid: unit, standardised"):
        loc_net_inputs(settings, x)
    with pytest.raises(ValueError, match="transformer.regressor_init='ones'; valid: zero, default"):
        attention_transformer(config(tmp_path, mnist_raw_root, "transformer.regressor_init=ones"))


def test_the_optimiser_is_adam_or_the_papers_sgd_with_momentum(tmp_path, mnist_raw_root):
    weight = torch.nn.Parameter(torch.zeros(3))
    adam = make_optimizer(config(tmp_path, mnist_raw_root).optim, [weight])
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 0.003
    sgd = make_optimizer(config(tmp_path, mnist_raw_root, "optim.name=sgd", "optim.lr=0.01").optim, [weight])
    assert isinstance(sgd, torch.optim.SGD) and (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.01, 0.9)
    with pytest.raises(ValueError, match="optim.name='rmsprop'; valid: adam, sgd"):
        make_optimizer(config(tmp_path, mnist_raw_root, "optim.name=rmsprop").optim, [weight])


def test_the_table_reports_every_seed_and_their_mean(tmp_path, mnist_raw_root):
    cfg = config(tmp_path, mnist_raw_root, "seeds=[0, 1]", "classes=[1, 9]")
    scores = {"T": {1: [100.0, 98.0], 9: [4.0, 100.0]}, "TC": {1: [40.0, 30.0], 9: [20.0, 10.0]}}
    encoder = {"test_error": 0.88, "params": 208586, "run_dir": "<runs_dir>/encoder"}
    markdown, table = render_tables(cfg, scores, encoder, 60.0)
    assert "| 9 | 52.0 ± 67.9 | 100 | 15.0 ± 7.1 | 75-93 |" in markdown  # 96 / sqrt(2), 10 / sqrt(2)
    # the class means per seed first (T: 52, 99; TC: 30, 20), then their mean ± std
    assert "| mean | 75.5 ± 33.2 | 100 | 25.0 ± 7.1 | 75-93 |" in markdown
    assert "T: 52.0 / 99.0; TC: 30.0 / 20.0" in markdown
    rows = {row["class"]: row for row in csv.DictReader(io.StringIO(table))}
    assert rows["9"]["T_ours"] == "52.0" and rows["9"]["T_std"] == "67.9" and rows["9"]["TC_paper"] == "75-93"
    assert (rows["9"]["T_seed0"], rows["9"]["T_seed1"], rows["1"]["TC_seed1"]) == ("4", "100", "30")
    one_seed, _ = render_tables(
        config(tmp_path, mnist_raw_root, "seeds=[0]", "classes=[1, 9]"),
        {v: {d: values[:1] for d, values in by_class.items()} for v, by_class in scores.items()},
        encoder,
        60.0,
    )
    assert "| 9 | 4 | 100 | 20 | 75-93 |" in one_seed and "| mean | 52.0 | 100 | 30.0 | 75-93 |" in one_seed


def test_each_seed_draws_its_own_sets(tmp_path, mnist_raw_root):
    cfg = config(tmp_path, mnist_raw_root)
    assert list(cfg.seeds) == [0, 1, 2]
    assert len({data_configs(cfg, seed)["T"].path for seed in cfg.seeds}) == 3


def test_run_variants_selects_the_variants_a_run_trains(tmp_path, mnist_raw_root):
    tc_only = data_configs(config(tmp_path, mnist_raw_root, "run_variants=[TC]"), 0)
    both = data_configs(config(tmp_path, mnist_raw_root), 0)
    assert list(both) == ["T", "TC"] and list(tc_only) == ["TC"] and tc_only["TC"].path == both["TC"].path
    with pytest.raises(ValueError, match=r"run_variants \['X'\] are not among the variants \['T', 'TC'\]"):
        data_configs(config(tmp_path, mnist_raw_root, "run_variants=[X]"), 0)


@pytest.mark.parametrize("variant", ["T", "TC"])
def test_the_stored_boxes_hold_the_rendered_digit(tmp_path, mnist_raw_root, variant):
    cfg = config(tmp_path, mnist_raw_root, "classes=[3, 7]")
    data = data_configs(cfg, 0)[variant]
    sets = load_set(data, mnist_raw_root)
    assert load_set(data, mnist_raw_root)[3][0].equal(sets[3][0])  # stored once, read back (sha256-checked)
    for images, boxes in sets.values():
        assert images.shape == (100, 1, 84, 84) and boxes.shape == (100, 4)
        assert ((boxes[:, 2:] - boxes[:, :2]) == 28).all() and (boxes >= 0).all() and (boxes <= 84).all()
        for image, (x0, y0, x1, y1) in zip(images[:, 0], boxes.long().tolist(), strict=True):
            inside = image[y0:y1, x0:x1].sum()
            if variant == "T":  # every ink pixel lies in the box
                assert inside == image.sum() and inside > 0
            else:  # 16 clutter patches of 6x6 add ink around it
                assert 0 < inside <= image.sum() and (image > 0).sum() > 0
    if variant == "TC":
        clean = load_set(data_configs(cfg, 0)["T"], mnist_raw_root)[3][0]
        assert (sets[3][0].int() - clean.int()).abs().sum() > 0


def test_a_short_real_colocalisation_run_keeps_the_windows_on_their_digits(tmp_path, mnist_raw_root):
    """End to end on real digits: a briefly trained encoder (cached by stn.train), then 100 steps on class 1 of T,
    with the config's anchor-only gradient and with the full gradient (optim.through_other=true, the collapsing
    setting). The collapse is the windows leaving their digits for blank canvas; a window on blank canvas gets no
    gradient. A 300-iteration encoder (2.5% test error) is too weak to localise within a test's time (measured: 9%
    after 300 steps; a 600-iteration one, 1.5%: 8% after 250; the experiment's 2000-iteration encoder: 99%), so
    the check is the collapse itself: the share of windows still overlapping their digit's box."""
    cfg = config(
        tmp_path,
        mnist_raw_root,
        "classes=[1]",
        "optim.steps=100",
        # the setting the thresholds below were measured with; with the experiment's 256 pairs, less noisy steps, the
        # full gradient's windows leave more slowly (measured 0.90 and 0.64 at step 100)
        "optim.pairs=64",
        "figure_steps=[0,100]",
        "encoder.overrides=[data=mnist_plain,model=cnn,optim=fast,budget=fast,budget.iterations=300,"
        "budget.batch_size=64,budget.eval_every=300,budget.val_subset=1000,seed=0,experiment_name=enc]",
    )
    record, run_dir = encoder_run(cfg)
    assert record["status"] == "finished" and record["test_error"] < 5.0  # measured: 2.5%
    assert encoder_run(cfg)[0] == record  # trained once: the finished run is found, not retrained
    encoder = Encoder(load_model(run_dir), cfg.encoder.layers, cfg.encoder.normalise)
    images, boxes = load_set(data_configs(cfg, 0)["T"], mnist_raw_root)[1]
    inputs = images.float() / 255
    codes = encoder(inputs[:, :, :28, :28])
    assert codes.shape == (100, 64 * 10 * 10 + 64 * 2 * 2 + 10)

    def on_digit(through_other: bool) -> float:
        run = colocalise(OmegaConf.merge(cfg, {"optim": {"through_other": through_other}}), encoder, images, boxes, 0)
        assert set(run.windows) == {0, 100} and run.windows[100].shape == (100, 4)
        return (box_iou(run.windows[100], boxes.float()) > 0).float().mean().item()

    anchor_only, full = on_digit(False), on_digit(True)
    print(f"windows on their digit after 100 steps: anchor-only gradient {anchor_only:.2f}, full gradient {full:.2f}")
    # measured with the raw codes (encoder.normalise=none): 0.95 and 0.53 from the zero regressor start, 1.00 and 0.24
    # from the spread start (the default); with unit-length codes the collapse was starker (0.99 and 0.07)
    assert anchor_only >= 0.9 and full <= anchor_only - 0.3
