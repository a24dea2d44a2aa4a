"""Warm start and start_from: what the study is told of an earlier sweep's trials, and a resume that
never reads the earlier sweep (or promoted model) again.

The earlier sweep is written to disk as a sweep leaves it (sweep.json, trial_*/params.json and
result.json), so only the resume test runs Ray: one tiny sweep, interrupted and resumed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fashion_tune.search.sources import resolve_sources
from fashion_tune.spaces.space import load_space, parse_space
from tiny_sweeps import TINY_CNN_SPACE

SPACE = {  # the tiny sweep's, smaller, with an early-stop patience of 1
    **{k: v for k, v in TINY_CNN_SPACE.items() if k != "points_to_evaluate"}, "num_samples": 3, "max_concurrent_trials": 1,
    "scheduler": {"max_t": 3, "grace_period": 1, "reduction_factor": 2},
    "fixed": {**TINY_CNN_SPACE["fixed"], "subset": 200, "val_subset": 100, "precision": "fp32", "early_stop_patience": 1},
    "params": {"lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-2},
               "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
}
# The earlier sweep's trials (ASHA, max_t 3, patience 1): val_acc per epoch.
EARLIER = {
    "done": ({"lr": 3e-3, "dropout": 0.1}, [0.50, 0.60, 0.70]),  # ran to max_t
    "patient": ({"lr": 1e-3, "dropout": 0.2}, [0.55, 0.40]),  # its own patience ended it at epoch 2: best 0.55
    "cut": ({"lr": 2e-4, "dropout": 0.3}, [0.20]),  # ASHA stopped it at epoch 1
}
PROMOTED = {"lr": 5e-3, "dropout": 0.25}  # the promoted model start_from names


def write_earlier_sweep(directory: Path) -> Path:
    """A finished ASHA sweep of SPACE's trials, as `fashion-tune sweep` leaves it on disk."""
    space = parse_space(SPACE, "earlier.yaml")
    directory.mkdir(parents=True)
    (directory / "sweep.json").write_text(json.dumps({"kind": "cnn", "metric": "val_acc", "mode": "max",
                                                      "max_t": space.max_t, "scheduler": "asha"}))
    for trial_id, (point, accuracies) in EARLIER.items():
        trial = directory / f"trial_{trial_id}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(space.trial_config(point)))
        rows = [{"val_acc": acc, "epoch": epoch, "training_iteration": epoch, "trial_id": trial_id,
                 "done": epoch == len(accuracies)} for epoch, acc in enumerate(accuracies, 1)]
        (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def write_promoted_model(directory: Path) -> Path:
    """What start_from reads of a promoted model: its manifest and its training config."""
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps({"kind": "cnn", "trial_id": "champion"}))
    (directory / "config.yaml").write_text(yaml.safe_dump(parse_space(SPACE, "s.yaml").trial_config(PROMOTED)))
    return directory


def test_a_warm_trial_its_own_patience_stopped_is_complete_and_only_a_scheduler_stop_is_pruned(tmp_path):
    from optuna.trial import TrialState

    from fashion_tune.search.searcher import optuna_searcher
    from fashion_tune.search.strategies import make_searcher
    from fashion_tune.reports.analysis import load_results

    earlier = write_earlier_sweep(tmp_path / "earlier")
    reasons = load_results(earlier).set_index("trial_id")["stop_reason"].to_dict()
    assert reasons == {"done": "completed", "patient": "early_stop", "cut": "asha"}  # as results.csv says
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "warm_start": str(earlier)}))
    study = optuna_searcher(make_searcher(resolve_sources(load_space(path)))).study
    told = {t.user_attrs["warm_start_trial_id"]: (t.state, t.value) for t in study.trials}
    assert told == {"done": (TrialState.COMPLETE, 0.70), "patient": (TrialState.COMPLETE, 0.55),
                    "cut": (TrialState.PRUNED, None)}


