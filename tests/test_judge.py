"""The independent judge: its network, training on the training split only, shipping it to best_models/judge/,
and grading with it as the headline (the promoted CNN's scores secondary)."""

import hashlib
import json

import pytest
import torch
from torch import nn

from fashion_tune import cli
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.data.splits import make_splits
from fashion_tune.evaluation import grading, judging
from fashion_tune.models import count_parameters
from fashion_tune.models.judge import JudgeConfig, JudgeMLP
from fashion_tune.promotion import judge as shipping
from fashion_tune.store.promoted import load_judge
from fashion_tune.training.config import resolve_config
from fashion_tune.training.judge import JudgeTraining
from fashion_tune.training.loop import build_model, load_splits

QUICK = JudgeTraining(epochs=1, subset=1000)


def untrained(kind, **config):
    torch.manual_seed(0)
    return build_model(kind, resolve_config(kind, config)).eval()


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A judge shipped by the real code path on 1,000 training images, one epoch; and what it was given."""
    models = tmp_path_factory.mktemp("models")
    given = {}
    real_train = shipping.train_judge

    def spy(train_x, train_y, *args, **kwargs):
        given["x"], given["y"] = train_x.clone(), train_y.clone()
        return real_train(train_x, train_y, *args, **kwargs)

    shipping.train_judge = spy
    try:
        manifest = shipping.ship_judge(models, QUICK, command="fashion-tune train-judge --subset 1000 --epochs 1",
                                       echo=quiet)
    finally:
        shipping.train_judge = real_train
    return models, manifest, given


def test_the_judge_shares_no_layer_type_with_the_promoted_cnn():
    judge, cnn = JudgeMLP(JudgeConfig()), untrained("cnn")
    kinds = lambda model: {type(m) for m in model.modules() if not list(m.children())}  # noqa: E731
    assert not {nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.MaxPool2d} & kinds(judge)
    assert {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d} <= kinds(cnn)  # what the promoted CNN is built of
    assert count_parameters(judge) == 535_818  # as its config's docstring says
    x = torch.rand(3, 1, 28, 28)
    assert judge.features(x).shape == (3, 256) and judge(x).shape == (3, 10)


def test_the_judge_trains_on_training_images_only(shipped):
    models, manifest, given = shipped
    data = load_fashion_mnist()
    splits = make_splits(data, subset=1000, subset_seed=QUICK.seed)
    assert torch.equal(given["x"], splits.train_x) and torch.equal(given["y"], splits.train_y)
    seen = {hashlib.sha256(image.numpy().tobytes()).digest() for image in given["x"]}
    full = make_splits(data)
    for other in (full.val_x, full.test_x):  # no validation or test image, byte for byte
        assert not seen & {hashlib.sha256(image.numpy().tobytes()).digest() for image in other}
    assert manifest["training"]["images"] == 1000 and "no validation or test image" in manifest["training"]["what"]


def test_the_shipped_judge_has_a_manifest_and_loads_weights_only(shipped):
    models, manifest, _ = shipped
    target = models / "judge"
    on_disk = json.loads((target / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["architecture"].startswith("JudgeMLP") and on_disk["seed"] == QUICK.seed != 0
    assert on_disk["parameters"] == 535_818 and on_disk["command"].startswith("fashion-tune train-judge")
    assert 0.5 < on_disk["test_accuracy"] == on_disk["test"]["accuracy"] <= 1 and on_disk["test"]["images"] == 10_000
    assert on_disk["files"]["model.pt"] == hashlib.sha256((target / "model.pt").read_bytes()).hexdigest()
    state = torch.load(target / "model.pt", weights_only=True)
    assert state["kind"] == "judge" and "optimizer" not in state
    model, loaded = load_judge(models)
    assert isinstance(model, JudgeMLP) and not model.training and loaded == on_disk
    # Its recorded test accuracy is what the loaded weights score.
    test = load_splits(resolve_config("cnn", {"subset": 10, "val_subset": 10}))
    probs, _ = judging.judge_outputs(model, test.test_x)
    assert (probs.argmax(1) == test.test_y).double().mean().item() == pytest.approx(on_disk["test_accuracy"])
    assert not list(models.glob(".tmp-*"))


def test_no_judge_loads_as_none_and_a_damaged_one_is_a_one_line_error(tmp_path, shipped, capsys):
    assert load_judge(tmp_path) == (None, None)
    models, _, _ = shipped
    damaged = tmp_path / "damaged"
    (damaged / "judge").mkdir(parents=True)
    for name in ("model.pt", "manifest.json", "config.yaml"):
        (damaged / "judge" / name).write_bytes((models / "judge" / name).read_bytes())
    data = bytearray((damaged / "judge/model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "judge/model.pt").write_bytes(bytes(data))
    from fashion_tune.util.errors import FashionTuneError

    with pytest.raises(FashionTuneError, match="SHA-256.*train-judge"):
        load_judge(damaged)


def run_cli(*args) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def test_train_judge_flags_are_checked_in_one_line(tmp_path, capsys):
    for flag, value in (("--epochs", "0"), ("--subset", "5"), ("--threads", "0"), ("--device", "cuda:7")):
        code = run_cli("train-judge", "--models-dir", tmp_path, flag, value)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert flag.lstrip("-") in err or value in err, err
    assert not (tmp_path / "judge").exists()


# --- grading with the judge ----------------------------------------------------------------


@pytest.fixture(scope="module")
def test_subset():
    splits = load_splits(resolve_config("cnn", {"subset": 10, "val_subset": 10}))
    pick = judging.per_class_subset(splits.test_y, 30)
    return splits.test_x[pick], splits.test_y[pick]


def test_the_independent_judge_is_the_headline_and_the_promoted_cnn_secondary(test_subset, shipped):
    x, y = test_subset
    vae, cnn = untrained("vae", width=8, depth=1, latent_dim=8, embed_dim=8), untrained("cnn", width=8, depth=1)
    judge, _ = load_judge(shipped[0])
    settings = {"per_class": 10, "guided_per_class": 3, "candidates": 8, "seed": 3}
    ticks = []
    alone, _ = grading.grade_vae(vae, cnn, x, y, **settings)
    both, _ = grading.grade_vae(vae, cnn, x, y, progress=ticks.append, judge=judge, **settings)
    assert len(ticks) == grading.vae_grading_steps(10, judges=2)
    assert alone["headline_judge"] == "promoted_cnn" and "promoted_cnn" not in alone
    assert both["headline_judge"] == "independent"
    # The secondary figures are exactly what the promoted CNN alone reports; the headline ones are the judge's.
    assert both["promoted_cnn"]["samples"] == alone["samples"]
    assert both["promoted_cnn"]["rubric"] == alone["rubric"]
    # The letter grade is the promoted CNN's either way (the rubric was set with a CNN judge); the
    # independent judge's grade is kept beside it for contrast.
    assert both["rubric"] == alone["rubric"] and both["rubric_judge"] == alone["rubric_judge"] == "promoted_cnn"
    assert both["reference_points"] == alone["reference_points"]
    assert set(both["independent_rubric"]["criteria"]) == set(alone["rubric"]["criteria"])
    real = judging.per_class_subset(y, 10)  # the real column: per_class test images of each class
    probs, _ = judging.judge_outputs(judge, x[real])
    assert both["samples"]["real"]["accuracy"] == pytest.approx((probs.argmax(1) == y[real]).double().mean().item())
    assert both["samples"]["raw"] != alone["samples"]["raw"]
    # The same images: what does not depend on a judge is equal.
    for name in ("real", "raw", "guided"):
        assert both["samples"][name]["diversity_pixels"] == alone["samples"][name]["diversity_pixels"]
    assert both["test"] == alone["test"] and both["original"] == alone["original"]


# ---- the judge during VAE training: val_sample_acc ----


def test_a_vae_trained_with_a_sample_judge_reports_val_sample_acc_every_epoch(shipped, tmp_path):
    """`sample_judge` (a models directory with judge/) adds val_sample_acc, the share of raw samples the judge
    classifies as their class: each epoch, from fixed z draws (the same weights give the same number)."""
    from fashion_tune.training.loop import fit
    from fashion_tune.training.scoring import sample_accuracy
    from fashion_tune.training.judge import load_sample_judge
    from fashion_tune.training.settings import VAETraining

    models = shipped[0]
    config = resolve_config("vae", {"sample_judge": str(models), "sample_judge_images": 200, "epochs": 2, "subset": 500,
                                    "val_subset": 200, "width": 8, "depth": 1, "latent_dim": 8, "device": "cpu"})
    reported = []
    fit("vae", config, reporter=lambda metrics, state: reported.append(metrics))
    assert [m["epoch"] for m in reported] == [1, 2]
    assert all(0 <= m["val_sample_acc"] <= 1 for m in reported)
    settings = VAETraining(sample_judge=str(models), sample_judge_images=200)
    judge, vae = load_sample_judge(settings), untrained("vae", width=8, depth=1, latent_dim=8)
    first = sample_accuracy(vae, judge, 200)
    assert first == sample_accuracy(vae, judge, 200)
    # An untrained VAE's samples are noise: the judge finds their class about as often as chance, less than
    # a trained one's (2 epochs on 500 images already draw recognisable items for this judge).
    assert first < reported[-1]["val_sample_acc"]
    without = resolve_config("vae", {"epochs": 1})
    assert without["sample_judge"] is None  # off by default: no judge is loaded, no metric reported


@pytest.mark.parametrize("value, message", [("relative/dir", "must be an absolute path"),
                                            ("/no/such/models", "no judge at /no/such/models/judge/model.pt")])
def test_a_sample_judge_that_cannot_be_used_is_refused_when_the_config_is_read(value, message):
    from fashion_tune.util.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve_config("vae", {"sample_judge": value})


def test_val_sample_acc_can_be_a_sweep_objective(shipped, tmp_path):
    from fashion_tune.spaces.space import parse_space

    space = parse_space({"kind": "vae", "num_samples": 2, "scheduler": {"max_t": 2},
                         "fixed": {"sample_judge": str(shipped[0])},
                         "objectives": [{"metric": "val_neg_elbo", "mode": "min"}, {"metric": "val_sample_acc", "mode": "max"}],
                         "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, path=tmp_path / "s.yaml")
    assert space.objectives == (("val_neg_elbo", "min"), ("val_sample_acc", "max"))


def test_val_sample_acc_without_a_sample_judge_is_refused_in_a_space(tmp_path):
    from fashion_tune.spaces.space import parse_space
    from fashion_tune.util.errors import ConfigError

    with pytest.raises(ConfigError, match="val_sample_acc needs a judge: set fixed: sample_judge: shipped"):
        parse_space({"kind": "vae", "num_samples": 2, "scheduler": {"max_t": 2}, "metric": "val_sample_acc",
                     "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, path=tmp_path / "s.yaml")
