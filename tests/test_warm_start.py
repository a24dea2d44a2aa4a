"""Warm start and start_from: what the study is told of an earlier sweep's trials, and a resume that
never reads the earlier sweep (or promoted model) again.

The earlier sweep is written to disk as a sweep leaves it (sweep.json, trial_*/params.json and
result.json), so only the resume test runs Ray: one tiny sweep, interrupted and resumed.
"""

from __future__ import annotations

import collections
import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fashion_tune.spaces import load_space, parse_space

SPACE = {
    "kind": "cnn",
    "num_samples": 3,
    "max_concurrent_trials": 1,
    "seed": 0,
    "scheduler": {"max_t": 3, "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1},
    "fixed": {"width": 8, "depth": 1, "batch_size": 50, "subset": 200, "val_subset": 100, "device": "cpu",
              "precision": "fp32", "early_stop_patience": 1},
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

    from fashion_tune.analysis import load_results
    from fashion_tune.searcher import optuna_searcher
    from fashion_tune.strategies import make_searcher

    earlier = write_earlier_sweep(tmp_path / "earlier")
    reasons = load_results(earlier).set_index("trial_id")["stop_reason"].to_dict()
    assert reasons == {"done": "completed", "patient": "early_stop", "cut": "asha"}  # as results.csv says
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "warm_start": str(earlier)}))
    study = optuna_searcher(make_searcher(load_space(path))).study
    told = {t.user_attrs["warm_start_trial_id"]: (t.state, t.value) for t in study.trials}
    assert told == {"done": (TrialState.COMPLETE, 0.70), "patient": (TrialState.COMPLETE, 0.55),
                    "cut": (TrialState.PRUNED, None)}
