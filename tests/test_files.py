"""Tests for fashion_tune.util.files: atomic writes, the JSON policy, JSON lines and number formatting."""

import json
import math
import os

import pytest
import torch

from fashion_tune.util import yaml_loader
from fashion_tune.util.files import (append_jsonl, atomic_write, format_number, format_short, json_text, read_json_object,
                                     read_jsonl, write_json, write_text)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_text(target, "old\n")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["report.json"]


def test_json_writes_non_finite_numbers_paths_and_tensors_as_plain_json(tmp_path):
    target = write_json(tmp_path / "sub" / "m.json", {"a": math.inf, "b": -math.inf, "c": math.nan,
                                                     "p": tmp_path, "t": torch.tensor([1.5, 2.0]), 3: 1.0})
    data = json.loads(target.read_text())  # strict JSON: no bare Infinity or NaN
    assert data == {"a": "inf", "b": "-inf", "c": "nan", "p": str(tmp_path), "t": [1.5, 2.0], "3": 1.0}
    assert json_text({"x": 1}).endswith("}\n")
    assert read_json_object(target)["a"] == "inf"
    assert read_json_object(tmp_path / "missing.json") == {}
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json_object(tmp_path / "list.json") == {}


def test_json_lines_skip_the_line_being_written(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"epoch": 1, "loss": math.nan})
    append_jsonl(path, {"epoch": 2})
    with open(path, "a") as f:
        f.write('{"epoch": 3, "lo')  # a writer cut off mid-line
    assert read_jsonl(path) == [{"epoch": 1, "loss": "nan"}, {"epoch": 2}]


def test_numbers_format_the_same_everywhere():
    assert format_number(0.123456) == "0.1235"
    assert format_number(232.912, 2) == "232.91"
    assert format_number(None) == "-" and format_number(3) == "3" and format_number("x") == "x"
    assert format_short(0.0023456) == "0.002346" and format_short(True) == "True"


@pytest.mark.parametrize("text", ["1e-3", "1E3", ".5", "5.", "+1e-3", "-2.5e+2", "1_000.5", "1.0e-3", "3e0"])
def test_yaml_reads_every_python_float_spelling_as_a_float(text):
    assert yaml_loader.load(f"x: {text}") == {"x": float(text)}
    assert type(yaml_loader.load(text)) is float


@pytest.mark.parametrize("text, value", [("1000", 1000), ("1_000", 1000), ("inf", "inf"), ("nan", "nan"), ("1e", "1e"),
                                          ("e3", "e3"), ("1.2.3", "1.2.3"), ("v1.0", "v1.0"), ("'1e-3'", "1e-3"),
                                          ("true", True), ("null", None)])
def test_yaml_leaves_integers_words_and_quoted_numbers_as_they_were(text, value):
    assert yaml_loader.load(text) == value and type(yaml_loader.load(text)) is type(value)


# --- published files follow the umask (tempfile's are private) ------------------------------


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_written_files_follow_the_umask(tmp_path, umask):
    assert mode(write_text(tmp_path / "report.md", "# report\n")) == 0o666 & ~umask
    assert mode(write_json(tmp_path / "sub" / "report.json", {})) == 0o666 & ~umask
    assert mode(write_text(tmp_path / "report.md", "# again\n")) == 0o666 & ~umask


def test_new_directories_follow_the_umask(tmp_path, umask):
    from fashion_tune.util.files import make_temp_dir

    assert mode(make_temp_dir(".tmp-cnn-", dir=tmp_path)) == 0o777 & ~umask


def test_a_promoted_model_follows_the_umask(tmp_path, umask):
    from fashion_tune.training.kinds import get_kind
    from fashion_tune.promotion.promote import _install

    models = tmp_path / "best_models"
    models.mkdir()
    name = get_kind("cnn").promote_metric
    state = {"config": {"lr": 0.001}, "model": {"w": torch.zeros(2)}, "epoch": 1}
    _install(models, models / "cnn", "cnn", state, {"validation": {name: 0.5}, "test": {name: 0.5}}, {})
    assert mode(models / "cnn") == 0o777 & ~umask
    assert {p.name: mode(p) for p in (models / "cnn").iterdir()} == \
        dict.fromkeys(["model.pt", "config.yaml", "metrics.json", "manifest.json"], 0o666 & ~umask)


def test_the_code_is_modified_by_edits_to_the_code_not_by_the_models_the_commands_write(tmp_path):
    """A report written into the tracked best_models/ used to mark its own code '(modified)'."""
    import subprocess

    from fashion_tune.util.provenance import code_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "best_models").mkdir()
    (tmp_path / "best_models" / "report.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "files")
    assert code_version(tmp_path)["dirty"] is False
    (tmp_path / "best_models" / "report.md").write_text("new\n")
    assert code_version(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_version(tmp_path)["dirty"] is True


def test_a_modified_code_record_names_the_files(tmp_path):
    """'code ... (modified)' alone did not say what differed from the commit; the record lists the files."""
    import subprocess

    from fashion_tune.util.provenance import code_version, describe_code

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "files")
    clean = code_version(tmp_path)
    assert clean["modified"] == [] and describe_code(clean) == clean["git_commit"][:12]
    (tmp_path / "b.py").write_text("y = 2\n")
    git("mv", "a.py", "c.py")
    dirty = code_version(tmp_path)
    assert dirty["dirty"] is True and dirty["modified"] == ["b.py", "c.py"]
    assert describe_code(dirty) == f"{dirty['git_commit'][:12]} (modified: b.py, c.py)"
    assert describe_code({"git_commit": "f" * 40, "dirty": True}) == "ffffffffffff (modified)"  # an old record
    assert describe_code({"git_commit": None, "dirty": None}) == "unknown code (not a git checkout)"
