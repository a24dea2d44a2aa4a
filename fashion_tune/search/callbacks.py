"""The sweep's Tune callback: searcher and checkpoints kept consistent with the trials Tune holds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from fashion_tune.store.experiment import stored_results
from fashion_tune.search.study import JOURNAL_FILE

DISCARDED = ".discarded"


class _DriverCopyFirst:
    """Ray's loggers copy a trial's file back from storage each time the trial starts, a pause and
    resume included (the median rule yields, HyperBand and PBT pause). The driver writes every line to
    its staging copy first and uploads it only at Tune's snapshots, 10 s or more apart, so that copy
    was overwritten with an older one and the lines since the upload were lost: result.json is what
    results.csv, history.csv, resume and retention read. Within one driver its own copy is the newest;
    storage is read only when the driver has none (a resumed sweep, a new driver)."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return
        super()._restore_from_remote(file_name, trial)


class ResultJsonLogger(_DriverCopyFirst, JsonLoggerCallback):
    """Tune's result.json logger without losing lines when a trial starts again (see _DriverCopyFirst)."""


class ProgressCsvLogger(_DriverCopyFirst, CSVLoggerCallback):
    """Tune's progress.csv logger, the same way (it copies back after a trial's failure and retry)."""


class SweepCallback(Callback):
    """Keeps the searcher and the checkpoints on disk consistent with the trials Tune holds.

    - At the first step of every driver run (a fresh sweep or a restore) it reconciles the
      searcher with the trials Tune restored and moves aside trial directories Tune no longer
      knows (a trial replaced by --restart-errored, or one started after the last snapshot), so
      `results.csv` has one row per trial.
    - At every experiment snapshot it prunes checkpoints as `fashion_tune.search.retention` explains and,
      for an experiment behind a URI, uploads the study's journal (kept in a local cache, see
      `fashion_tune.search.study`) as `<uri>/optuna.journal`, so the bucket holds the study as it stood.

    It is pickled with the Tuner (tuner.pkl) together with the search algorithm it holds, so a
    restored sweep gets both back as one pair.
    """

    def __init__(self, search, metric: str, mode: str, keep: int):
        self.search, self.metric, self.mode, self.keep = search, metric, mode, keep
        self._started = False
        self._pending: dict[str, Any] = {}  # trial id -> trial whose checkpoints may still be pruned
        self._storage = None  # Ray's StorageContext of the experiment, once a trial shows it

    def __getstate__(self):
        return {**self.__dict__, "_started": False, "_pending": {}, "_storage": None}

    def on_step_begin(self, iteration: int, trials, **info):
        if self._started:
            return
        self._started = True
        from fashion_tune.search.searcher import reconcile

        counts = reconcile(self.search, trials, stored_results)
        if any(counts[k] for k in ("adopted", "told", "failed")):
            logging.getLogger(__name__).info("searcher reconciled with the restored trials: %s", counts)
        self._pending.update({t.trial_id: t for t in trials})
        if trials:
            self._storage = trials[0].storage
            _move_aside_unknown_trials(trials)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info):
        self._pending[trial.trial_id] = trial
        self._storage = trial.storage

    def get_state(self):
        self.prune()
        self.upload_journal()
        return None  # nothing to save: what it needs is on disk

    def upload_journal(self) -> None:
        """Copy the study's local journal to `<experiment URI>/optuna.journal` (nothing to do on a local path)."""
        from fashion_tune.search.searcher import optuna_searcher

        storage = getattr(self, "_storage", None)  # a callback pickled before the journal existed has none
        if storage is None or storage.storage_filesystem.type_name == "local":
            return
        journal = optuna_searcher(self.search).journal
        if journal is None or not Path(journal).is_file():
            return
        try:
            pyarrow.fs.copy_files(str(journal), f"{storage.experiment_fs_path}/{JOURNAL_FILE}",
                                  source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=storage.storage_filesystem)
        except (OSError, pyarrow.lib.ArrowException) as exc:  # the next snapshot (or the end) tries again
            logging.getLogger(__name__).warning("could not upload %s: %s", journal, exc)

    def prune(self) -> None:
        """Prune the checkpoints of trials that saved one since they settled (see fashion_tune.search.retention)."""
        from fashion_tune.search.retention import prune_experiment

        if not self._pending:
            return
        storage = next(iter(self._pending.values())).storage
        settled = prune_experiment(storage.storage_filesystem, storage.experiment_fs_path,
                                   {t.trial_id: t.storage.trial_fs_path for t in self._pending.values()},
                                   self.metric, self.mode, self.keep)
        for trial_id in settled:
            if self._pending[trial_id].status not in ("PENDING", "RUNNING", "PAUSED"):
                del self._pending[trial_id]


def _move_aside_unknown_trials(trials) -> None:
    """Move trial_* directories no restored trial owns into .discarded/ (kept for their error.txt)."""
    storage = trials[0].storage
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    owned = {t.relative_logdir for t in trials if t.relative_logdir}  # a trial not started yet has no directory
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root))
    except OSError:
        return
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("trial_") and info.base_name not in owned:
            fs.create_dir(f"{root}/{DISCARDED}", recursive=True)
            fs.move(f"{root}/{info.base_name}", _free_name(fs, f"{root}/{DISCARDED}", info.base_name))


def _free_name(fs, folder: str, name: str) -> str:
    """`folder/name`, or `folder/name.2`, `.3`... if taken: the same trial's run can be discarded twice.

    A trial the snapshot holds as PENDING but that started before a kill loses its run (its folder
    comes here); if the driver is killed again before a snapshot records the trial's restart, the
    next resume discards the same folder name again, and a rename onto a non-empty folder fails.
    """
    candidate, n = f"{folder}/{name}", 1
    while fs.get_file_info(candidate).type != pyarrow.fs.FileType.NotFound:
        n += 1
        candidate = f"{folder}/{name}.{n}"
    return candidate
