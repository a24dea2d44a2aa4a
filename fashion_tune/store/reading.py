"""Reading a sweep's results, local or behind a URI (s3://, gs://), running, interrupted or finished.

    from fashion_tune.store.reading import load_results, load_history, best_trial
    results = load_results("ray_results/vae-quick")   # one row per trial
    history = load_history("s3://bucket/sweeps/vae-quick")   # one row per trial per epoch
    pick = best_trial("ray_results/vae-quick")        # by the validation metric; pick.checkpoint

(`fashion_tune.reports.analysis` offers the same names beside the reports.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fashion_tune.store.experiment import Experiment, TrialPick

__all__ = ["TrialPick", "read_sweep_info", "load_results", "load_history", "best_trial"]


def read_sweep_info(path: str | Path) -> dict[str, Any]:
    """The experiment's sweep.json: kind, metric, mode, num_samples, seed, max_t, times, status..."""
    return Experiment.open(path).info()


def load_history(path: str | Path) -> pd.DataFrame:
    """One row per trial per epoch: trial_id, epoch, every metric the trainable reported, Ray's fields.

    An epoch re-reported after a restore counts once (its last report)."""
    return Experiment.open(path).history()


def load_results(path: str | Path) -> pd.DataFrame:
    """One row per trial.

    Columns: trial_id, status (Ray's: TERMINATED, ERROR, RUNNING, PENDING...), `config/<key>` for
    every config value Ray passed, the last epoch's metrics (`<metric>` for each the trainable
    reports), `best_<metric>` and best_epoch (the sweep's metric, over non-diverged epochs),
    epochs (run), max_t, stopped_early (ASHA or patience ended it before max_t), stop_reason
    (completed, asha, early_stop, diverged, error, or empty while running), diverged,
    best_checkpoint (path or URI of the checkpoint at best_epoch, or None), num_failures,
    hostname, node_ip, pid (of the last report), time_total_s, trial_dir.
    """
    return Experiment.open(path).results()


def best_trial(experiment_dir: str | Path, metric: str | None = None, mode: str | None = None,
               limits: dict[str, float] | None = None) -> TrialPick:
    """The trial with the best validation `metric` (default: the sweep's) and its checkpoint at that value.

    Diverged trials are left out; running and interrupted sweeps are read as they are on storage.
    `limits` ({"params": 1e6, "flops": 5e7}) keeps only trials whose reported cost is at most that.
    `pick.checkpoint` is a local directory (a checkpoint behind a URI is downloaded to a temporary one).
    """
    return Experiment.open(experiment_dir).best(metric, mode, limits)
