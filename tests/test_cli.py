"""The command line: real commands in subprocesses, checking what a user sees."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fashion_tune.data.datafiles import SYSTEM_DATA_DIR
from fashion_tune.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
TINY_CNN = ["--set", "width=8", "--set", "depth=1", "--subset", "500", "--val-subset", "200", "--device", "cpu"]


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "fashion_tune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_every_command_has_help():
    for args in [["--help"], ["data", "--help"], ["train", "--help"]]:
        result = cli(*args)
        assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.skipif(not SYSTEM_DATA_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_data_reports_verified_counts():
    result = cli("data", "--data-dir", SYSTEM_DATA_DIR)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train 60,000" in out and "test 10,000" in out and "validation 10,000" in out
    assert out.count("verified") == 4
    assert "Ankle boot" in out


def test_bad_arguments_give_one_line(tmp_path):
    assert_one_line_error(cli("train", "gan"), "invalid choice: 'gan'")
    assert_one_line_error(cli("train", "cnn", "--epochs", "x"), "--epochs", "invalid int")
    assert_one_line_error(cli("train", "cnn", "--set", "lrate=1"), "unknown config key 'lrate'", "allowed keys")
    assert_one_line_error(cli("data", "--data-dir", tmp_path), str(tmp_path))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [0.1\n")
    assert_one_line_error(cli("train", "cnn", "--config", bad_yaml), "bad.yaml", "not valid YAML")
    assert_one_line_error(cli("train", "cnn", "--resume", tmp_path / "none.pt"), "does not exist")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    assert_one_line_error(cli("train", "cnn", "--resume", text), "notes.txt", "not a checkpoint")
    out = tmp_path / "never"
    assert_one_line_error(cli("train", "cnn", "--subset", "900000", "--out", out), "subset=900000")
    assert not out.exists(), "a refused run writes nothing"
    assert_one_line_error(cli("sweep", "cnn", "--name", "x", "--storage", tmp_path, "--restart-errored",
                              "--space", "search_spaces/cnn_quick.yaml"), "--restart-errored only applies with --resume")


def test_show_config_merges_file_and_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.01\ndropout: 0.25\n")
    result = cli("train", "cnn", "--config", config, "--epochs", "3", "--set", "flip=false", "--show-config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert (resolved["lr"], resolved["dropout"], resolved["epochs"], resolved["flip"]) == (0.01, 0.25, 3, False)


@pytest.mark.parametrize("kind", ["cnn", "vae"])
def test_show_config_says_what_each_key_means(kind):
    from fashion_tune.training.config import default_config

    result = cli("train", kind, "--show-config")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == default_config(kind)  # the comments keep it valid YAML
    lines = result.stdout.splitlines()
    assert len(lines) == len(default_config(kind)) and all("  # " in line for line in lines), lines
    assert "early_stop_patience: 0  # epochs without a better validation metric before stopping; 0 = off" in lines


def test_train_writes_checkpoints_and_metrics_then_resumes(tmp_path):
    out = tmp_path / "run"
    result = cli("train", "cnn", "--epochs", "1", "--out", out, *TINY_CNN)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    for name in ["checkpoint.pt", "best.pt", "metrics.csv", "config.yaml"]:
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "metrics.csv")) == 1

    result = cli("train", "cnn", "--resume", out / "checkpoint.pt", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "epoch 1/2" not in result.stdout
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 2]


def test_the_kind_choices_are_the_registry():
    from fashion_tune.training.kinds import KINDS
    from fashion_tune.cli import KIND_NAMES

    assert KIND_NAMES == tuple(KINDS)


# --- numbers as Python spells them (1e-3), and errors that name where a value came from ------


def test_python_float_spellings_are_numbers_in_set_config_and_space_files(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("lr: 1e-3\ndropout: .25\n")
    result = cli("train", "cnn", "--config", config, "--set", "weight_decay=+5E-4", "--set", "erase_prob=5.e-1",
                 "--set", "label_smoothing=1_0e-2", "--show-config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert [resolved[key] for key in ("lr", "dropout", "weight_decay", "erase_prob", "label_smoothing")] == \
        [0.001, 0.25, 0.0005, 0.5, 0.1]

    space = tmp_path / "space.yaml"
    space.write_text((REPO / "search_spaces" / "cnn_quick.yaml").read_text().replace("low: 1.0e-5, high: 1.0e-2", "low: 1e-5, high: 1E-2"))
    assert "1e-5" in space.read_text()
    result = cli("sweep", "cnn", "--space", space, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "weight_decay: loguniform [1e-05, 0.01]" in result.stdout


def test_a_bad_value_is_blamed_on_its_own_source(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("lr: 1e-3\n")
    result = cli("train", "cnn", "--config", config, "--set", "lr=fast", "--show-config")
    assert_one_line_error(result, "--set: lr='fast' must be a number")
    assert "my.yaml" not in result.stderr
    config.write_text("lr: fast\n")
    assert_one_line_error(cli("train", "cnn", "--config", config, "--set", "lr=1e-3", "--show-config"),
                          "my.yaml: lr='fast' must be a number")


# --- the promoted models: --models-dir, $FASHION_TUNE_MODELS, ./best_models, the checkout's --------

SHIPPED = REPO / "best_models"
needs_shipped = pytest.mark.skipif(not (SHIPPED / "cnn" / "model.pt").is_file() or not (SHIPPED / "vae" / "model.pt").is_file(),
                                   reason="best_models/ holds no promoted CNN and VAE (make models writes them)")


def black_png(path):
    from PIL import Image

    Image.new("L", (28, 28), 0).save(path)
    return path


def env_without_models_variable():
    return {key: value for key, value in os.environ.items() if key != "FASHION_TUNE_MODELS"}


@needs_shipped
def test_predict_and_sample_find_the_shipped_models_from_another_directory(tmp_path):
    black_png(tmp_path / "black.png")
    env = env_without_models_variable()
    result = cli("predict", "black.png", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("black.png: ")
    result = cli("sample", "--class", "bag", "-n", "1", "--candidates", "2", "--seed", "0", "--device", "cpu", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sample-bag.png").is_file()


@needs_shipped
def test_the_models_variable_chooses_the_models_and_is_named_when_it_holds_none(tmp_path):
    black_png(tmp_path / "black.png")
    env = env_without_models_variable()
    result = cli("predict", "black.png", cwd=tmp_path, env={**env, "FASHION_TUNE_MODELS": str(SHIPPED)})
    assert result.returncode == 0, result.stderr
    empty = tmp_path / "empty"
    assert_one_line_error(cli("predict", "black.png", cwd=tmp_path, env={**env, "FASHION_TUNE_MODELS": str(empty)}),
                          f"no promoted cnn in {empty}", "$FASHION_TUNE_MODELS", "--models-dir")


def test_without_models_anywhere_the_error_lists_where_it_looked(tmp_path, monkeypatch, capsys):
    from fashion_tune import cli as cli_module
    from fashion_tune.store import promoted

    checkout = tmp_path / "checkout"
    (checkout / "best_models").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(promoted, "CHECKOUT", checkout)
    monkeypatch.delenv("FASHION_TUNE_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    black_png(tmp_path / "black.png")
    for command in (["predict", "black.png"], ["sample", "--class", "bag"], ["evaluate"]):
        assert cli_module.main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for fragment in ("no promoted", f"looked in {tmp_path / 'best_models'} and {checkout / 'best_models'}",
                         "--models-dir DIR", "FASHION_TUNE_MODELS=DIR", "fashion-tune promote"):
            assert fragment in err, err


# --- small things: class names, long sample output, evaluate's flags, the dry run's fixed values ----


def test_a_negative_class_index_is_refused_and_a_misspelt_name_gets_a_suggestion(tmp_path):
    assert_one_line_error(cli("sample", "--class", "-1", cwd=tmp_path), "class index -1 is out of range")
    assert_one_line_error(cli("sample", "--class", "sandle", cwd=tmp_path), "unknown class 'sandle'", "did you mean 'Sandal'?")
    assert list(tmp_path.iterdir()) == [], "a refused sample writes nothing"


@needs_shipped
def test_many_samples_print_a_summary_of_the_confidences_not_each(tmp_path):
    out = tmp_path / "bags.png"
    result = cli("sample", "--class", "bag", "-n", "12", "--candidates", "2", "--seed", "0", "--device", "cpu",
                 "--models-dir", SHIPPED, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "judge confidence min " in result.stdout and "median" in result.stdout and "over 12 images" in result.stdout
    assert result.stdout.count(".") < 10, result.stdout
    result = cli("sample", "--class", "bag", "-n", "2", "--candidates", "2", "--seed", "0", "--device", "cpu",
                 "--models-dir", SHIPPED, "--out", out)
    assert result.returncode == 0 and re.search(r"judge confidence \d\.\d{3}, \d\.\d{3}\)$", result.stdout.strip()), result.stdout


def test_evaluate_names_only_the_flag_that_is_wrong(tmp_path):
    result = cli("evaluate", "--per-class", "5", "--models-dir", tmp_path)
    assert_one_line_error(result, "--per-class 5", "at least 10")
    assert "--guided-per-class" not in result.stderr and "--candidates" not in result.stderr
    result = cli("evaluate", "--iwae-images", "3", "--models-dir", tmp_path)
    assert_one_line_error(result, "--iwae-images 3", "at least 10")
    assert "--iwae-k" not in result.stderr


def test_the_dry_run_shows_the_fixed_values():
    result = cli("sweep", "cnn", "--space", REPO / "search_spaces" / "cnn_quick.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "  fixed: subset=5000, val_subset=2000, depth=1, scheduler=cosine_restarts, restart_epochs=4, epochs=8" \
        in result.stdout.splitlines()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    result = cli("train", "cnn", "--device", "cuda", "--out", out)
    assert_one_line_error(result, "--device", "device 'cuda': this machine has no CUDA devices", "auto")
    assert result.returncode == 2 and not out.exists()  # before: a torch traceback after the folder was made
    for args in (("evaluate", "--device", "cuda:1"), ("sample", "--class", "dress", "--device", "gpu"),
                 ("predict", tmp_path, "--device", "mps")):
        result = cli(*args)
        assert_one_line_error(result, "--device")
        assert result.returncode == 2
    # A device named in a config file is checked the same way.
    config = tmp_path / "c.yaml"
    config.write_text("device: cuda\n")
    assert_one_line_error(cli("train", "cnn", "--config", config, "--out", out), "device 'cuda'", "no CUDA")
    assert not out.exists()


HEAVY = ("torch", "pandas", "pyarrow", "ray", "optuna")
CHECK_IMPORTS = """
import sys
from fashion_tune import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("RESULT", code, ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("args", [["analyze", "/no/such/sweep"], ["promote", "no-such-sweep"], ["sample", "--class", "jacket"],
                                  ["sweep", "cnn", "--space", "x.yaml", "--max-failures", "-1"],
                                  ["upgrade-manifests", "--models-dir", "/no/such/models"]])
def test_argument_errors_answer_before_the_heavy_libraries_load(args, tmp_path):
    """A typo costs no torch/pandas/Ray import (seconds each): the argument is checked first."""
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS.format(heavy=HEAVY), *args], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert line == "RESULT 2 ", (line, result.stderr)
    assert "error:" in result.stderr and "Traceback" not in result.stderr
