"""The residual CNN family and the training recipe options (optimizer, per-step lr schedules, label smoothing,
EMA of the weights, flip test-time augmentation) and the space's parameter limit: each works, changes what it
should, and leaves old configs and checkpoints as they were. Tiny models on a few hundred images: seconds."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fashion_tune.util.errors import ConfigError
from fashion_tune.models import CNNConfig, FashionCNN, count_parameters
from fashion_tune.training.checkpoint import load_checkpoint, save_checkpoint
from fashion_tune.training.config import default_config, resolve_config
from fashion_tune.training.kinds import get_kind
from fashion_tune.training.loop import (apply_mutations, build_model, ema_update, fit, load_model, load_splits,
                                        make_optimizer, make_scheduler, parameter_count)
from fashion_tune.training.scoring import cnn_scores

ROOT = Path(__file__).resolve().parents[1]
TINY = {"arch": "resnet", "width": 4, "depth": 1, "batch_size": 50, "subset": 300, "val_subset": 200,
        "device": "cpu", "precision": "fp32"}


def tiny(**overrides):
    return resolve_config("cnn", {**TINY, **overrides})


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def splits():
    return load_splits(tiny())


class Recorder:
    def __init__(self):
        self.metrics, self.states = [], []

    def __call__(self, metrics, state):
        self.metrics.append(dict(metrics))
        self.states.append(copy.deepcopy(state))


# ---- the residual family ----


@pytest.mark.parametrize("width,depth,params", [(16, 3, 272_186), (16, 5, 466_618), (24, 3, 610_642), (32, 2, 696_042)])
def test_resnet_parameter_counts_and_shapes(width, depth, params):
    torch.manual_seed(0)
    model = FashionCNN(CNNConfig(arch="resnet", width=width, depth=depth))
    # ResNet-20 (width 16, depth 3) and ResNet-32 (depth 5) have the CIFAR sizes (0.27M, 0.46M; 1x1 projections).
    assert count_parameters(model) == params
    x = images(3)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 4 * width) == (3, model.feature_dim)
    # 6 x depth + 2 weighted layers on the main path: stem, 2 per block, classifier
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 6 * depth + 2


def test_shipped_checkpoint_scores_as_recorded_and_a_checkpoint_from_before_the_recipe_loads_as_it_was(tmp_path):
    # The plain CNN's parameter names and count are the original layout's, so old checkpoints load as they were.
    assert count_parameters(FashionCNN(CNNConfig())) == 680_930
    model, state = load_model(ROOT / "best_models" / "cnn" / "model.pt", kind="cnn")
    assert model.config.arch == "plain" and model.config.tta is True
    config = resolve_config("cnn", state["config"])
    assert (config["optimizer"], config["scheduler"], config["ema_decay"] > 0) == ("sgd", "onecycle", True)
    recorded = json.loads((ROOT / "best_models" / "cnn" / "metrics.json").read_text())["test"]
    test = load_splits({**config, "subset": 10, "val_subset": None})
    scores = cnn_scores(model, test.test_x, test.test_y)
    # Recorded on another CPU, whose kernels may round a near-tie the other way: within two images.
    assert scores["accuracy"] == pytest.approx(recorded["accuracy"], abs=2e-4)
    assert scores["accuracy_no_tta"] == pytest.approx(recorded["accuracy_no_tta"], abs=2e-4)

    # The same weights under a config written before arch, tta and the recipe keys existed.
    new_keys = ("arch", "tta", "optimizer", "momentum", "lr_warmup", "ema_decay", "label_smoothing")
    old = {**{k: v for k, v in state["config"].items() if k not in new_keys}, "scheduler": "cosine"}
    torch.save({**state, "config": old}, tmp_path / "old.pt")
    old_model, _ = load_model(tmp_path / "old.pt", kind="cnn")
    assert old_model.config.arch == "plain" and old_model.config.tta is False
    old_scores = cnn_scores(old_model, test.test_x, test.test_y)
    assert old_scores["accuracy"] == old_scores["accuracy_no_tta"] == scores["accuracy_no_tta"]


def test_parameter_count_builds_nothing_real_and_draws_no_random_numbers():
    config = tiny(width=16, depth=3)
    before = torch.get_rng_state()
    assert parameter_count("cnn", config) == count_parameters(build_model("cnn", config)) == 272_186
    torch.set_rng_state(before)
    parameter_count("cnn", config)
    assert torch.equal(torch.get_rng_state(), before)


def test_new_keys_default_to_todays_behaviour_and_bad_values_are_refused_by_name():
    config = default_config("cnn")
    assert {k: config[k] for k in ("arch", "tta", "optimizer", "scheduler", "ema_decay")} == {
        "arch": "plain", "tta": False, "optimizer": "adamw", "scheduler": "cosine_restarts", "ema_decay": 0.0}
    for key, value, message in [
        ("arch", "vgg", "arch='vgg' is not allowed; choose one of: plain, resnet"),
        ("optimizer", "adam", "optimizer='adam' is not allowed; choose one of: adamw, sgd"),
        ("scheduler", "step", "scheduler='step' is not allowed; choose one of: cosine_restarts, cosine, onecycle, triangular"),
        ("ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
        ("momentum", -0.1, r"momentum=-0.1 must be in \[0, 1\)"),
        ("lr_warmup", 0.0, r"lr_warmup=0.0 must be in \(0, 1\)"),
        ("tta", "yes", "tta='yes' must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_config("cnn", {key: value})


# ---- flip test-time augmentation ----


def test_tta_averages_the_logits_of_each_image_and_its_mirror_in_eval_mode_only():
    torch.manual_seed(0)
    plain = FashionCNN(CNNConfig(arch="resnet", width=4, depth=1, dropout=0.0)).eval()
    tta = FashionCNN(CNNConfig(arch="resnet", width=4, depth=1, dropout=0.0, tta=True)).eval()
    tta.load_state_dict(plain.state_dict())
    x = images(6)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        logits, alone, features = tta.predict(x)
        torch.testing.assert_close(tta(x), expected)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(alone, plain(x))
        torch.testing.assert_close(features, plain.features(x))
        assert not torch.allclose(expected, plain(x))
        tta.train(), plain.train()
        torch.testing.assert_close(tta(x), plain(x))  # training steps never see the mirror images


def test_scores_report_accuracy_with_and_without_tta(splits):
    torch.manual_seed(0)
    model = FashionCNN(CNNConfig(arch="resnet", width=4, depth=1, tta=True))
    without = FashionCNN(CNNConfig(arch="resnet", width=4, depth=1))
    without.load_state_dict(model.state_dict())
    x, y = splits.val_x, splits.val_y
    with_tta, no_tta = cnn_scores(model, x, y), cnn_scores(without, x, y)
    assert with_tta["accuracy_no_tta"] == no_tta["accuracy"] == no_tta["accuracy_no_tta"]
    assert with_tta["loss"] != no_tta["loss"]


def test_the_judge_scores_with_tta_on_the_features_of_the_images_alone():
    from fashion_tune.evaluation.judging import judge_outputs

    torch.manual_seed(0)
    judge = FashionCNN(CNNConfig(arch="resnet", width=4, depth=1, tta=True)).eval()
    x = images(5)
    probs, feats = judge_outputs(judge, x)
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(judge(x), 1))
        torch.testing.assert_close(feats, judge.features(x))


# ---- optimizer, lr schedules, label smoothing ----


def test_sgd_is_nesterov_and_adamw_stays_the_default():
    model = build_model("cnn", tiny())
    sgd = make_optimizer(model, get_kind("cnn").settings(tiny(optimizer="sgd", momentum=0.8, weight_decay=1e-4)))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["nesterov"], group["momentum"], group["weight_decay"]) == (True, 0.8, 1e-4)
    assert isinstance(make_optimizer(model, get_kind("cnn").settings(tiny())), torch.optim.AdamW)


def lrs(scheduler_name: str, steps: int, **overrides) -> list[float]:
    settings = get_kind("cnn").settings(tiny(scheduler=scheduler_name, **overrides))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=settings.lr)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=steps // settings.epochs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_triangular_and_onecycle_rise_then_fall_per_step():
    # 2 epochs of 5 steps; the first 20% of the steps rise from lr * min_lr_ratio = 0.01 to 0.1.
    common = dict(epochs=2, lr=0.1, min_lr_ratio=0.1, lr_warmup=0.2)
    triangular = lrs("triangular", 10, **common)
    assert triangular == pytest.approx([0.01, 0.1] + [0.1 - 0.09 * k / 8 for k in range(1, 9)])
    onecycle = lrs("onecycle", 10, **common)
    assert onecycle[:2] == pytest.approx([0.01, 0.1]) and onecycle[-1] == pytest.approx(0.01)
    assert onecycle[3] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 2 / 8)) / 2)  # a cosine, not a line
    assert onecycle[3] > triangular[3] + 0.005


def test_a_run_steps_per_step_schedules_every_batch(splits):
    recorder = Recorder()
    # 300 images in batches of 50: 6 steps an epoch, 12 in all; triangular from 0.01 up to 0.1 at step 3, down to 0.01.
    fit("cnn", tiny(epochs=2, scheduler="triangular", lr=0.1, min_lr_ratio=0.1, lr_warmup=0.25, optimizer="sgd"),
        splits=splits, reporter=recorder)
    expected = lrs("triangular", 12, epochs=2, lr=0.1, min_lr_ratio=0.1, lr_warmup=0.25)
    assert [m["lr"] for m in recorder.metrics] == pytest.approx([expected[5], expected[11]])  # each epoch's last step's
    assert expected[11] == pytest.approx(0.01)
    # The schedule ends at its floor and stays there: it never steps past its last step.
    scheduler = recorder.states[-1]["scheduler"]
    assert scheduler["last_epoch"] == 11 and scheduler["_last_lr"] == pytest.approx([0.01])


def test_pbt_rescales_a_one_cycle_schedule_like_the_cosine():
    settings = get_kind("cnn").settings(tiny(scheduler="onecycle", lr=0.1, epochs=2))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=5)
    for _ in range(3):
        optimizer.step(), scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    apply_mutations(optimizer, scheduler, {"lr": 0.1, "weight_decay": 0.0}, {"lr": 0.2, "weight_decay": 0.0})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2 * before)
    optimizer.step(), scheduler.step()
    twice = lrs("onecycle", 10, lr=0.2, epochs=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(twice[4])


def test_label_smoothing_changes_the_loss_as_its_formula_says():
    torch.manual_seed(0)
    model = build_model("cnn", tiny()).eval()  # no dropout noise between the three forward passes
    x, y = images(8), torch.arange(8) % 10
    plain = get_kind("cnn").trainer(get_kind("cnn").settings(tiny())).loss(model, x, y)
    smooth = get_kind("cnn").trainer(get_kind("cnn").settings(tiny(label_smoothing=0.2))).loss(model, x, y)
    log_probs = F.log_softmax(model(x), dim=1)
    expected = 0.8 * F.nll_loss(log_probs, y) + 0.2 * (-log_probs.mean(1)).mean()
    torch.testing.assert_close(smooth, expected)
    assert not torch.allclose(smooth, plain)


# ---- EMA of the weights ----


def test_ema_warms_up_then_keeps_its_decay():
    update = ema_update(0.9)
    averaged, current = [torch.zeros(1)], [torch.ones(1)]
    update(averaged, current, torch.tensor(0))  # step 0: decay min(0.9, 1/10) = 0.1
    assert averaged[0].item() == pytest.approx(0.9)
    averaged = [torch.zeros(1)]
    update(averaged, current, torch.tensor(1000))  # late: the decay itself
    assert averaged[0].item() == pytest.approx(0.1)
    counters = [torch.tensor(3)]
    update(counters, [torch.tensor(7)], torch.tensor(5))
    assert counters[0].item() == 7  # integer buffers are copied


def test_ema_weights_are_what_validation_checkpoints_and_promotion_hold(splits, tmp_path):
    from fashion_tune.promotion.promote import validation_scores, write_promoted

    recorder = Recorder()
    config = tiny(epochs=2, ema_decay=0.9, tta=True, lr=5e-3)
    fit("cnn", config, splits=splits, reporter=recorder)
    state, reported = recorder.states[-1], recorder.metrics[-1]
    assert state["ema_steps"] == 12
    differ = [name for name, t in state["model"].items() if t.is_floating_point() and not torch.equal(t, state["train_model"][name])]
    assert "classifier.weight" in differ

    ema, raw = build_model("cnn", config), build_model("cnn", config)
    ema.load_state_dict(state["model"]), raw.load_state_dict(state["train_model"])
    scores = validation_scores("cnn", ema.eval(), splits.val_x, splits.val_y)
    assert scores["accuracy"] == reported["val_acc"] and scores["accuracy_no_tta"] == reported["val_acc_no_tta"]
    assert cnn_scores(raw, splits.val_x, splits.val_y, tta=False)["accuracy"] == reported["val_acc_raw"]

    # Promotion writes the checkpoint's `model`: the EMA weights, which load_model gives back.
    write_promoted(tmp_path, "cnn", state, {"validation": scores, "test": {"accuracy": 0.0}}, {})
    promoted, _ = load_model(tmp_path / "model.pt", kind="cnn")
    for name, tensor in promoted.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    assert "train_model" not in load_checkpoint(tmp_path / "model.pt")


def test_without_ema_the_raw_metric_is_the_metric_and_the_checkpoint_is_as_before(splits):
    recorder = Recorder()
    fit("cnn", tiny(epochs=1), splits=splits, reporter=recorder)
    m = recorder.metrics[-1]
    assert m["val_acc_raw"] == m["val_acc"] == m["val_acc_no_tta"]
    assert "train_model" not in recorder.states[-1] and "ema_steps" not in recorder.states[-1]


def test_the_vae_can_average_its_weights_too(splits):
    vae = {"width": 8, "depth": 1, "latent_dim": 8, "batch_size": 50, "subset": 300, "val_subset": 200,
           "device": "cpu", "epochs": 1}
    plain, averaged = fit("vae", vae, splits=splits), fit("vae", {**vae, "ema_decay": 0.5}, splits=splits)
    assert plain["val_neg_elbo_raw"] == plain["val_neg_elbo"]
    assert averaged["val_neg_elbo_raw"] == plain["val_neg_elbo"]  # the same training weights, seed and batches
    assert averaged["val_neg_elbo"] != plain["val_neg_elbo"]


def test_a_resumed_run_with_ema_and_a_one_cycle_matches_an_uninterrupted_one(splits, tmp_path):
    config = tiny(epochs=3, ema_decay=0.9, scheduler="onecycle", optimizer="sgd", lr=0.05)
    full = Recorder()
    fit("cnn", config, splits=splits, reporter=full)
    state = load_checkpoint(save_checkpoint(full.states[0], tmp_path / "checkpoint.pt"), kind="cnn")
    resumed = Recorder()
    fit("cnn", config, splits=splits, reporter=resumed, checkpoint=state)
    for a, b in zip(full.metrics[1:], resumed.metrics):
        for key in ("train_loss", "val_loss", "val_acc_raw", "lr"):
            assert a[key] == b[key], key
    for key in ("model", "train_model"):
        for name, tensor in full.states[-1][key].items():
            assert torch.equal(tensor, resumed.states[-1][key][name]), (key, name)
    with pytest.raises(ConfigError, match="onecycle schedule spans 3 epochs and cannot be stretched to 5"):
        fit("cnn", {**config, "epochs": 5}, splits=splits, checkpoint=state)


# ---- the space's parameter limit ----


def space(params, **extra):
    from fashion_tune.spaces.space import parse_space

    return parse_space({"kind": "cnn", "num_samples": 2, "scheduler": {"max_t": 2}, "limits": {"params": 1_000_000},
                        "fixed": {"arch": "resnet"}, "params": params, **extra}, "s.yaml")


def test_a_space_that_allows_a_model_over_its_limit_is_refused_naming_it():
    from fashion_tune.spaces.space import describe_space

    with pytest.raises(ConfigError, match=r"s.yaml: limits.params: the space allows width=32, depth=3 with 1,084,010 "
                                          r"trainable parameters, over the limit of 1,000,000; narrow"):
        space({"width": {"type": "choice", "values": [16, 32]}, "depth": {"type": "randint", "low": 1, "high": 4}})
    # The same sizes nested so that every option fits: accepted, and the summary names the largest.
    ok = space({"depth": {"type": "choice", "values": [
        {"value": 3, "params": {"width": {"type": "quniform", "low": 16, "high": 24, "q": 8}}},
        {"value": 1, "params": {"width": {"type": "quniform", "low": 16, "high": 48, "q": 16}}}]}})
    assert "the largest model the space allows has 690,970 (depth=1, width=48)" in describe_space(ok)
    with pytest.raises(ConfigError, match="limits.flops: unknown key; allowed keys: params"):
        space({"width": {"type": "choice", "values": [16]}}, limits={"flops": 1})
    with pytest.raises(ConfigError, match="limits.params: 0 is not allowed; use an integer >= 1"):
        space({"width": {"type": "choice", "values": [16]}}, limits={"params": 0})


def test_the_fixed_model_counts_too():
    with pytest.raises(ConfigError, match="the space allows the fixed model with 1,086,370"):
        space({"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}, fixed={"arch": "resnet", "width": 40})


def test_the_resnet_cpu_space_keeps_every_trial_within_one_million_parameters():
    from fashion_tune.spaces.limits import largest_shapes, model_shapes
    from fashion_tune.spaces.space import load_space

    resnet = load_space(ROOT / "search_spaces" / "cnn_resnet_cpu.yaml", kind="cnn")
    assert resnet.limits == {"params": 1_000_000}
    assert resnet.fixed["precision"] == "auto" and resnet.fixed["tta"] and resnet.fixed["ema_decay"] > 0
    assert {shape["arch"] for shape in model_shapes("cnn", resnet.params)} == {"resnet", "plain"}
    assert len(model_shapes("cnn", resnet.params)) == 10
    assert largest_shapes(resnet)["params"][0] <= 1_000_000
    for point in resnet.points_to_evaluate:
        assert parameter_count("cnn", resnet.trial_config(point)) <= 1_000_000
