"""The sweep's Tune callback: searcher and checkpoints kept consistent with the trials Tune holds."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.fs
from ray.tune import Callback

from fashion_tune.experiment import stored_results

DISCARDED = ".discarded"


class SweepCallback(Callback):
    """Keeps the searcher and the checkpoints on disk consistent with the trials Tune holds.

    - At the first step of every driver run (a fresh sweep or a restore) it reconciles the
      searcher with the trials Tune restored and moves aside trial directories Tune no longer
      knows (a trial replaced by --restart-errored, or one started after the last snapshot), so
      `results.csv` has one row per trial.
    - At every experiment snapshot it prunes checkpoints as `fashion_tune.retention` explains.

    It is pickled with the Tuner (tuner.pkl) together with the search algorithm it holds, so a
    restored sweep gets both back as one pair.
    """

    def __init__(self, search, metric: str, mode: str, keep: int):
        self.search, self.metric, self.mode, self.keep = search, metric, mode, keep
        self._started = False
        self._pending: dict[str, Any] = {}  # trial id -> trial whose checkpoints may still be pruned

    def __getstate__(self):
        return {**self.__dict__, "_started": False, "_pending": {}}

    def on_step_begin(self, iteration: int, trials, **info):
        if self._started:
            return
        self._started = True
        from fashion_tune.searcher import reconcile

        counts = reconcile(self.search, trials, stored_results)
        if any(counts[k] for k in ("adopted", "told", "failed")):
            logging.getLogger(__name__).info("searcher reconciled with the restored trials: %s", counts)
        self._pending.update({t.trial_id: t for t in trials})
        if trials:
            _move_aside_unknown_trials(trials)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info):
        self._pending[trial.trial_id] = trial

    def get_state(self):
        self.prune()
        return None  # nothing to save: what it needs is on disk

    def prune(self) -> None:
        """Prune the checkpoints of trials that saved one since they settled (see fashion_tune.retention)."""
        from fashion_tune.retention import prune_experiment

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
            fs.move(f"{root}/{info.base_name}", f"{root}/{DISCARDED}/{info.base_name}")
