"""The experiment store: one experiment directory, a local path or a URI (s3://, gs://, ...).

An experiment directory holds Ray Tune's files (its experiment snapshot, each trial's
`result.json` and `checkpoint_*/checkpoint.pt`) and ours: `sweep.json` (what was run),
`space.yaml` (the search space), `results.{csv,parquet}` (one row per trial) and
`history.{csv,parquet}` (one row per trial per epoch). Everything goes through pyarrow
filesystems, so a bucket reads like a directory; Ray's snapshot is read with its public
`ray.tune.ExperimentAnalysis`. Nothing needs Ray running, so a running or interrupted sweep
reads as it is on storage.

    store = Experiment.open("s3://bucket/sweeps/cnn-quick")   # or ray_results/cnn-quick
    store.results(); store.history(); store.best()            # best().checkpoint is a local directory
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs

from fashion_tune.checkpoint import CHECKPOINT_FILE
from fashion_tune.cluster import is_uri
from fashion_tune.config import METRICS, resolve_config
from fashion_tune.errors import FashionTuneError

SWEEP_INFO = "sweep.json"
SPACE_COPY = "space.yaml"
RESULTS = "results"  # .csv and .parquet
HISTORY = "history"
RESULT_FILE = "result.json"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
STOPPED_BY = {"asha": "asha", "hyperband": "hyperband", "median": "median"}  # schedulers that stop trials early
_ARROW_ERRORS = (OSError, pyarrow.lib.ArrowException)


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or URI (credentials and endpoint from the environment)."""
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(location).removeprefix("file://")


def read_lines(fs: pyarrow.fs.FileSystem, path: str) -> list[dict[str, Any]]:
    """JSON lines of a file (a line cut short by a kill, or being written, is skipped); [] if there is none."""
    try:
        with fs.open_input_stream(path) as f:
            text = f.readall().decode()
    except _ARROW_ERRORS:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def stored_results(trial) -> list[dict[str, Any]]:
    """The results a Tune trial wrote to its `result.json` (e.g. before the sweep was interrupted)."""
    if not getattr(trial, "relative_logdir", True):
        # Not started yet. A trial --restart-errored made still carries the old trial's storage
        # paths until it starts; those results are not its own.
        return []
    storage = getattr(trial, "storage", None)
    if storage is None:  # a trial that never got storage (made up in a test, or not yet set up)
        return []
    return read_lines(storage.storage_filesystem, f"{storage.trial_fs_path}/{RESULT_FILE}")


def ray_trials(fs: pyarrow.fs.FileSystem, path: str) -> list | None:
    """The trials of Ray's newest experiment snapshot at `path` (as `Tuner.restore` reads it); None if unreadable."""
    from ray.tune import ExperimentAnalysis

    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns of a result line cut short; read_lines skips that line
    try:
        return ExperimentAnalysis(path, storage_filesystem=fs).trials
    except Exception:  # noqa: BLE001 - none yet, being written, or from another Ray version
        return None
    finally:
        log.setLevel(level)


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


