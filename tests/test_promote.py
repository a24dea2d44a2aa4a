"""Promotion, evaluation and sampling from the command line, on tiny models trained once per module.

Experiments are written to disk in the layout a sweep leaves (sweep.json, trial_*/params.json,
result.json, checkpoint_*/checkpoint.pt) and read by the real `analysis.best_trial`.
"""

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from fashion_tune import cli
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.training.checkpoint import save_checkpoint
from fashion_tune.training.config import resolve_config
from fashion_tune.training.kinds import get_kind
from fashion_tune.training.loop import fit, load_splits
from fashion_tune.training.scoring import cnn_scores
from fashion_tune.store.promoted import load_promoted
from fashion_tune.promotion import promote
from fashion_tune.promotion.promote import promote_best_trial

TINY = {
    "vae": {"width": 8, "depth": 1, "latent_dim": 8, "embed_dim": 8, "batch_size": 50, "lr": 3e-3},
    "cnn": {"width": 8, "depth": 1, "batch_size": 50},
}
REPO = Path(__file__).resolve().parent.parent


def tiny(kind, **overrides):
    # A 1,000-image validation split keeps the re-scoring at promotion quick.
    return {**TINY[kind], "subset": 1000, "val_size": 1000, "device": "cpu", **overrides}


def train(kind, splits, **overrides):
    """Every epoch's checkpoint state of one tiny run."""
    states = []
    fit(kind, tiny(kind, **overrides), splits=splits, reporter=lambda metrics, state: states.append(copy.deepcopy(state)))
    return states


@pytest.fixture(scope="module")
def runs():
    splits = load_splits(resolve_config("cnn", tiny("cnn")))
    weak = train("cnn", splits, epochs=1, lr=2e-4)
    strong = train("cnn", splits, epochs=3, lr=3e-3)
    assert strong[-1]["metrics"]["val_acc"] > weak[-1]["metrics"]["val_acc"] + 0.1
    # The strong trial's last epoch regresses to the weak model: promotion must take epoch 3.
    regressed = copy.deepcopy(weak[-1])
    regressed["epoch"] = regressed["metrics"]["epoch"] = 4
    return {"weak": weak, "strong": strong + [regressed], "vae": train("vae", splits, epochs=2)}


