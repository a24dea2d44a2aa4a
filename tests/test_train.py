"""Training: real data, small subsets and tiny widths, so each run takes seconds on 2 CPU cores."""

import copy
import dataclasses
import math

import pytest
import torch

from fashion_tune.util.errors import CheckpointError, ConfigError
from fashion_tune.training.checkpoint import load_checkpoint, save_checkpoint
from fashion_tune.training.config import resolve_config
from fashion_tune.training.loop import build_model, fit, load_model, load_splits

TINY = {
    "vae": {"width": 8, "depth": 1, "latent_dim": 8, "batch_size": 50},
    "cnn": {"width": 8, "depth": 1, "batch_size": 50},
}


def tiny(kind, **overrides):
    return {**TINY[kind], "subset": 1000, "val_subset": 500, "device": "cpu", **overrides}


@pytest.fixture(scope="module")
def splits():
    return load_splits(resolve_config("cnn", tiny("cnn")))


class Recorder:
    def __init__(self):
        self.metrics, self.states = [], []

    def __call__(self, metrics, state):
        self.metrics.append(dict(metrics))
        self.states.append(copy.deepcopy(state))  # the state holds live tensors; keep this epoch's


@pytest.mark.parametrize("kind,metric", [("vae", "val_neg_elbo"), ("cnn", "val_loss")])
def test_a_few_epochs_lower_the_validation_loss(kind, metric, splits):
    rec = Recorder()
    fit(kind, tiny(kind, epochs=4, lr=3e-3), splits=splits, reporter=rec)
    values = [m[metric] for m in rec.metrics]
    assert len(values) == 4
    assert values[-1] < values[0], values
    if kind == "cnn":
        assert rec.metrics[-1]["val_acc"] > 0.5  # far above the 0.1 of chance on 10 classes


def test_vae_reports_elbo_terms_and_beta_schedule(splits):
    rec = Recorder()
    fit("vae", tiny("vae", epochs=4, beta_start=0.1, beta_end=1.0, beta_warmup=0.5), splits=splits, reporter=rec)
    m = rec.metrics[0]
    for key in ["val_neg_elbo", "val_recon", "val_kl", "beta", "train_loss", "epoch_time_s", "images_per_s"]:
        assert math.isfinite(m[key]), key
    assert m["val_neg_elbo"] == pytest.approx(m["val_recon"] + m["val_kl"])
    assert [r["beta"] for r in rec.metrics] == pytest.approx([0.1, 0.55, 1.0, 1.0])


@pytest.mark.parametrize("kind", ["vae", "cnn"])
def test_resume_reproduces_an_uninterrupted_run(kind, splits, tmp_path):
    config = tiny(kind, epochs=4, erase_prob=0.5) if kind == "cnn" else tiny(kind, epochs=4)
    full = Recorder()
    fit(kind, config, splits=splits, reporter=full)

    # Interrupt after epoch 2: continue from that epoch's checkpoint, round-tripped through a file.
    path = save_checkpoint(full.states[1], tmp_path / "checkpoint.pt")
    state = load_checkpoint(path, kind=kind)
    resumed = Recorder()
    fit(kind, config, splits=splits, reporter=resumed, checkpoint=state)

    assert [m["epoch"] for m in resumed.metrics] == [3, 4]
    for a, b in zip(full.metrics[2:], resumed.metrics):
        for key in ["train_loss", "val_loss"]:
            assert a[key] == b[key], (key, a[key], b[key])
    for name, tensor in full.states[-1]["model"].items():
        assert torch.equal(tensor, resumed.states[-1]["model"][name]), name


def test_bad_config_keys_are_rejected_by_name():
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'.*allowed keys:.*lr"):
        resolve_config("vae", {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="epochs"):
        resolve_config("cnn", {"epochs": 0})
    with pytest.raises(ConfigError, match="beta_schedule='sigmoid'.*constant"):
        resolve_config("vae", {"beta_schedule": "sigmoid"})
    with pytest.raises(ConfigError, match="flip"):
        resolve_config("cnn", {"flip": "yes"})
    assert resolve_config("cnn", {"batch_size": 64.0})["batch_size"] == 64  # quniform yields floats


def test_early_stopping_and_non_finite_loss_end_the_run(splits):
    rec = Recorder()
    last = fit("cnn", tiny("cnn", epochs=6, lr=1e-9, early_stop_patience=1), splits=splits, reporter=rec)
    assert len(rec.metrics) < 6 and last["best_epoch"] < last["epoch"]

    poisoned = dataclasses.replace(splits, train_x=splits.train_x.clone())
    poisoned.train_x[::2] = float("nan")  # every batch holds a NaN image: the first loss is NaN
    rec = Recorder()
    last = fit("vae", tiny("vae", epochs=3), splits=poisoned, reporter=rec)
    assert last["diverged"] is True and len(rec.metrics) == 1
    assert last["val_neg_elbo"] == math.inf


def test_checkpoint_reloads_the_model(tmp_path, splits):
    rec = Recorder()
    fit("cnn", tiny("cnn", epochs=1), splits=splits, reporter=rec)
    path = save_checkpoint(rec.states[-1], tmp_path / "checkpoint.pt")
    model, state = load_model(path, kind="cnn")
    expected = build_model("cnn", state["config"])
    expected.load_state_dict(rec.states[-1]["model"])
    expected.eval()
    x = splits.val_x[:20]
    assert torch.equal(model(x), expected(x))

    with pytest.raises(CheckpointError, match="holds a cnn model, not a vae"):
        load_model(path, kind="vae")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# --- precision and cost ---------------------------------------------------------------------


def test_precision_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, capsys):
    from fashion_tune.training import device as dev

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert [dev.pick_precision(p, cpu) for p in ("auto", "bf16", "fp32")] == ["bf16", "bf16", "fp32"]
    assert [dev.pick_precision(p, cuda) for p in ("auto", "bf16", "fp32")] == ["fp32", "bf16", "fp32"]
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(dev, "_warned", set())
    assert dev.pick_precision("auto", cpu) == "fp32" and dev.pick_precision("auto", cpu) == "fp32"
    assert dev.pick_precision("bf16", cpu) == "bf16"  # asked for: emulated, and said so
    err = capsys.readouterr().err
    assert err.count("training in fp32") == 1 and "emulated" in err


