"""Ray Tune's schedulers, subclassed: the one module that relies on Ray's private scheduler internals.

Ray saves the search algorithm with an experiment but not the scheduler: after `Tuner.restore`
every scheduler starts empty (ASHA's rungs forget every result, Ray issue #30838), and Ray offers
no public hook to refill it. Each subclass here replays the results a restored trial stored
(`result.json`) into its scheduler's state, and adds what Ray lacks (diverged trials ranked last,
lineage by trial id, PBT with our searcher). Doing so needs fields and methods Ray does not
document; these are all of them, and `tests/test_schedulers.py` fails loudly when a Ray upgrade
changes any (rename, removal, another signature):

- SweepASHA       `AsyncHyperBandScheduler._trial_info` (trial id -> bracket), the bracket's
                  `on_result(trial, cur_iter, cur_rew)`, `_metric`, `_metric_op`, `_time_attr`
- SweepMedian     `MedianStoppingRule._results` (trial -> list of results), `_metric`, `_time_attr`
- SweepHyperBand  `HyperBandScheduler._trial_info` (trial -> bracket), the bracket's `finished()`
                  and `cleanup_full(tune_controller)`, and
                  `TuneController._mark_trial_to_checkpoint(trial)` (see `_snapshot_the_stop`)
- SweepPBT        `PopulationBasedTraining._trial_state`, `_hyperparam_mutations`, `_metric_op`,
                  `_quantiles()`, `_log_config_on_step(...)`, and `ray.tune.schedulers.pbt`'s
                  `_PBTTrialState` (`last_score`, `last_train_time`, `last_perturbation_time`,
                  `last_result`) and `_fill_config(config, attr, distribution)`

(`fashion_tune.search.searcher` subclasses Ray's `OptunaSearch` the same way; the fields it reads,
`_ot_trials`, `_completed_trials`, `_space`, `_metric`, `_mode`, are checked by the same test.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.fs
from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler, MedianStoppingRule, PopulationBasedTraining

from fashion_tune.store.experiment import LINEAGE_FILE, stored_results

# PBT's logs in the experiment directory: written in the driver's staging folder and uploaded over these.
PBT_LOGS = (LINEAGE_FILE, "pbt_global.txt")
PBT_POLICY_PREFIX = "pbt_policy_"
# ASHA ranks results; a non-finite one (a diverged trial) counts as this bad, finite so percentiles stay finite.
WORST_REWARD = -1e30


def _replay(trial) -> list[dict[str, Any]]:
    """The results of a restored trial that its scheduler would hold now had the sweep not stopped.

    One row per epoch (the last report of an epoch run twice), and for a trial that will run again
    only the epochs up to the checkpoint Tune restores it from: the snapshot (and so that
    checkpoint) can lag the stored results by several epochs, and the trial runs those epochs again,
    reporting them live. Replayed as well, they would already sit in ASHA's rungs, and a trial
    stopped at a rung after the snapshot would pass it on the re-run. A trial that ended keeps all.
    None for a new trial.
    """
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in stored_results(trial):
        by_epoch[_time_of(row)] = row
    rows = [by_epoch[t] for t in sorted(by_epoch, key=lambda t: (t is None, t))]
    if not rows or trial.status in (trial.TERMINATED, trial.ERROR):
        return rows
    latest = getattr(trial, "latest_checkpoint_result", None)  # what Tune restores it from
    if latest is None:
        return []  # it starts from scratch
    restored = _time_of(latest.metrics or {})
    if restored is None:
        return rows  # a checkpoint without its epoch: cannot tell, so all
    return [row for row in rows if (_time_of(row) or 0) <= restored]


def _time_of(row: dict[str, Any]) -> Any:
    return row.get("epoch", row.get("training_iteration"))


def _finite(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        return WORST_REWARD
    return value


class SweepASHA(AsyncHyperBandScheduler):
    """ASHA that keeps its rungs across `Tuner.restore` and ranks diverged trials last.

    Ray restores the searcher but not the scheduler; restored trials replay the results they
    stored, so a resumed sweep stops trials against the same rungs as before. Non-finite
    metrics (a diverged trial) become the worst finite reward: with inf the rung percentiles
    turn NaN and ASHA would stop nothing at that rung.
    """

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for result in _replay(trial):
            if self._time_attr in result and self._metric in result and result[self._metric] is not None:
                bracket.on_result(trial, result[self._time_attr], _finite(self._metric_op * result[self._metric]))

    def on_trial_result(self, tune_controller, trial, result):
        return super().on_trial_result(tune_controller, trial, self._finite_result(result))

    def on_trial_complete(self, tune_controller, trial, result):
        return super().on_trial_complete(tune_controller, trial, self._finite_result(result))

    def _finite_result(self, result):
        if result and self._metric in result and result[self._metric] is not None:
            value = result[self._metric]
            if not math.isfinite(value):
                result = {**result, self._metric: WORST_REWARD * self._metric_op}  # reward = op * value
        return result


class SweepMedian(MedianStoppingRule):
    """The median stopping rule that, on resume, holds what it held in the uninterrupted run.

    Ray's rule appends every result a trial reports and, when the trial ends, its last result once
    more (`on_trial_complete`): an ended trial's last epoch weighs twice in its running mean. The
    replay does the same: each epoch once (up to the restore checkpoint for a trial that runs
    again: it reports the rest live), and an ended trial's last result again.
    """

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        rows = [row for row in _replay(trial)
                if row.get(self._time_attr) is not None and isinstance(row.get(self._metric), (int, float))]
        if not rows:
            return  # an empty entry would break Ray's rule (it reads each listed trial's last result)
        if trial.status == trial.TERMINATED:
            rows.append(rows[-1])  # as Ray's on_trial_complete appends it
        self._results[trial].extend(rows)


def _snapshot_the_stop(tune_controller, trial) -> None:
    """Have Tune's next experiment snapshot record the stop of a trial that has no live actor.

    `TuneController.stop_trial` on a PAUSED trial (HyperBand cutting it from its bracket) marks it
    TERMINATED but returns before flagging it for the snapshot, which then keeps it PAUSED: a
    finished sweep reads as unfinished and a resume would run that trial again. Tune calls the
    scheduler's `on_trial_remove` just before; the flag makes the snapshot serialize the trial anew.
    """
    if tune_controller is not None:
        tune_controller._mark_trial_to_checkpoint(trial)


class SweepHyperBand(HyperBandScheduler):
    """Synchronous HyperBand whose brackets hold only trials that start in this run.

    Ray does not save a scheduler, and a bracket rebuilt on resume would wait for finished trials
    (they never report again) or pause restored ones that it never releases. So a trial restored
    with results (finished or not) stays out of the brackets: unfinished ones run on to max_t
    without early stopping; trials proposed after the resume fill new brackets as usual. A bracket
    that a trial's own end finishes stops the trials it paused (Ray leaves them PAUSED).
    """

    def on_trial_add(self, tune_controller, trial):
        if trial.status in (trial.TERMINATED, trial.ERROR) or stored_results(trial):
            return
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if trial not in self._trial_info:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if trial in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        if trial in self._trial_info:
            super().on_trial_error(tune_controller, trial)

    _ending_a_bracket = False

    def on_trial_remove(self, tune_controller, trial):
        _snapshot_the_stop(tune_controller, trial)
        if trial not in self._trial_info:
            return
        bracket, _ = self._trial_info[trial]
        super().on_trial_remove(tune_controller, trial)
        if bracket.finished():
            # Ray processes a bracket on a removal only while it is unfinished. When the trial that
            # ended (at max_t, on its own) was the last one the bracket waited for, the trials it had
            # paused at max_t stayed PAUSED and the sweep never ended. Stop them, as the end of a
            # bracket does.
            self._end(bracket, tune_controller)

    def choose_trial_to_run(self, tune_controller):
        # A trial whose pause was still saving its checkpoint when its bracket ended (status RUNNING,
        # so the bracket's cleanup passed it by) turns PAUSED afterwards, with nothing left to wake
        # it: the sweep would wait for it forever. Tune asks for a trial to run on every step, so
        # the finished brackets are swept here. This scan costs what Ray's own choice below costs
        # (it walks every bracket's live trials), and a stopped trial leaves its bracket.
        for band in self._hyperbands:
            for bracket in band:
                if bracket is not None and bracket.finished():
                    self._end(bracket, tune_controller)
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is None:  # the restored trials outside the brackets
            chosen = next((t for t in tune_controller.get_trials()
                           if t not in self._trial_info and t.status in (t.PENDING, t.PAUSED)), None)
        return chosen

    def _end(self, bracket, tune_controller) -> None:
        """Stop the trials a finished bracket still holds PAUSED (their stop_trial calls come back
        through on_trial_remove: the flag keeps them from recursing)."""
        if tune_controller is None or self._ending_a_bracket:
            return
        self._ending_a_bracket = True
        try:
            bracket.cleanup_full(tune_controller)
        finally:
            self._ending_a_bracket = False


class SweepPBT(PopulationBasedTraining):
    """Population Based Training that takes its population from our searcher and logs lineage by trial id.

    Ray refuses any search algorithm with PBT, since a searcher learns from configs that PBT then
    changes. Here the searcher only draws the initial population (seeded, from the space, with its
    starting points), which is what a space file promises; so that check is left out. On resume,
    each restored trial's last stored result becomes its score, so quantiles need not start empty.
    """

    def on_trial_add(self, tune_controller, trial):
        from ray.tune.schedulers.pbt import _fill_config, _PBTTrialState

        if not getattr(self, "_logs_restored", False):
            self._logs_restored = True
            _restore_pbt_logs(trial)
        if not self._metric or not self._metric_op:
            raise ValueError("PBT needs a metric and mode (TuneConfig sets them)")
        state = self._trial_state[trial] = _PBTTrialState(trial)
        for attr, distribution in self._hyperparam_mutations.items():
            if attr not in trial.config:
                _fill_config(trial.config, attr, distribution)
        rows = [r for r in _replay(trial) if isinstance(r.get(self._metric), (int, float))]
        if rows:
            last = rows[-1]
            state.last_score = self._metric_op * last[self._metric]
            state.last_train_time = state.last_perturbation_time = last[self._time_attr]
            state.last_result = last

    def __init__(self, *args, max_t: int, seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        # Its own random streams: Ray and the libraries it calls also draw from the global ones.
        self._rng = random.Random(seed)
        self._np_state = np.random.RandomState(seed).get_state()

    def on_trial_result(self, tune_controller, trial, result):
        with self._own_random():  # the clone and the perturbations are drawn here
            return super().on_trial_result(tune_controller, trial, result)

    @contextlib.contextmanager
    def _own_random(self):
        """Ray's PBT draws from the module `random` it imports, and a resampled range from numpy's global
        stream (Tune's Domain.sample); give it this scheduler's streams for a while, so a seeded sweep
        perturbs the same way every run."""
        from ray.tune.schedulers import pbt

        saved, pbt.random = pbt.random, self._rng
        saved_np = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            pbt.random = saved
            self._np_state = np.random.get_state()
            np.random.set_state(saved_np)

    def _quantiles(self):
        """Ray's quantiles without the trials at their last epoch: cloning a finished model would leave
        its clone no epoch to train, and replacing one would throw away its finished run."""
        lower, upper = super()._quantiles()
        active = lambda t: (self._trial_state[t].last_train_time or 0) < self._max_t  # noqa: E731
        lower, upper = [t for t in lower if active(t)], [t for t in upper if active(t)]
        return (lower, upper) if lower and upper else ([], [])

    def _log_config_on_step(self, trial_state, new_state, trial, trial_to_clone, new_config):
        super()._log_config_on_step(trial_state, new_state, trial, trial_to_clone, new_config)
        mutated = list(self._hyperparam_mutations)
        record = {
            "time": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            "trial_id": trial.trial_id, "cloned_from": trial_to_clone.trial_id,
            "at_epoch": trial_state.last_train_time,
            "from_epoch": new_state.last_train_time,  # the epoch of the checkpoint it continues from
            "before": {k: trial.config.get(k) for k in mutated},
            "cloned": {k: trial_to_clone.config.get(k) for k in mutated},
            "after": {k: new_config.get(k) for k in mutated},
        }
        # The driver's staging directory: Ray syncs it into the experiment directory, as pbt_global.txt.
        with open(os.path.join(trial.local_experiment_path, LINEAGE_FILE), "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _restore_pbt_logs(trial) -> None:
    """Copy PBT's logs of an earlier driver run from the experiment directory into this run's staging folder.

    PBT appends its logs (ours and Ray's) in the driver's staging folder, which Ray uploads over the
    experiment directory; a driver started by `--resume` gets a fresh staging folder, and Ray copies
    back only its own .json/.pkl state. Without this, the first exploit after a resume replaced every
    line written before the interruption.
    """
    storage = getattr(trial, "storage", None)
    staging = getattr(trial, "local_experiment_path", None)
    if storage is None or not staging:
        return
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root))
    except (OSError, pyarrow.lib.ArrowException):
        return  # a new experiment: nothing stored yet
    for info in infos:
        name = info.base_name
        if info.type != pyarrow.fs.FileType.File or not (name in PBT_LOGS or name.startswith(PBT_POLICY_PREFIX)):
            continue
        local = os.path.join(staging, name)
        if os.path.exists(local) or os.path.realpath(staging) == os.path.realpath(root):
            continue
        os.makedirs(staging, exist_ok=True)
        pyarrow.fs.copy_files(info.path, local, source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