@pytest.mark.ray
def test_a_resume_from_another_folder_after_the_sources_moved_keeps_each_warm_trial_once(tmp_path, monkeypatch):
    from test_strategies import interrupt_after

    from fashion_tune.search.study import open_study
    from fashion_tune.search.sweep import run_sweep
    from fashion_tune.reports.analysis import load_results, read_sweep_info

    started, elsewhere, storage = tmp_path / "started", tmp_path / "elsewhere", tmp_path / "results"
    write_earlier_sweep(started / "ray_results" / "earlier")
    write_promoted_model(started / "best_models" / "cnn")
    relative = {**SPACE, "warm_start": "ray_results/earlier", "start_from": "best_models/cnn"}
    (started / "w.yaml").write_text(yaml.safe_dump(relative, sort_keys=False))
    monkeypatch.chdir(started)
    printed: list[str] = []
    first = run_sweep("cnn", "w.yaml", name="w", storage=storage, verbose=0, echo=printed.append,
                      stop=interrupt_after(tmp_path / "interrupted", 2))
    assert first.status == "interrupted", "\n".join(printed)

    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the printed resume command, run from another folder...
    shutil.rmtree(started)  # ...after the earlier sweep and the promoted model are gone
    again = run_sweep("cnn", name="w", storage=storage, resume=True, verbose=0, echo=printed.append)
    assert again.status == "finished", "\n".join(printed)
    results = load_results(again.experiment_dir)
    assert len(results) == SPACE["num_samples"] and set(results["status"]) == {"TERMINATED"}
    ran = [{k: row[f"config/{k}"] for k in PROMOTED} for _, row in results.iterrows()]
    assert PROMOTED in ran, ran  # start_from's point, resolved when the sweep started
    study = open_study(again.experiment_dir)
    warm = collections.Counter(t.user_attrs["warm_start_trial_id"] for t in study.trials
                               if "warm_start_trial_id" in t.user_attrs)
    assert warm == {trial_id: 1 for trial_id in EARLIER}, warm
    info = read_sweep_info(again.experiment_dir)  # the record names the sources as they were
    assert (info["warm_start"], info["start_from"]) == (str(started / "ray_results" / "earlier"),
                                                        str(started / "best_models" / "cnn"))


def test_the_resumed_space_is_the_started_one_rebuilt_from_what_the_experiment_stored(tmp_path, monkeypatch):
    from fashion_tune.store.experiment import SPACE_COPY, Experiment
    from fashion_tune.search.sweep_info import record_sources, space_copy, stored_sources

    monkeypatch.chdir(tmp_path)
    write_earlier_sweep(tmp_path / "earlier")
    write_promoted_model(tmp_path / "model")
    other = {"lr": 1e-2, "dropout": 0.4}
    path = tmp_path / "w.yaml"
    path.write_text("# widened\n" + yaml.safe_dump({**SPACE, "warm_start": "earlier", "start_from": "model",
                                                     "points_to_evaluate": [EARLIER["done"][0], other]}))
    started = resolve_sources(load_space(path))
    assert started.points_to_evaluate == (PROMOTED, other)  # start_from's first; the earlier sweep ran "done"
    store = Experiment(tmp_path / "experiment")
    store.write_bytes(SPACE_COPY, space_copy(path, started))
    record_sources(store, started)
    shutil.rmtree(tmp_path / "earlier")
    shutil.rmtree(tmp_path / "model")

    text = store.read_text(SPACE_COPY)
    assert text.startswith("# widened\n") and f"warm_start: \"{tmp_path / 'earlier'}\"" in text
    reparsed = parse_space(yaml.safe_load(text), "copy.yaml")  # reads neither source
    assert (reparsed.warm_trials, reparsed.points_to_evaluate) == ((), (EARLIER["done"][0], other))
    resumed = stored_sources(store, reparsed)
    assert resumed == dataclasses.replace(started, path=Path("copy.yaml"))