def test_training_steps_are_channels_last_for_bf16_on_the_cpu_only(splits, monkeypatch):
    from fashion_tune.training import device as dev
    from fashion_tune.training import loop as train

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dev.pick_memory_format("bf16", cpu) == torch.channels_last
    assert {dev.pick_memory_format("fp32", cpu), dev.pick_memory_format("bf16", cuda)} == {torch.contiguous_format}

    layouts = []
    original = train._train_epoch

    def spy(run, *args):
        layouts.append(run.model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last))
        return original(run, *args)

    monkeypatch.setattr(train, "_train_epoch", spy)
    for precision in ("bf16", "fp32"):
        fit("vae", tiny("vae", epochs=2, precision=precision, device="cpu"), splits=splits)
    assert layouts == [True, True, False, False], "validation between epochs leaves the training layout as it was"


def test_bad_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="precision='fp16' is not allowed; choose one of: auto, fp32, bf16"):
        resolve_config("cnn", {"precision": "fp16"})


@pytest.mark.parametrize("kind", ["vae", "cnn"])
def test_validation_runs_in_fp32_whatever_training_used(kind, splits):
    from fashion_tune.training.kinds import get_kind

    recorder = Recorder()
    config = resolve_config(kind, tiny(kind, epochs=1, precision="bf16"))
    fit(kind, config, splits=splits, reporter=recorder)
    assert recorder.metrics[-1]["precision"] == "bf16"
    model = build_model(kind, config)
    model.load_state_dict(recorder.states[-1]["model"])
    task = get_kind(kind).trainer(get_kind(kind).settings(config))
    again = task.evaluate(model.eval(), splits.val_x, splits.val_y)  # plain fp32
    assert again["val_loss"] == recorder.metrics[-1]["val_loss"]


def test_results_carry_params_and_flops_per_training_image(splits):
    from fashion_tune.models import count_parameters
    from fashion_tune.training.loop import training_cost

    recorder = Recorder()
    fit("cnn", tiny("cnn", epochs=1), splits=splits, reporter=recorder)
    row = recorder.metrics[-1]
    assert row["params"] == count_parameters(build_model("cnn", resolve_config("cnn", tiny("cnn"))))
    assert row["flops"] == training_cost("cnn", tiny("cnn"))["flops"] > 0
    # The default models, as torch.utils.flop_counter counts them (forward + backward per image).
    assert training_cost("vae", {})["flops"] == pytest.approx(1.724e9, rel=1e-3)
    assert training_cost("cnn", {})["flops"] == pytest.approx(0.2735e9, rel=1e-3)
    # Doubling the width roughly quadruples the convolutions' cost.
    assert 3.5 < training_cost("cnn", {"width": 80})["flops"] / training_cost("cnn", {})["flops"] < 4.1


def test_cnn_trains_when_the_last_batch_would_hold_one_image():
    config = resolve_config("cnn", tiny("cnn", subset=1025, batch_size=128, epochs=1))
    assert fit("cnn", config)["epoch"] == 1


def test_dynamic_binarization_trains_on_binary_pixels(splits, monkeypatch):
    from fashion_tune.models import ConditionalVAE

    seen = []
    original = ConditionalVAE.loss_terms

    def spy(self, x, labels, beta):
        if self.training:
            seen.append(bool(((x == 0) | (x == 1)).all()))
        return original(self, x, labels, beta)

    monkeypatch.setattr(ConditionalVAE, "loss_terms", spy)
    metrics = fit("vae", tiny("vae", epochs=1, binarize="dynamic"), splits=splits)
    assert seen and all(seen)
    assert math.isfinite(metrics["val_neg_elbo_bin"]) and math.isfinite(metrics["val_neg_elbo"])


@pytest.mark.parametrize("kind", ["vae", "cnn"])
def test_promotion_rescores_exactly_what_training_reported(kind, splits):
    from fashion_tune.training.kinds import get_kind
    from fashion_tune.promotion.promote import validation_scores

    recorder = Recorder()
    config = resolve_config(kind, tiny(kind, epochs=1, seed=3, precision="fp32"))
    fit(kind, config, splits=splits, reporter=recorder)
    model = build_model(kind, config)
    model.load_state_dict(recorder.states[-1]["model"])
    scores = validation_scores(kind, model.eval(), splits.val_x, splits.val_y)
    reported = recorder.metrics[-1]
    # One function computes both, with the same fixed noise whatever the run's seed: bit for bit (in fp32,
    # where the trained model keeps the default memory layout).
    assert scores == {name: reported[metric] for name, metric in get_kind(kind).promoted_validation}