def write_experiment(root: Path, kind: str, trials: dict, checkpoints: bool = True) -> Path:
    """An experiment directory as a sweep leaves it, with one checkpoint per epoch."""
    metric, mode = get_kind(kind).monitor, get_kind(kind).mode
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"kind": kind, "metric": metric, "mode": mode, "max_t": 4}))
    for trial_id, states in trials.items():
        trial = root / f"trial_{trial_id}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(states[0]["config"] if states else tiny(kind)))
        rows = []
        for i, state in enumerate(states):
            name = f"checkpoint_{i:06d}"
            if checkpoints:
                save_checkpoint(state, trial / name / "checkpoint.pt")
            rows.append({**state["metrics"], "trial_id": trial_id, "training_iteration": i + 1,
                         "checkpoint_dir_name": name, "done": i == len(states) - 1})
        (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under directory with its SHA-256: equal snapshots mean nothing changed."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}  # the lock is no content


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def experiments(tmp_path, runs):
    return {
        "both": write_experiment(tmp_path / "exp-both", "cnn", {"weak": runs["weak"], "strong": runs["strong"]}),
        "weak": write_experiment(tmp_path / "exp-weak", "cnn", {"weak": runs["weak"]}),
        "strong": write_experiment(tmp_path / "exp-strong", "cnn", {"strong": runs["strong"]}),
    }


def quiet(*_):
    pass


# --- choosing and writing the champion -----------------------------------------------------


@pytest.mark.ray
def test_promotes_the_best_trial_of_a_real_sweep(tmp_path_factory, tmp_path):
    import ray

    from fashion_tune.reports.analysis import load_results
    from tiny_sweeps import tiny_cnn_sweep

    try:
        outcome, _ = tiny_cnn_sweep(tmp_path_factory)  # shared with test_sweep.py and test_analysis.py
    finally:
        if ray.is_initialized():
            ray.shutdown()
    results = load_results(outcome.experiment_dir)
    models = tmp_path / "best_models"
    result = promote_best_trial(outcome.experiment_dir, kind="cnn", models_dir=models, echo=quiet)
    assert result.promoted
    row = results.set_index("trial_id").loc[result.trial_id]
    assert row["best_val_acc"] == results["best_val_acc"].max()  # the best by validation, not by test
    manifest = json.loads((models / "cnn/manifest.json").read_text())
    # Paths inside the experiment, not of this machine; the commit the sweep trained with.
    assert manifest["experiment"] == "tiny-cnn" and manifest["storage"] is None
    assert manifest["checkpoint"] == str(Path(row["best_checkpoint"]).relative_to(outcome.experiment_dir))
    assert manifest["checkpoint"].startswith(f"trial_{result.trial_id}/checkpoint_")
    sweep_code = json.loads((Path(outcome.experiment_dir) / "sweep.json").read_text())["code"]
    assert manifest["made_from"] == sweep_code
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", sweep_code["git_commit"])
    assert manifest["epoch"] == row["best_epoch"] == manifest["sweep_metric"]["epoch"]
    promoted = torch.load(models / "cnn/model.pt", weights_only=True)
    source = torch.load(Path(row["best_checkpoint"]) / "checkpoint.pt", weights_only=True)
    for key, value in source["model"].items():
        assert torch.equal(promoted["model"][key], value), key
    assert "optimizer" not in promoted  # weights and config only


def test_promotes_the_trial_best_on_validation_at_its_best_epoch(tmp_path, experiments, runs):
    models = tmp_path / "best_models"
    result = promote_best_trial(experiments["both"], models_dir=models, echo=quiet)
    assert result.promoted and result.trial_id == "strong"
    target = models / "cnn"
    state = torch.load(target / "model.pt", weights_only=True)  # weights only, nothing pickled
    assert state["kind"] == "cnn" and state["epoch"] == 3
    for key, value in runs["strong"][2]["model"].items():  # epoch 3, not the regressed epoch 4
        assert torch.equal(state["model"][key], value), key

    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["trial_id"] == "strong" and manifest["epoch"] == 3
    assert manifest["experiment"] == "exp-both" and manifest["checkpoint"] == "trial_strong/checkpoint_000002"
    assert manifest["storage"] is None and str(tmp_path) not in json.dumps(manifest)  # no path of this machine
    assert manifest["made_from"] is None  # this hand-made sweep.json recorded no code
    assert manifest["sweep_metric"]["name"] == "val_acc" and manifest["sweep_metric"]["epoch"] == 3
    assert manifest["validation_metric"]["images"] == 1000 and manifest["test_metric"]["images"] == 10_000
    assert manifest["data"]["sha256"] == load_fashion_mnist().sha256
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*", manifest["promoted_at"])
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", manifest["code"]["git_commit"])
    assert manifest["files"]["model.pt"] == hashlib.sha256((target / "model.pt").read_bytes()).hexdigest()
    assert (target / "config.yaml").is_file()
    assert not list(models.glob(".tmp-*")) and not list(models.glob(".old-*"))


def test_a_manifest_with_absolute_paths_from_before_still_loads_and_compares(tmp_path, experiments):
    """Manifests written before relative paths name the experiment and checkpoint by absolute path."""
    from fashion_tune.store.promoted import model_source

    models = tmp_path / "best_models"
    promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    path = models / "cnn/manifest.json"
    old = json.loads(path.read_text())
    for key in ("storage", "made_from"):
        del old[key]
    old["experiment"] = str(experiments["strong"])
    old["checkpoint"] = str(experiments["strong"] / "trial_strong/checkpoint_000002")
    path.write_text(json.dumps(old))
    _, manifest, _ = load_promoted("cnn", models)
    assert model_source(manifest) == {"experiment": "exp-strong", "checkpoint": "trial_strong/checkpoint_000002",
                                      "storage": None}
    assert model_source({"experiment": "s3://bucket/sweeps/cnn-x", "checkpoint": "s3://bucket/sweeps/cnn-x/trial_a/c"}) == \
        {"experiment": "cnn-x", "checkpoint": "trial_a/c", "storage": "s3://bucket/sweeps"}
    result = promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    assert not result.promoted and "already is the champion" in result.reason
    promote_best_trial(experiments["weak"], models_dir=models, force=True, echo=quiet)
    replaced = json.loads(path.read_text())["replaced"]
    assert replaced["experiment"] == "exp-strong" and replaced["trial_id"] == "strong"


def test_upgrade_manifests_rewrites_absolute_paths_and_nothing_else(tmp_path, experiments, capsys):
    """`fashion-tune upgrade-manifests` turns old manifests (the champion's and history's) into the relative
    form; the weights' checksum and every other field stay, the model still loads, a second run changes nothing."""
    models = tmp_path / "best_models"
    promote_best_trial(experiments["weak"], models_dir=models, echo=quiet)
    promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    history = next((models / "cnn/history").iterdir()) / "manifest.json"
    for path, name in ((models / "cnn/manifest.json", "strong"), (history, "weak")):
        old = json.loads(path.read_text())
        for key in ("storage", "made_from"):
            del old[key]
        old["experiment"] = str(experiments[name])
        old["checkpoint"] = str(experiments[name] / f"trial_{name}/checkpoint_000002")
        if old.get("replaced"):
            old["replaced"]["experiment"] = str(experiments["weak"])
        path.write_text(json.dumps(old))
    before = json.loads((models / "cnn/manifest.json").read_text())

    code, out, _ = run_cli(capsys, "upgrade-manifests", "--models-dir", str(models))
    assert code == 0 and "rewrote 2 manifests" in out
    after = json.loads((models / "cnn/manifest.json").read_text())
    assert (after["experiment"], after["checkpoint"], after["storage"]) == \
        ("exp-strong", "trial_strong/checkpoint_000002", None)
    assert after["replaced"]["experiment"] == "exp-weak" and after["made_from"] is None
    assert str(tmp_path) not in json.dumps({k: v for k, v in after.items() if k != "upgraded"})
    assert {k: v for k, v in after.items() if k not in ("experiment", "checkpoint", "replaced", "storage", "made_from",
                                                        "upgraded")} == \
        {k: v for k, v in before.items() if k not in ("experiment", "checkpoint", "replaced")}
    assert json.loads(history.read_text())["experiment"] == "exp-weak"
    load_promoted("cnn", models)  # the checksum still matches

    code, out, _ = run_cli(capsys, "upgrade-manifests", "--models-dir", str(models))
    assert code == 0 and "rewrote 0 manifests" in out
    code, _, err = run_cli(capsys, "upgrade-manifests", "--models-dir", str(tmp_path / "none"))
    assert_one_line_error(code, err, "not a directory", "--models-dir")


def test_promoted_model_reloads_and_reproduces_its_recorded_test_metric(tmp_path, experiments):
    models = tmp_path / "best_models"
    promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    model, manifest, metrics = load_promoted("cnn", models)
    test = load_splits(resolve_config("cnn", tiny("cnn")))
    again = cnn_scores(model, test.test_x, test.test_y)
    assert again["accuracy"] == metrics["test"]["accuracy"] == manifest["test_metric"]["value"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    before = snapshot(models)
    result = promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    assert not result.promoted and "already is the champion" in result.reason
    assert snapshot(models) == before


def test_worse_challenger_is_refused_and_force_replaces_it_keeping_history(tmp_path, experiments, capsys):
    models = tmp_path / "best_models"
    assert run_cli(capsys, "promote", experiments["strong"], "--models-dir", models)[0] == 0
    champion = snapshot(models)

    code, out, _ = run_cli(capsys, "promote", experiments["weak"], "--models-dir", models)
    assert code == 0
    assert "champion kept" in out and "--force" in out
    strong_val = json.loads((models / "cnn/manifest.json").read_text())["validation_metric"]["value"]
    assert f"{strong_val:.4f}" in out  # the comparison is printed with both numbers
    assert snapshot(models) == champion

    code, out, _ = run_cli(capsys, "promote", experiments["weak"], "--models-dir", models, "--force")
    assert code == 0 and "--force" in out
    manifest = json.loads((models / "cnn/manifest.json").read_text())
    assert manifest["trial_id"] == "weak" and manifest["forced"] and manifest["replaced"]["trial_id"] == "strong"
    [kept] = list((models / "cnn/history").iterdir())
    assert {f"cnn/{name}": digest for name, digest in snapshot(kept).items()} == champion


def test_better_challenger_replaces_the_champion_and_history_accumulates(tmp_path, experiments):
    models = tmp_path / "best_models"
    assert promote_best_trial(experiments["weak"], models_dir=models, echo=quiet).promoted
    result = promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    assert result.promoted and "better" in result.reason and not result.notes
    assert json.loads((models / "cnn/manifest.json").read_text())["trial_id"] == "strong"
    promote_best_trial(experiments["weak"], models_dir=models, force=True, echo=quiet)
    history = sorted((models / "cnn/history").iterdir())
    assert [json.loads((h / "manifest.json").read_text())["trial_id"] for h in history] == ["weak", "strong"]
    load_promoted("cnn", models)  # the new champion loads


# --- atomicity -----------------------------------------------------------------------------


def fail_writing_json(monkeypatch):
    def broken(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(promote, "write_json", broken)


def interrupt_while_keeping_history(monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(promote, "_keep_history", interrupted)


def fail_moving_the_new_champion_in(monkeypatch):
    real_rename = promote.os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(promote.os, "rename", rename)


@pytest.mark.parametrize("inject", [fail_writing_json, interrupt_while_keeping_history, fail_moving_the_new_champion_in])
def test_a_failure_mid_promotion_keeps_the_champion(tmp_path, experiments, monkeypatch, inject):
    models = tmp_path / "best_models"
    promote_best_trial(experiments["weak"], models_dir=models, echo=quiet)
    before = snapshot(models)
    inject(monkeypatch)
    with pytest.raises((OSError, KeyboardInterrupt)):
        promote_best_trial(experiments["strong"], models_dir=models, echo=quiet)
    monkeypatch.undo()
    assert snapshot(models) == before
    assert sorted(p.name for p in models.iterdir()) == [".lock", "cnn"]  # no temporary directories left
    _, manifest, _ = load_promoted("cnn", models)
    assert manifest["trial_id"] == "weak"


def test_a_crash_between_the_two_renames_is_undone_on_the_next_load(tmp_path, experiments):
    models = tmp_path / "best_models"
    promote_best_trial(experiments["weak"], models_dir=models, echo=quiet)
    before = snapshot(models)
    (models / "cnn").rename(models / ".old-cnn-abc-20250101-000000")  # the state a power cut can leave
    (models / ".tmp-cnn-def-20250101-000000").mkdir()
    _, manifest, _ = load_promoted("cnn", models)
    assert manifest["trial_id"] == "weak" and snapshot(models) == before


# --- errors --------------------------------------------------------------------------------


def test_promote_errors_are_one_line_and_change_nothing(tmp_path, experiments, runs, capsys):
    models = tmp_path / "best_models"
    promote_best_trial(experiments["weak"], models_dir=models, echo=quiet)
    before = snapshot(models)

    unfinished = write_experiment(tmp_path / "unfinished", "cnn", {"pending": []})
    missing = write_experiment(tmp_path / "missing", "cnn", {"strong": runs["strong"]}, checkpoints=False)
    corrupt = write_experiment(tmp_path / "corrupt", "cnn", {"strong": runs["strong"]})
    for checkpoint in corrupt.glob("trial_strong/checkpoint_*/checkpoint.pt"):
        checkpoint.write_bytes(b"not a checkpoint" * 100)
    vae_sweep = write_experiment(tmp_path / "vae-sweep", "vae", {"v": runs["vae"]})

    cases = [
        ((unfinished,), ["no trial", "val_acc"]),
        ((missing,), ["checkpoint", "gone"]),
        ((corrupt,), ["checkpoint_000002/checkpoint.pt", "corrupt"]),
        ((tmp_path / "nowhere",), ["nowhere"]),
        ((tmp_path,), ["sweep.json"]),
        ((vae_sweep, "--kind", "cnn"), ["vae sweep", "--kind vae"]),
    ]
    for args, fragments in cases:
        code, out, err = run_cli(capsys, "promote", *args, "--models-dir", models)
        assert_one_line_error(code, err, *fragments)
        assert snapshot(models) == before, args


def test_an_unreadable_champion_is_replaced_only_with_force(tmp_path, experiments, capsys):
    models = tmp_path / "best_models"
    promote_best_trial(experiments["weak"], models_dir=models, echo=quiet)
    (models / "cnn/model.pt").write_bytes(b"garbage")
    before = snapshot(models)
    code, _, err = run_cli(capsys, "promote", experiments["strong"], "--models-dir", models)
    assert_one_line_error(code, err, "champion", "--force")
    assert snapshot(models) == before
    assert run_cli(capsys, "promote", experiments["strong"], "--models-dir", models, "--force")[0] == 0
    [kept] = list((models / "cnn/history").iterdir())
    assert (kept / "model.pt").read_bytes() == b"garbage"
    load_promoted("cnn", models)


# --- the VAE: promotion, grading, sampling -------------------------------------------------


def test_vae_promotion_evaluate_and_sample(tmp_path, experiments, runs, capsys, monkeypatch):
    models = tmp_path / "best_models"
    checkout = tmp_path / "checkout"  # stands for the fashion-tune checkout: no judge shipped there yet
    monkeypatch.setattr("fashion_tune.store.promoted.CHECKOUT", checkout)
    assert_one_line_error(*run_cli(capsys, "evaluate", "--models-dir", models)[::2], "nothing to grade")
    vae_sweep = write_experiment(tmp_path / "vae-sweep", "vae", {"v": runs["vae"]})
    code, out, _ = run_cli(capsys, "promote", vae_sweep, "--kind", "vae", "--models-dir", models)
    assert code == 0 and "waiting for a judge" in out
    manifest = json.loads((models / "vae/manifest.json").read_text())
    assert manifest["validation_metric"]["name"] == "val_neg_elbo"
    assert manifest["test_metric"]["value"] > 0  # nats per image
    # The class prior, fitted on the trial's 1,000 training images, is kept only if validation says so.
    fitted = manifest["finish"]
    assert fitted["step"] == "fit_class_prior" and fitted["training_images"] == 1000 and fitted["summary"] in out
    # The fit (minutes on full data) says what it is doing as it goes, one line per prior scored.
    assert "fitting the sampling prior: encoding 1,000 training images" in out
    assert all(f"  K={k} Gaussian" in out for k in fitted["val_neg_elbo_by_components"])
    assert fitted["kept"] == (fitted["val_neg_elbo_fitted"] < fitted["val_neg_elbo_before"])
    tried = fitted["val_neg_elbo_by_components"]  # K = 1, 2, 4, ... while validation improved
    assert list(tried)[0] == "1" and fitted["val_neg_elbo_fitted"] == min(tried.values()) == tried[str(fitted["components"])]
    promoted_vae = load_promoted("vae", models)[0]
    assert promoted_vae.prior_is_standard != fitted["kept"]
    assert promoted_vae.prior_components == (fitted["components"] if fitted["kept"] else 1)
    expected = fitted["val_neg_elbo_fitted"] if fitted["kept"] else fitted["val_neg_elbo_before"]
    assert manifest["validation_metric"]["value"] == pytest.approx(expected)

    before = snapshot(models)
    assert_one_line_error(*run_cli(capsys, "evaluate", "--kind", "vae", "--models-dir", models)[::2],
                          "waiting for a judge", "--kind cnn")
    assert_one_line_error(*run_cli(capsys, "sample", "--class", "dress", "--models-dir", models)[::2],
                          "judge", "--candidates 1")
    assert snapshot(models) == before

    assert run_cli(capsys, "promote", experiments["strong"], "--models-dir", models)[0] == 0
    code, out, err = run_cli(capsys, "evaluate", "--models-dir", models, "--per-class", "10", "--guided-per-class", "3",
                             "--candidates", "5", "--iwae-images", "20", "--iwae-k", "50")
    assert code == 0, err
    # No independent judge shipped: one line says so, and the promoted CNN's scores are labelled as the headline.
    [note] = [line for line in out.splitlines() if "independent judge" in line and line.startswith("note:")]
    assert "train-judge --models-dir" in note and "scored by the promoted CNN" in out
    assert str(models / "report.md") in out
    report = json.loads((models / "report.json").read_text())
    assert report["cnn"]["test"]["accuracy"] == json.loads((models / "cnn/metrics.json").read_text())["test"]["accuracy"]
    # The report names the models by experiment and checkpoint inside it, not by paths of this machine.
    assert (report["cnn"]["model"]["experiment"], report["cnn"]["model"]["checkpoint"]) == \
        ("exp-strong", "trial_strong/checkpoint_000002")
    assert report["vae"]["model"]["experiment"] == "vae-sweep" and str(tmp_path) not in json.dumps(report["vae"]["model"])
    vae = report["vae"]
    assert vae["rubric"]["grade"][0] in "ABCDF" and set(vae["rubric"]["criteria"]) == {"class_fidelity", "fd_relative", "diversity_ratio"}
    assert vae["samples"]["guided"]["mean_confidence"] > vae["samples"]["raw"]["mean_confidence"]
    assert vae["judges"]["promoted_cnn"]["trial_id"] == "strong"
    assert vae["judges"]["headline"] == vae["headline_judge"] == "promoted_cnn" and vae["judges"]["independent"] is None
    bound = vae["likelihood"]
    assert (bound["k"], bound["images"]) == (50, 20) and "IWAE, k=50, 20 binarized test images" in out
    # The IWAE bound is at least as tight as the single-sample ELBO on the same binarized images.
    assert bound["nll_bound"] <= bound["neg_elbo_binarized"] + 3 * bound["nll_bound_stderr"]
    for name in ["report.md", "cnn_confusion_matrix.png", "vae_showcase.png", "vae_reconstruction.png",
                 "vae_interpolations.png", "vae_3_samples_per_item.png"]:
        assert (models / name).read_bytes()[:4] in (b"\x89PNG", b"# fa"), name
    markdown = (models / "report.md").read_text()
    assert "generation_score" in markdown and "![" in markdown and vae["rubric"]["grade"] in markdown
    assert "promoted CNN, no independent judge" in markdown and "No independent judge was shipped" in markdown

    out_png = tmp_path / "dresses.png"
    code, first, _ = run_cli(capsys, "sample", "--class", "dress", "-n", "3", "--candidates", "8", "--seed", "4",
                             "--out", out_png, "--models-dir", models)
    assert code == 0 and out_png.read_bytes()[:4] == b"\x89PNG" and "seed 4" in first
    code, second, _ = run_cli(capsys, "sample", "--class", "3", "-n", "3", "--candidates", "8", "--seed", "4",
                              "--out", out_png, "--models-dir", models)
    assert second == first  # class by index, same seed: the same images and confidences
    assert_one_line_error(*run_cli(capsys, "sample", "--class", "jacket", "--models-dir", models)[::2], "unknown class")

    # Grading only the CNN keeps the VAE section, whose model and judge are unchanged.
    code, out, _ = run_cli(capsys, "evaluate", "--kind", "cnn", "--models-dir", models)
    assert code == 0 and "kept the vae section" in out
    assert json.loads((models / "report.json").read_text())["vae"] == vae

    # No judge beside the models, one shipped in the checkout: that one scores the samples, and the report says where it is.
    code, out, err = run_cli(capsys, "train-judge", "--models-dir", checkout / "best_models", "--subset", "1000", "--epochs", "1", "--seed", "5")
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", "--models-dir", models, "--per-class", "10", "--guided-per-class", "3",
                             "--candidates", "5", "--iwae-images", "20", "--iwae-k", "50")
    assert code == 0, err
    [note] = [line for line in out.splitlines() if line.startswith("note:") and "independent judge" in line]
    assert str(checkout / "best_models" / "judge") in note and "train-judge --models-dir" in note
    borrowed = json.loads((models / "report.json").read_text())["vae"]
    assert borrowed["judges"]["headline"] == "independent"
    assert borrowed["judges"]["independent"]["location"] == str((checkout / "best_models" / "judge").resolve())
    assert "the one shipped in" in (models / "report.md").read_text()
    code, out, _ = run_cli(capsys, "evaluate", "--kind", "cnn", "--models-dir", models)
    assert code == 0 and "kept the vae section" in out  # the same judge, found the same way

    # With an independent judge shipped beside the models, its scores are the headline and the promoted CNN's are secondary.
    code, out, err = run_cli(capsys, "train-judge", "--models-dir", models, "--subset", "1000", "--epochs", "1")
    assert code == 0, err
    assert "shipped the judge" in out and (models / "judge/manifest.json").is_file()
    code, out, _ = run_cli(capsys, "evaluate", "--kind", "cnn", "--models-dir", models)
    assert code == 0 and "dropped the vae section" in out  # its numbers were not made with this judge
    code, out, err = run_cli(capsys, "evaluate", "--models-dir", models, "--per-class", "10", "--guided-per-class", "3",
                             "--candidates", "5", "--iwae-images", "20", "--iwae-k", "50")
    assert code == 0, err
    assert "note: no independent judge" not in out
    assert "VAE, scored by the independent judge" in out and "VAE, scored by the promoted CNN that picked" in out
    judged = json.loads((models / "report.json").read_text())["vae"]
    assert judged["headline_judge"] == judged["judges"]["headline"] == "independent"
    independent = judged["judges"]["independent"]
    assert independent["sha256"] == json.loads((models / "judge/manifest.json").read_text())["files"]["model.pt"]
    assert independent["architecture"].startswith("JudgeMLP") and "training split only" in independent["trained_on"]
    # The promoted CNN's figures are kept, the same as before the judge came (same models, same seed).
    assert judged["promoted_cnn"]["samples"] == vae["samples"] and judged["promoted_cnn"]["rubric"] == vae["rubric"]
    assert judged["rubric"] == vae["rubric"] and "Scored by the promoted CNN." in (models / "report.md").read_text()
    assert judged["samples"]["real"]["accuracy"] != vae["samples"]["real"]["accuracy"]
    markdown = (models / "report.md").read_text()
    assert "Scored by the independent judge" in markdown and "(independent judge)" in markdown
    assert "secondary: by the promoted CNN, which picked the guided samples" in markdown

    # A damaged promoted file is reported, and the report is left as it was.
    report_before = snapshot(models)
    data = bytearray((models / "cnn/model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / "cnn/model.pt").write_bytes(bytes(data))
    assert_one_line_error(*run_cli(capsys, "evaluate", "--kind", "cnn", "--models-dir", models)[::2], "SHA-256")
    assert {k: v for k, v in snapshot(models).items() if k != "cnn/model.pt"} == \
           {k: v for k, v in report_before.items() if k != "cnn/model.pt"}
