"""Search space files: the shipped ones parse, and every mistake is one line naming the file and the key.

No Ray here: a space is validated before Ray starts.
"""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from fashion_tune.util.errors import ConfigError
from fashion_tune.training.config import resolve_config
from fashion_tune.spaces.space import check_resources, load_space, parse_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

VALID = {
    "kind": "vae",
    "metric": "val_neg_elbo",
    "mode": "min",
    "num_samples": 4,
    "max_concurrent_trials": 2,
    "seed": 3,
    "scheduler": {"max_t": 4, "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "fixed": {"subset": 500, "val_subset": 200, "width": 8, "depth": 1},
    "params": {
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "latent_dim": {"type": "choice", "values": [8, 16]},
        "embed_dim": {"type": "quniform", "low": 8, "high": 32, "q": 8},
        "beta_schedule": {"type": "choice", "values": [
            {"value": "constant", "params": {"beta_end": {"type": "uniform", "low": 0.2, "high": 1.0}}},
            {"value": "linear", "params": {"beta_start": {"type": "loguniform", "low": 0.01, "high": 0.5},
                                           "beta_end": {"type": "uniform", "low": 0.5, "high": 2.0}}},
            {"value": "cyclical", "params": {"beta_cycles": {"type": "randint", "low": 2, "high": 5}}},
        ]},
    },
    "points_to_evaluate": [{"lr": 2e-3, "latent_dim": 16, "beta_schedule": "linear", "beta_start": 0.1, "beta_end": 1.0}],
}


def write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def changed(path_keys, value):
    """VALID with one entry (a tuple path into the nested dicts) replaced, or removed when value is ...."""
    data = yaml.safe_load(yaml.safe_dump(VALID, sort_keys=False))
    target = data
    for key in path_keys[:-1]:
        target = target[key]
    if value is ...:
        del target[path_keys[-1]]
    else:
        target[path_keys[-1]] = value
    return data


@pytest.mark.parametrize("name", ["vae.yaml", "cnn.yaml", "vae_quick.yaml", "cnn_quick.yaml", "vae_cpu.yaml", "cnn_cpu.yaml"])
def test_shipped_spaces_parse_and_cover_what_the_issue_asks(name):
    space = load_space(SPACES / name)
    assert space.kind == name.split(".")[0].split("_")[0]
    names = set(space.param_names())
    if space.kind == "vae":
        assert {"latent_dim", "beta_schedule", "beta_start", "beta_end", "beta_warmup", "lr", "weight_decay", "width"} <= names
        assert space.metric == "val_neg_elbo" and space.mode == "min"
    else:
        assert {"lr", "weight_decay", "dropout", "width", "batch_size", "crop_pad", "erase_prob"} <= names
        assert space.metric == "val_acc" and space.mode == "max"
    assert space.base_config()["epochs"] == space.max_t
    assert space.points_to_evaluate, "the known-good settings start the search"
    for point in space.points_to_evaluate:
        assert space.trial_config(point)["epochs"] == space.max_t
    header = (SPACES / name).read_text().splitlines()[0]
    assert header.startswith("#")
    data = space.data_config()
    if name.endswith("_quick.yaml"):
        assert space.gpu == 0 and data["subset"] <= 5000 and data["val_subset"] <= 2000
        assert space.num_samples * space.max_t <= 80
    elif name.endswith("_cpu.yaml"):  # full data, on this machine's CPUs
        assert data["subset"] is None and data["val_subset"] is None and space.gpu == 0
        assert space.fixed["precision"] == "auto"
    else:
        assert data["subset"] is None and data["val_subset"] is None and 0 < space.gpu < 1


def test_known_good_vae_point_is_the_original_projects():
    point = load_space(SPACES / "vae.yaml").points_to_evaluate[0]
    assert point["latent_dim"] == 32 and point["lr"] == 2e-3
    assert (point["beta_schedule"], point["beta_start"], point["beta_end"], point["beta_warmup"]) == ("linear", 0.1, 1.0, 0.5)
    config = load_space(SPACES / "vae.yaml").trial_config(point)
    assert config["batch_size"] == 64 and config["scheduler"] == "cosine_restarts"


def test_valid_space_parses(tmp_path):
    space = load_space(write(tmp_path, VALID), kind="vae")
    assert (space.num_samples, space.max_concurrent_trials, space.seed, space.max_t) == (4, 2, 3, 4)
    assert space.base_config() == {"subset": 500, "val_subset": 200, "width": 8, "depth": 1, "epochs": 4}
    assert space.param_names() == ["lr", "latent_dim", "embed_dim", "beta_schedule", "beta_end", "beta_start", "beta_cycles"]


def test_define_by_run_samples_only_the_chosen_options_params(tmp_path):
    space = load_space(write(tmp_path, VALID))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    seen = set()
    for i in range(25):
        trial = study.ask()
        space.suggest(trial)
        params = trial.params
        if i == 0:  # the known-good point comes first; what it leaves out is sampled
            point = space.points_to_evaluate[0]
            assert {k: params[k] for k in point} == point and "embed_dim" in params
        seen.add(params["beta_schedule"])
        expected = {"constant": {"beta_end"}, "linear": {"beta_start", "beta_end"}, "cyclical": {"beta_cycles"}}
        assert set(params) == {"lr", "latent_dim", "embed_dim", "beta_schedule"} | expected[params["beta_schedule"]]
        config = space.trial_config(params)  # every sample is a config the trainable accepts
        assert isinstance(config["embed_dim"], int) and config["embed_dim"] in (8, 16, 24, 32)
        assert 1e-4 <= config["lr"] <= 1e-2 and config["epochs"] == 4
        if params["beta_schedule"] == "cyclical":
            assert params["beta_cycles"] in (2, 3, 4)  # randint's high is exclusive, as in Ray Tune
        study.tell(trial, float(i))
    assert seen == {"constant", "linear", "cyclical"}


def test_epochs_come_from_max_t(tmp_path):
    data = changed(("scheduler", "max_t"), ...)
    data["fixed"]["epochs"] = 3
    assert load_space(write(tmp_path, data)).max_t == 3
    data = changed(("fixed", "epochs"), 9)
    with pytest.raises(ConfigError, match=r"fixed\.epochs: 9 differs from scheduler\.max_t=4"):
        load_space(write(tmp_path, data))


# (change, fragments the one-line error must hold besides the file name)
INVALID = {
    "unknown top-level key": (("num_sample",), ["num_sample", "unknown key", "num_samples"]),
    "unknown scheduler key": (("scheduler", "grace"), ["scheduler.grace", "unknown key", "grace_period"]),
    "unknown resource key": (("resources_per_trial", "memory"), ["resources_per_trial.memory", "allowed keys: cpu, gpu"]),
    "param that is no config key": (("params", "learning_rate"), ["params.learning_rate", "not a vae config key", "lr"]),
    "unknown fixed key": (("fixed", "widht"), ["fixed", "widht", "allowed keys"]),
    "searched data split": (("params", "subset"), ["params.subset", "cannot be searched", "set it in fixed"]),
    "low >= high": (("params", "lr"), ["params.lr", "low=0.01 must be < high=0.001"]),
    "non-positive log bound": (("params", "lr", "low"), ["params.lr.low", "loguniform needs low > 0"]),
    "empty choices": (("params", "latent_dim", "values"), ["params.latent_dim.values", "non-empty list"]),
    "unknown distribution": (("params", "latent_dim", "type"), ["params.latent_dim.type", "loguniform, uniform, quniform, randint, choice"]),
    "metric not reported": (("metric",), ["metric", "'val_ssim'", "val_neg_elbo, val_neg_elbo_bin, val_recon, val_kl, val_loss"]),
    "binarize searched on grey levels": (("params", "binarize"), ["params.binarize", "metric: val_neg_elbo_bin", "fixed:"]),
    "training metric": (("metric",), ["metric", "'train_loss'", "not a validation metric"]),
    "mode against the metric": (("mode",), ["mode", "lower", "use mode: min"]),
    "bad num_samples": (("num_samples",), ["num_samples", "integer >= 1"]),
    "missing num_samples": (("num_samples",), ["num_samples", "missing"]),
    "bad gpu fraction": (("resources_per_trial", "gpu"), ["resources_per_trial.gpu", "whole number of GPUs"]),
    "zero cpu": (("resources_per_trial", "cpu"), ["resources_per_trial.cpu", "number > 0"]),
    "grace beyond max_t": (("scheduler", "grace_period"), ["scheduler.grace_period", "more than max_t=4"]),
    "value the trainable rejects": (("params", "latent_dim", "values"), ["params.latent_dim.values[1]", "-4", "positive integer"]),
    "float range for an integer key": (("params", "latent_dim"), ["params.latent_dim", "must be an integer", "randint"]),
    "quniform off its grid": (("params", "embed_dim", "high"), ["params.embed_dim", "not a multiple of q=8"]),
    "point outside its range": (("points_to_evaluate",), ["points_to_evaluate[0].lr", "outside its distribution"]),
    "point of an unknown param": (("points_to_evaluate",), ["points_to_evaluate[0].dropout", "not a searched parameter"]),
    "nested name searched twice": (("params", "beta_end"), ["params.beta_end", "already searched at params.beta_schedule.values[0].params.beta_end"]),
    "wrong kind": (("kind",), ["kind", "'gan'", "vae, cnn"]),
    "reuse_actors not a boolean": (("reuse_actors",), ["reuse_actors", "'no'", "true or false"]),
}
VALUES = {
    "unknown top-level key": 4,
    "unknown scheduler key": 2,
    "unknown resource key": 4,
    "param that is no config key": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "unknown fixed key": 8,
    "searched data split": {"type": "choice", "values": [500, 1000]},
    "low >= high": {"type": "loguniform", "low": 1e-2, "high": 1e-3},
    "non-positive log bound": 0,
    "empty choices": [],
    "unknown distribution": "normal",
    "metric not reported": "val_ssim",
    "training metric": "train_loss",
    "mode against the metric": "max",
    "bad num_samples": 0,
    "missing num_samples": ...,
    "bad gpu fraction": 1.5,
    "zero cpu": 0,
    "grace beyond max_t": 5,
    "value the trainable rejects": [8, -4],
    "float range for an integer key": {"type": "uniform", "low": 8, "high": 64},
    "quniform off its grid": 30,
    "point outside its range": [{"lr": 0.5}],
    "point of an unknown param": [{"dropout": 0.1}],
    "nested name searched twice": {"type": "uniform", "low": 0.1, "high": 1.0},
    "wrong kind": "gan",
    "binarize searched on grey levels": {"type": "choice", "values": ["none", "dynamic"]},
    "reuse_actors not a boolean": "no",
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_invalid_space_is_one_line_naming_file_and_key(tmp_path, case):
    keys, fragments = INVALID[case]
    path = write(tmp_path, changed(keys, VALUES[case]), name=f"{case.replace(' ', '_')}.yaml")
    with pytest.raises(ConfigError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_space_of_the_other_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="this is a vae space but the sweep is for cnn"):
        load_space(write(tmp_path, VALID), kind="cnn")


def test_resources_this_machine_cannot_satisfy(tmp_path):
    space = load_space(write(tmp_path, changed(("resources_per_trial",), {"cpu": 4, "gpu": 0.5})))
    with pytest.raises(ConfigError, match=r"resources_per_trial\.cpu: 4 CPUs per trial can never be placed: this machine has 2; use cpu <= 2"):
        check_resources(space, cpus=2, gpus=1)
    with pytest.raises(ConfigError, match=r"resources_per_trial\.gpu: 0\.5 GPUs per trial can never be placed.*has 0"):
        check_resources(space, cpus=8, gpus=0)
    check_resources(space, cpus=4, gpus=1)  # fits: no error


def test_parse_space_checks_a_mapping_too():
    assert parse_space(VALID, "inline.yaml").kind == "vae"
    with pytest.raises(ConfigError, match=r"^inline\.yaml: \(top level\): expected a mapping"):
        parse_space(["kind", "vae"], "inline.yaml")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fashion_tune", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_rejects_a_bad_space_with_one_line_before_starting_ray(tmp_path):
    path = write(tmp_path, changed(("params", "lr"), {"type": "loguniform", "low": 0.0, "high": 1e-2}))
    result = cli("sweep", "vae", "--space", path, "--storage", tmp_path / "results")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"fashion-tune: error: {path}: params.lr.low: 0.0 is not allowed; loguniform needs low > 0 (and high > low)"]
    assert not (tmp_path / "results").exists(), "nothing may be started or written"

    too_big = write(tmp_path, changed(("resources_per_trial", "cpu"), 4096), name="big.yaml")
    result = cli("sweep", "vae", "--space", too_big, "--storage", tmp_path / "results")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{too_big}: resources_per_trial.cpu: 4096 CPUs per trial can never be placed" in result.stderr
    assert not (tmp_path / "results").exists()

    result = cli("sweep", "vae", "--space", write(tmp_path, VALID, name="ok.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "4 trials (2 at a time), min val_neg_elbo" in result.stdout and "when beta_schedule = 'linear':" in result.stdout


def test_a_trial_config_is_resolved_like_a_training_config(tmp_path):
    space = load_space(write(tmp_path, VALID))
    config = space.trial_config({"lr": 3e-3, "embed_dim": 16.0})
    assert config == resolve_config("vae", {**VALID["fixed"], "epochs": 4, "lr": 3e-3, "embed_dim": 16})


def started(path):
    """The space as a sweep starts from it: parsed, then its start_from:/warm_start: read."""
    from fashion_tune.search.sources import resolve_sources

    return resolve_sources(load_space(path))


def test_parsing_a_space_reads_no_other_experiment(tmp_path):
    """start_from: and warm_start: stay references until a sweep starts: a missing source is no parse error."""
    data = {**VALID, "start_from": str(tmp_path / "missing"), "warm_start": str(tmp_path / "gone")}
    space = load_space(write(tmp_path, data))
    assert (space.start_from, space.warm_start) == (str(tmp_path / "missing"), str(tmp_path / "gone"))
    assert space.start_point is None and space.warm_trials == ()
    with pytest.raises(ConfigError, match="start_from"):
        started(write(tmp_path, data))


def test_start_from_makes_the_best_trial_of_a_finished_sweep_the_first_point(tmp_path):
    from test_promote import write_experiment

    def trial(lr, width, acc):
        config = resolve_config("cnn", {"lr": lr, "width": width, "dropout": 0.2})
        return [{"config": config, "metrics": {"val_acc": acc, "epoch": 1}, "epoch": 1}]

    experiment = write_experiment(tmp_path / "exp", "cnn", {"a": trial(1e-3, 16, 0.80), "b": trial(4e-3, 32, 0.85)})
    data = {"kind": "cnn", "num_samples": 1, "scheduler": {"max_t": 2}, "fixed": {"subset": 500},
            "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                       "width": {"type": "choice", "values": [16, 32]},
                       "erase_prob": {"type": "uniform", "low": 0.0, "high": 0.5}},
            "points_to_evaluate": [{"lr": 2e-3}], "start_from": str(experiment)}
    space = started(write(tmp_path, data))
    # Only the searched keys, in the new space's terms; erase_prob was not searched there but is in its config.
    assert space.points_to_evaluate == ({"lr": 4e-3, "width": 32, "erase_prob": 0.0}, {"lr": 2e-3})

    data["params"]["lr"]["high"] = 3e-3
    with pytest.raises(ConfigError, match=r"start_from\.lr: 0\.004 is outside"):
        started(write(tmp_path, data))
    with pytest.raises(ConfigError, match="is a cnn sweep and this space is for vae"):
        started(write(tmp_path, {**VALID, "start_from": str(experiment)}))
    with pytest.raises(ConfigError, match="start_from"):
        started(write(tmp_path, {**data, "start_from": str(tmp_path / "missing")}))


def test_start_from_a_promoted_model_takes_its_config(tmp_path):
    model_dir = tmp_path / "best_models" / "cnn"
    model_dir.mkdir(parents=True)
    (model_dir / "manifest.json").write_text(json.dumps({"kind": "cnn", "trial_id": "a"}))
    config = resolve_config("cnn", {"lr": 4e-3, "width": 32, "dropout": 0.2})
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    data = {"kind": "cnn", "num_samples": 1, "scheduler": {"max_t": 2}, "fixed": {"subset": 500},
            "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                       "width": {"type": "choice", "values": [16, 32]}},
            "start_from": str(model_dir)}
    assert started(write(tmp_path, data)).points_to_evaluate == ({"lr": 4e-3, "width": 32},)

    with pytest.raises(ConfigError, match="is a cnn sweep and this space is for vae"):
        started(write(tmp_path, {**VALID, "start_from": str(model_dir)}))
    (model_dir / "config.yaml").write_text("lr: [unclosed")
    with pytest.raises(ConfigError, match=r"start_from: .* is not a readable promoted model \((ScannerError|ParserError)"):
        started(write(tmp_path, data))
    (model_dir / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"start_from: .* is not a readable promoted model \(FileNotFoundError"):
        started(write(tmp_path, data))


def test_every_missing_required_key_is_named_in_one_error(tmp_path):
    """A newcomer's first space file: all that is missing in one message, not one per run."""
    path = tmp_path / "mine.yaml"
    path.write_text("num_samples: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_space(path, kind="cnn")
    message = str(caught.value)
    assert message.startswith(f"{path}: kind, scheduler.max_t, params: missing; give kind: "), message
    assert "the most epochs a trial may train" in message and "lr: {type: loguniform" in message
    path.write_text("num_samples: 4\nscheduler: {max_t: 2}\nparams: {lr: {type: loguniform, low: 1e-3, high: 1e-2}}\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: kind: missing; give kind: cnn$"):
        load_space(path, kind="cnn")


def test_a_closed_pipe_ends_the_cli_quietly(tmp_path):
    """`fashion-tune sweep ... --dry-run | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    path = write(tmp_path, VALID)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        writer = subprocess.run([sys.executable, "-m", "fashion_tune", "sweep", "vae", "--space", path, "--dry-run"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr, writer.stderr
    assert writer.returncode == 141


@pytest.mark.parametrize("sweep, follow_up", [("vae_decoder_cpu.yaml", "vae_decoder_cpu_long.yaml")])
def test_a_follow_up_trains_its_sweeps_shapes_with_the_same_fixed_settings_and_ranges(sweep, follow_up):
    """start_from seeds the follow-up with the sweep's best config, which must fall inside its ranges,
    and the fixed settings that made that trial (encoder, latent, beta schedule) must be the same."""
    first, longer = yaml.safe_load((SPACES / sweep).read_text()), yaml.safe_load((SPACES / follow_up).read_text())
    assert longer["params"] == first["params"]
    assert longer["fixed"] == first["fixed"]
    space = load_space(SPACES / follow_up)
    assert (space.num_samples, space.max_t) == (1, 20) and space.gpu == 0
    assert longer["start_from"] == "ray_results/" + sweep.removesuffix(".yaml").replace("_", "-")
