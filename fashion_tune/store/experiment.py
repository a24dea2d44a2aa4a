"""The experiment store: one experiment directory, a local path or a URI (s3://, gs://, ...).

An experiment directory holds Ray Tune's files (its experiment snapshot, each trial's
`result.json` and `checkpoint_*/checkpoint.pt`) and ours: `sweep.json` (what was run),
`space.yaml` (the search space), `sources.json` (what its `start_from:`/`warm_start:` read when
the sweep started, if it has them), `results.{csv,parquet}` (one row per trial) and
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
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import is_uri, json_text, parse_jsonl
from fashion_tune.training.checkpoint import CHECKPOINT_FILE

# A trial's checkpoint file: a trained model's, or a replayed trial's epoch (fashion_tune.search.replay.CHECKPOINT).
CHECKPOINT_FILES = (CHECKPOINT_FILE, "replay.json")
from fashion_tune.training.config import resolve_config
from fashion_tune.store.names import check_experiment_argument, named_location
from fashion_tune.store.results import (STOPPED_BY, TrialPick, TrialRecord, check_metric, history_rows, is_finite, pick_best,
                                        result_row)

__all__ = ["Experiment", "TrialPick", "TrialRecord", "STOPPED_BY", "is_finite", "filesystem", "read_lines",
           "stored_results", "ray_trials"]

SWEEP_INFO = "sweep.json"
SPACE_COPY = "space.yaml"
SOURCES = "sources.json"  # the start point and warm trials the space's sources gave (fashion_tune.search.sweep_info)
LINEAGE_FILE = "pbt_lineage.jsonl"  # one PBT exploit per line, with trial ids (search.schedulers.SweepPBT)
RESULTS = "results"  # .csv and .parquet
HISTORY = "history"
RESULT_FILE = "result.json"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
_ARROW_ERRORS = (OSError, pyarrow.lib.ArrowException)


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or URI (credentials and endpoint from the environment)."""
    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(location).removeprefix("file://")
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (*_ARROW_ERRORS, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FashionTuneError(f"cannot open {location} ({first[:200]}); check the URI, and for s3:// the "
                               "AWS_* variables (credentials, AWS_ENDPOINT_URL_S3 for a non-AWS server)") from None


def read_lines(fs: pyarrow.fs.FileSystem, path: str) -> list[dict[str, Any]]:
    """JSON lines of a file (a line cut short by a kill, or being written, is skipped); [] if there is none."""
    try:
        with fs.open_input_stream(path) as f:
            text = f.readall().decode()
    except _ARROW_ERRORS:
        return []
    return parse_jsonl(text)


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
            check_experiment_argument(location)
            store = cls(named_location(str(location)))
        if not store.exists(SWEEP_INFO):
            raise FashionTuneError(f"{location} is not a fashion-tune experiment directory (no {SWEEP_INFO}); "
                                   "pass the directory `fashion-tune sweep` printed, such as ray_results/NAME")
        return store

    @classmethod
    def by_name(cls, name: str) -> Experiment | None:
        """The sweep NAME in the default storage ($FASHION_TUNE_STORAGE, else ./ray_results), as `sweep --name NAME` put it."""
        location = named_location(name)
        return cls(location) if location else None

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
        """Whether the file is there; storage that cannot be reached is an error, not a missing file."""
        try:
            return self.fs.get_file_info(f"{self.path}/{name}").type == pyarrow.fs.FileType.File
        except _ARROW_ERRORS as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FashionTuneError(f"cannot read {self.location}/{name} ({first[:200]}); check the location "
                                   "and, for a URI, the credentials and endpoint in the environment") from None

    def read_text(self, name: str) -> str | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(f"{self.path}/{name}") as f:
            return f.readall().decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace the file `name` whole: a crash leaves the old file or the new one, never a part.

        On a local (or mounted) disk the data goes to a temporary file beside it that is then renamed
        over it; an object store (s3://, gs://) makes an upload visible only once it is complete.
        """
        target = f"{self.path}/{name}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if self.is_remote:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return
        partial = f"{target}.partial-{os.getpid()}"
        try:
            with self.fs.open_output_stream(partial) as f:
                f.write(data)
            self.fs.move(partial, target)
        except BaseException:
            try:
                self.fs.delete_file(partial)
            except (OSError, pyarrow.lib.ArrowException):
                pass
            raise

    def upload(self, local: str | Path, name: str) -> None:
        """Copy a local file into the experiment as `name` (replacing it)."""
        pyarrow.fs.copy_files(str(local), f"{self.path}/{name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.fs)

    def download(self, name: str, local: str | Path) -> bool:
        """Copy the experiment's file `name` to the local path `local`; False when it has none."""
        if not self.exists(name):
            return False
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(f"{self.path}/{name}", str(local), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return True

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
        self.write_bytes(SWEEP_INFO, json_text(info).encode())

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
            directory = f"{self.path}/{trial.relative_logdir}" if trial.relative_logdir else ""  # "": not started
            records[trial.trial_id] = TrialRecord(trial.trial_id, trial.status, directory, dict(trial.config or {}),
                                                  int(trial.num_failures or 0), [])
        known = {r.directory.rsplit("/", 1)[-1] for r in records.values() if r.directory}
        for directory in self._trial_directories(known):
            record = self._unknown_trial(directory)
            if record is not None:
                records[record.trial_id] = record
        for record in records.values():
            if record.directory and not record.rows:
                record.rows = read_lines(self.fs, f"{record.directory}/{RESULT_FILE}")
            if record.rows and record.rows[-1].get("done") and record.status in UNFINISHED:
                record.status = "TERMINATED"  # the snapshot may lag behind a running sweep
            elif record.status == "PENDING" and (record.rows or self._started(record)):
                # Ray reads a snapshot's RUNNING back as PENDING. A trial that started (Ray wrote its
                # params.json) is RUNNING, as Ray's table shows it, even before its first epoch ends.
                record.status = "RUNNING"
        return list(records.values())

    def _started(self, record: TrialRecord) -> bool:
        if not record.directory:
            return False
        try:
            return self.fs.get_file_info(f"{record.directory}/params.json").type == pyarrow.fs.FileType.File
        except _ARROW_ERRORS:
            return False

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
        if row is None or not row.get("checkpoint_dir_name") or not record.directory:
            return None
        directory = f"{record.directory}/{row['checkpoint_dir_name']}"
        try:
            infos = self.fs.get_file_info([f"{directory}/{name}" for name in CHECKPOINT_FILES])
            found = any(info.type == pyarrow.fs.FileType.File for info in infos)
        except _ARROW_ERRORS:
            found = False
        return directory if found else None

    def _checkpoint_location(self, record: TrialRecord, row: dict[str, Any] | None) -> str | None:
        found = self.checkpoint_path(record, row)
        return self.where(found) if found else None

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
        """One row per trial; the columns are listed in `fashion_tune.reports.analysis.load_results`."""
        info = self.info()
        rows = [result_row(record, info, self._checkpoint_location, self.where(record.directory) or None)
                for record in (self.trials() if records is None else records)]
        if not rows:
            return pd.DataFrame(columns=["trial_id", "status", f"best_{info['metric']}", "epochs", "stopped_early"])
        return pd.DataFrame(rows)

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
        metric, mode = check_metric(kind, info, metric, mode)
        record, row = pick_best(self.trials(), metric, mode, limits, self.location)
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

    def _download(self, fs_path: str) -> Path:
        target = Path(tempfile.mkdtemp(prefix="fashion-tune-checkpoint-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        pyarrow.fs.copy_files(fs_path, str(target), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return target


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