class Experiment:
    """An experiment directory on a local disk or behind a URI; see the module docstring."""

    def __init__(self, location: str | Path):
        text = str(location)
        self.location = text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())
        self.fs, self.path = filesystem(self.location)

    @classmethod
    def open(cls, location: str | Path) -> Experiment:
        """The experiment at `location`, checked: it must hold the sweep.json that `fashion-tune sweep` writes."""
        store = cls(location)
        if not is_uri(store.location) and not Path(store.location).is_dir():
            raise FashionTuneError(f"{location} is not a directory; pass an experiment directory such as ray_results/NAME")
        if not store.exists(SWEEP_INFO):
            raise FashionTuneError(f"{location} is not a fashion-tune experiment directory (no {SWEEP_INFO}); "
                                   "pass the directory `fashion-tune sweep` printed, such as ray_results/NAME")
        return store

    @property
    def is_remote(self) -> bool:
        return is_uri(self.location)

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    def where(self, fs_path: str) -> str:
        """The local path or URI of a filesystem path inside this experiment (for tables and messages)."""
        return self.location + fs_path[len(self.path):] if fs_path.startswith(self.path) else fs_path

    # --- files ---------------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        try:
            return self.fs.get_file_info(f"{self.path}/{name}").type == pyarrow.fs.FileType.File
        except _ARROW_ERRORS:
            return False

    def read_text(self, name: str) -> str | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(f"{self.path}/{name}") as f:
            return f.readall().decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        target = f"{self.path}/{name}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(target) as f:
            f.write(data)

    def read_info(self) -> dict[str, Any] | None:
        """sweep.json (kind, metric, mode, num_samples, seed, max_t, times, status...); None if there is none."""
        try:
            text = self.read_text(SWEEP_INFO)
            return None if text is None else json.loads(text)
        except (*_ARROW_ERRORS, json.JSONDecodeError) as exc:
            raise FashionTuneError(f"{self.location}/{SWEEP_INFO} is unreadable ({exc}); "
                                   "the experiment directory is damaged") from None

    def info(self) -> dict[str, Any]:
        info = self.read_info()
        if info is None:
            raise FashionTuneError(f"{self.location} has no {SWEEP_INFO}; it is not a fashion-tune experiment")
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        self.write_bytes(SWEEP_INFO, (json.dumps(info, indent=2, default=str) + "\n").encode())

    def has_ray_state(self) -> bool:
        """Whether Ray Tune wrote an experiment snapshot here (a sweep that got as far as starting)."""
        from ray.tune import Tuner

        return Tuner.can_restore(self.location)

    def write_frame(self, frame: pd.DataFrame, stem: str) -> None:
        """`frame` as stem.csv and stem.parquet (mixed-type columns are stored as text in Parquet)."""
        self.write_bytes(f"{stem}.csv", frame.to_csv(index=False).encode())
        self.write_bytes(f"{stem}.parquet", _parquet_bytes(frame, f"{self.location}/{stem}.parquet"))

    # --- trials --------------------------------------------------------------------------------

    def trials(self) -> list[TrialRecord]:
        """Every trial: those in Ray's newest snapshot, then trial directories it does not know yet."""
        records: dict[str, TrialRecord] = {}
        for trial in ray_trials(self.fs, self.path) or []:
            records[trial.trial_id] = TrialRecord(
                trial.trial_id, trial.status, f"{self.path}/{trial.relative_logdir}", dict(trial.config or {}),
                int(trial.num_failures or 0), [])
        known = {r.directory.rsplit("/", 1)[-1] for r in records.values()}
        for directory in self._trial_directories(known):
            record = self._unknown_trial(directory)
            if record is not None:
                records[record.trial_id] = record
        for record in records.values():
            record.rows = record.rows or read_lines(self.fs, f"{record.directory}/{RESULT_FILE}")
            if record.rows and record.rows[-1].get("done") and record.status in UNFINISHED:
                record.status = "TERMINATED"  # the snapshot may lag behind a running sweep
            elif record.rows and record.status == "PENDING":
                record.status = "RUNNING"  # it has started; Ray reads a snapshot's RUNNING back as PENDING
        return list(records.values())

    def _trial_directories(self, known: set[str]) -> list[str]:
        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path))
        except _ARROW_ERRORS:
            return []
        return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name not in known
                      and not i.base_name.startswith("."))

    def _unknown_trial(self, directory: str) -> TrialRecord | None:
        """A trial directory written after the last snapshot (or before the first): RUNNING as far as we know."""
        rows = read_lines(self.fs, f"{directory}/{RESULT_FILE}")
        try:
            with self.fs.open_input_stream(f"{directory}/params.json") as f:
                config = json.loads(f.readall().decode())
        except (*_ARROW_ERRORS, json.JSONDecodeError):
            if not rows:
                return None
            config = rows[-1].get("config", {}) if rows else {}
        trial_id = rows[-1]["trial_id"] if rows and "trial_id" in rows[-1] else directory.rsplit("_", 1)[-1]
        return TrialRecord(trial_id, "RUNNING", directory, config, 0, rows)

    def checkpoint_path(self, record: TrialRecord, row: dict[str, Any] | None) -> str | None:
        """Filesystem path of the checkpoint a result row names, if it is still there."""
        if row is None or not row.get("checkpoint_dir_name"):
            return None
        directory = f"{record.directory}/{row['checkpoint_dir_name']}"
        try:
            found = self.fs.get_file_info(f"{directory}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File
        except _ARROW_ERRORS:
            found = False
        return directory if found else None

    # --- tables --------------------------------------------------------------------------------

    def history(self, records: list[TrialRecord] | None = None) -> pd.DataFrame:
        """One row per trial per epoch: trial_id, epoch, every metric the trainable reported, Ray's fields."""
        rows = [row for record in (self.trials() if records is None else records) for row in history_rows(record)]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=["trial_id", "epoch"])
        first = [c for c in ("trial_id", "epoch") if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]

    def results(self, records: list[TrialRecord] | None = None) -> pd.DataFrame:
        """One row per trial; the columns are listed in `fashion_tune.analysis.load_results`."""
        info = self.info()
        rows = [self._result_row(record, info) for record in (self.trials() if records is None else records)]
        if not rows:
            return pd.DataFrame(columns=["trial_id", "status", f"best_{info['metric']}", "epochs", "stopped_early"])
        return pd.DataFrame(rows)

    def _result_row(self, record: TrialRecord, info: dict[str, Any]) -> dict[str, Any]:
        metric, mode = info["metric"], info["mode"]
        history = history_rows(record)
        last = history[-1] if history else {}
        best = best_row(history, metric, mode)
        diverged = any(bool(r.get("diverged")) for r in history)
        epochs = int(last.get("epoch", 0) or 0)
        reason = stop_reason(record.status, epochs, best, diverged, record.config, info)
        checkpoint = self.checkpoint_path(record, best)
        return {
            "trial_id": record.trial_id, "status": record.status,
            **{f"config/{k}": v for k, v in record.config.items()},
            **{m: last.get(m, math.nan) for m in METRICS[info["kind"]]},
            f"best_{metric}": best[metric] if best else math.nan,
            "best_epoch": int(best["epoch"]) if best else 0,
            "epochs": epochs, "max_t": info.get("max_t"),
            "stopped_early": reason in (*STOPPED_BY.values(), "stopped", "early_stop"), "stop_reason": reason,
            "diverged": diverged,
            "best_checkpoint": self.where(checkpoint) if checkpoint else None,
            "num_failures": record.num_failures,
            "hostname": last.get("hostname"), "node_ip": last.get("node_ip"), "pid": last.get("pid"),
            "time_total_s": last.get("time_total_s", math.nan), "trial_dir": self.where(record.directory),
        }

    def write_tables(self) -> pd.DataFrame:
        """Write results.{csv,parquet} and history.{csv,parquet} from what is stored; returns the results."""
        records = self.trials()
        results = self.results(records)
        self.write_frame(results, RESULTS)
        self.write_frame(self.history(records), HISTORY)
        return results

    # --- the best trial ------------------------------------------------------------------------

    def best(self, metric: str | None = None, mode: str | None = None, limits: dict[str, float] | None = None,
             download: bool = True) -> TrialPick:
        """The trial with the best validation `metric` (default: the sweep's) and its checkpoint at that value.

        Diverged trials are left out. `limits` ({"params": 1e6, "flops": 5e7}) keeps only trials
        whose reported cost is at most that. With `download`, a checkpoint behind a URI is copied
        to a local temporary directory (removed when the process exits).
        """
        info = self.info()
        kind = info["kind"]
        metric, mode = _check_metric(kind, info, metric, mode)
        record, row = self._pick(metric, mode, limits)
        found = self.checkpoint_path(record, row)
        if found is None:
            name = row.get("checkpoint_dir_name") or "(none reported)"
            raise FashionTuneError(f"the best trial {record.trial_id} reached {metric}={row[metric]:.6g} at epoch "
                                   f"{row.get('epoch')}, but its checkpoint {self.where(record.directory)}/{name} is gone "
                                   f"(the sweep keeps the best few by {info['metric']}); pick by {info['metric']}")
        local = Path(found) if not self.is_remote else (self._download(found) if download else None)
        return TrialPick(kind=kind, trial_id=record.trial_id, config=resolve_config(kind, record.config),
                         metric=metric, mode=mode, value=float(row[metric]), epoch=int(row["epoch"]),
                         checkpoint=local, source=self.where(found))

    def _pick(self, metric: str, mode: str, limits: dict[str, float] | None) -> tuple[TrialRecord, dict[str, Any]]:
        pick = None
        smallest: dict[str, float] = {}  # per limit, the lowest cost seen (for the error when none fits)
        for record in self.trials():
            history = history_rows(record)
            if any(r.get("diverged") for r in history):
                continue
            row = best_row(history, metric, mode)
            if row is not None and not _within(row, limits or {}, smallest):
                continue
            if row is not None and (pick is None or _better(row[metric], pick[1][metric], mode)):
                pick = (record, row)
        if pick is None and smallest:
            raise FashionTuneError(f"no trial in {self.location} satisfies " + " and ".join(
                f"{k} <= {v:,.0f} (the smallest has {smallest.get(k, math.nan):,.0f})" for k, v in limits.items())
                + "; raise the limit or sweep smaller models")
        if pick is None:
            raise FashionTuneError(f"no trial in {self.location} has reported a finite {metric} yet (trials still "
                                   "pending, all diverged, or all failed); wait for the sweep or check its trials")
        return pick

    def _download(self, fs_path: str) -> Path:
        target = Path(tempfile.mkdtemp(prefix="fashion-tune-checkpoint-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        pyarrow.fs.copy_files(fs_path, str(target), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return target


def _check_metric(kind: str, info: dict[str, Any], metric: str | None, mode: str | None) -> tuple[str, str]:
    metric = metric or info["metric"]
    validation = [m for m in METRICS[kind] if m.startswith("val_")]
    if metric not in validation:
        raise FashionTuneError(f"metric {metric!r} is not a validation metric of the {kind} trainable; "
                               f"choose one of: {', '.join(validation)}")
    mode = mode or (info["mode"] if metric == info["metric"] else METRICS[kind][metric])
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


def _parquet_bytes(frame: pd.DataFrame, shown: str) -> bytes:
    import io

    buffer = io.BytesIO()
    try:
        frame.to_parquet(buffer, index=False)
    except (ValueError, TypeError, ImportError) as first_error:
        mixed = frame.copy()
        for column in mixed.columns[mixed.dtypes == object]:
            mixed[column] = mixed[column].map(lambda v: None if v is None else str(v))
        buffer = io.BytesIO()
        try:
            mixed.to_parquet(buffer, index=False)
        except Exception:  # noqa: BLE001 - the CSV is written; say why the Parquet is not
            raise FashionTuneError(f"cannot write {shown}: {first_error}") from None
    return buffer.getvalue()
