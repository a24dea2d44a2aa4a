"""The schema of results.csv and history.csv: per-trial rows from stored results, and the best trial.

Pure functions over `TrialRecord`s (what `fashion_tune.store.experiment.Experiment.trials` reads), so
every experiment, on any storage, gets the same columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.training.kinds import get_kind

STOPPED_BY = {"asha": "asha", "hyperband": "hyperband", "median": "median"}  # schedulers that stop trials early
# The stop reasons of a trial its scheduler ended before max_t (PRUNED in a study); "early_stop",
# the trial's own patience, is not one of them: that trial ran its course.
SCHEDULER_STOPS = (*STOPPED_BY.values(), "stopped")

@dataclass
class TrialPick:
    """The trial a sweep found best by a validation metric, and its checkpoint at that metric."""

    kind: str
    trial_id: str
    config: dict  # the resolved training config
    metric: str
    mode: str
    value: float  # the best validation value the trial reached
    epoch: int  # the epoch of that value (and of `checkpoint`)
    checkpoint: Path | None  # local directory holding checkpoint.pt (downloaded from a URI); None if not fetched
    source: str = ""  # where that checkpoint lives in the store (a path or URI)


@dataclass
class TrialRecord:
    """One trial as stored: Ray's status and config, its directory, and its results one per epoch."""

    trial_id: str
    status: str
    directory: str  # filesystem path of the trial directory
    config: dict
    num_failures: int
    rows: list  # result.json lines


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def history_rows(record: TrialRecord) -> list[dict[str, Any]]:
    """A trial's results, one per epoch; a re-reported epoch (after a restore) keeps its last report."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in record.rows:
        row = {k: v for k, v in row.items() if k != "config"}
        row["trial_id"] = record.trial_id
        by_epoch[row.get("epoch", row.get("training_iteration"))] = row
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The epoch with the best finite, non-diverged `metric` (the earliest among ties)."""
    best = None
    for row in rows:
        if row.get("diverged") or not is_finite(row.get(metric)):
            continue
        if best is None or _better(row[metric], best[metric], mode):
            best = row
    return best


def stop_reason(status: str, epochs: int, best: dict | None, diverged: bool, config: dict, info: dict) -> str:
    """completed, asha (or the scheduler that stopped it), early_stop, diverged, error; empty while running."""
    max_t, patience = info.get("max_t"), config.get("early_stop_patience", 0) or 0
    if status == "ERROR":
        return "error"
    if diverged:
        return "diverged"
    if status != "TERMINATED":
        return ""
    if max_t is None or epochs >= max_t:
        return "completed"
    if patience and best is not None and epochs - int(best.get("epoch", 0)) >= patience:
        return "early_stop"
    return STOPPED_BY.get(info.get("scheduler") or "asha", "stopped")


def result_row(record: TrialRecord, info: dict[str, Any], checkpoint: Callable[[TrialRecord, dict | None], str | None],
               trial_dir: str) -> dict[str, Any]:
    """The results.csv row of one trial; `checkpoint` gives the location of a row's checkpoint if it still exists."""
    metric, mode = info["metric"], info["mode"]
    history = history_rows(record)
    last = history[-1] if history else {}
    best = best_row(history, metric, mode)
    diverged = any(bool(r.get("diverged")) for r in history)
    epochs = int(last.get("epoch", 0) or 0)
    reason = stop_reason(record.status, epochs, best, diverged, record.config, info)
    found = checkpoint(record, best)
    return {
        "trial_id": record.trial_id, "status": record.status,
        **{f"config/{k}": v for k, v in record.config.items()},
        **{m: last.get(m, math.nan) for m in get_kind(info["kind"]).metrics},
        f"best_{metric}": best[metric] if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else 0,
        "epochs": epochs, "max_t": info.get("max_t"),
        "stopped_early": reason in (*SCHEDULER_STOPS, "early_stop"), "stop_reason": reason,
        "diverged": diverged,
        "best_checkpoint": found,
        "num_failures": record.num_failures,
        "hostname": last.get("hostname"), "node_ip": last.get("node_ip"), "pid": last.get("pid"),
        "time_total_s": last.get("time_total_s", math.nan), "trial_dir": trial_dir,
    }


def pick_best(records: list[TrialRecord], metric: str, mode: str, limits: dict[str, float] | None,
              location: str) -> tuple[TrialRecord, dict[str, Any]]:
    """The non-diverged trial with the best `metric` within `limits`, and its row at that value."""
    pick = None
    smallest: dict[str, float] = {}  # per limit, the lowest cost seen (for the error when none fits)
    for record in records:
        history = history_rows(record)
        if any(r.get("diverged") for r in history):
            continue
        row = best_row(history, metric, mode)
        if row is not None and not _within(row, limits or {}, smallest):
            continue
        if row is not None and (pick is None or _better(row[metric], pick[1][metric], mode)):
            pick = (record, row)
    if pick is None and smallest:
        raise FashionTuneError(f"no trial in {location} satisfies " + " and ".join(
            f"{k} <= {v:,.0f} (the smallest has {smallest.get(k, math.nan):,.0f})" for k, v in limits.items())
            + "; raise the limit or sweep smaller models")
    if pick is None:
        raise FashionTuneError(f"no trial in {location} has reported a finite {metric} yet (trials still "
                               "pending, all diverged, or all failed); wait for the sweep or check its trials")
    return pick


def check_metric(kind: str, info: dict[str, Any], metric: str | None, mode: str | None) -> tuple[str, str]:
    metric = metric or info["metric"]
    validation = [m for m in get_kind(kind).metrics if m.startswith("val_")]
    if metric not in validation:
        raise FashionTuneError(f"metric {metric!r} is not a validation metric of the {kind} trainable; "
                               f"choose one of: {', '.join(validation)}")
    mode = mode or (info["mode"] if metric == info["metric"] else get_kind(kind).metrics[metric])
    if mode not in ("min", "max"):
        raise FashionTuneError(f"mode {mode!r} is not allowed; choose min or max")
    return metric, mode


def _within(row: dict[str, Any], limits: dict[str, float], smallest: dict[str, float]) -> bool:
    """Whether a trial's reported cost is inside every limit; records the smallest cost seen."""
    ok = True
    for key, limit in limits.items():
        value = row.get(key)
        if not is_finite(value):
            raise FashionTuneError(f"the trials report no {key}, so --max-{key} cannot be checked; "
                                   "sweep again with this version of fashion-tune")
        smallest[key] = min(smallest.get(key, math.inf), value)
        ok = ok and value <= limit
    return ok
