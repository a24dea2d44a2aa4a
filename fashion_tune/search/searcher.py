"""What the Optuna study learns from a sweep, kept true across ASHA stops, retries and restores.

Ray's `OptunaSearch` tells Optuna each trial's *last* result, as COMPLETE, and knows only the trial
ids it suggested itself. `SweepOptuna` changes three things:

- a trial the scheduler stopped early (ASHA) is told PRUNED, with its per-epoch values as
  intermediate values; a trial that ran its course is told its *best* value, not its last;
- a trial Tune runs that this searcher did not suggest, or already saw fail (a trial restarted
  by `--restart-errored` gets a new id; a retried errored trial keeps its id), is *adopted*: its
  results are recorded and, when it ends, it enters the study as a trial of its own
  (`study.add_trial`) instead of crashing the driver with a KeyError;
- `reconcile`, called once when a sweep is restored, makes the searcher agree with the trials
  Tune actually restored: Optuna trials left RUNNING that Tune does not know become FAIL, the
  concurrency limit counts exactly the live trials (retried ones included), and the number of
  suggestions made is the number of trials Tune holds.

The study is reached through `study`, a public `optuna.Study` handle on the searcher's storage
(the sweep's journal, see `fashion_tune.search.study`). Every Optuna trial carries the Ray Tune trial id
it stands for (user attribute `tune_trial_id`), so a restored searcher never enters one Tune trial
into the journal twice: the journal may already hold outcomes told after the last snapshot.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from fashion_tune.search.study import TUNE_TRIAL_ID

logger = logging.getLogger(__name__)

LIVE = ("PENDING", "RUNNING", "PAUSED")
CONFIG_PREFIX = "config/"


def result_config(result: dict[str, Any] | None) -> dict[str, Any]:
    """The trial config a result carries, in either shape a searcher meets.

    Tune hands a searcher's `on_trial_result`/`on_trial_complete` *flattened* results (`flatten_dict`:
    `config/lr`, `config/early_stop_patience`, ...); rows replayed from result.json on resume are
    nested (`config: {lr: ...}`). Reading only the nested shape once told a trial that stopped on its
    own patience PRUNED live and COMPLETE after a resume.
    """
    if not result:
        return {}
    nested = result.get("config")
    if isinstance(nested, dict):
        return nested
    return {key[len(CONFIG_PREFIX):]: value for key, value in result.items() if key.startswith(CONFIG_PREFIX)}


def is_pruned(result: dict[str, Any] | None, max_t: int) -> bool:
    """Whether a finished trial was stopped early by the scheduler (not diverged, not out of patience).

    The same rule as `analysis.load_results`' stop_reason "asha", so study and results agree.
    """
    if not result or result.get("diverged"):
        return False
    epoch = int(result.get("epoch", 0) or 0)
    if epoch >= max_t:
        return False
    patience = result_config(result).get("early_stop_patience", 0) or 0
    best_epoch = int(result.get("best_epoch", 0) or 0)
    return not (patience and best_epoch and epoch - best_epoch >= patience)


class SweepOptuna(OptunaSearch):
    """OptunaSearch that reports intermediate values, prunes ASHA-stopped trials and tells the best value.

    With several objectives (`metric` a list) the first one decides: a trial is told the values
    of all objectives at the epoch where the first was best; Optuna keeps no intermediate values
    for multi-objective studies.
    """

    def __init__(self, space, *, metric, mode, sampler, storage, study_name: str, max_t: int,
                 journal: Path | None = None, points_to_evaluate=None):
        super().__init__(space=space, metric=metric, mode=mode, points_to_evaluate=points_to_evaluate,
                         sampler=sampler, storage=storage, study_name=study_name)
        # The same study OptunaSearch created, on the same storage and sampler (after_trial hooks).
        self.study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                       pruner=optuna.pruners.NopPruner())
        self.journal = journal
        self._max_t = max_t
        self._metrics = list(self._metric) if isinstance(self._metric, (list, tuple)) else [self._metric]
        self._modes = list(self._mode) if isinstance(self._mode, (list, tuple)) else [self._mode]
        self._values: dict[str, dict[int, tuple[float, ...]]] = {}  # trial id -> epoch -> objective values
        self._adopted: dict[str, dict[str, Any]] = {}  # trial id -> params, for trials Optuna never asked

    @property
    def _multi(self) -> bool:
        return len(self._metrics) > 1

    # --- results --------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if config is not None and trial is not None and TUNE_TRIAL_ID not in trial.user_attrs:
            trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.record(trial_id, result)

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep one epoch's objective values; report the first to Optuna as an intermediate value (once per epoch).

        An epoch reported again replaces what was kept: after a PBT exploit the trial goes on from
        another trial's checkpoint and re-reports epochs with its new weights and config, and after a
        restore it re-runs the epochs past its checkpoint. The value told at the end is the best of
        the epochs as they last stood, as results.csv's best (one row per epoch, the last) has it.
        Optuna takes one intermediate value per step, so that one stays the first.
        """
        values, epoch = tuple(result.get(m) for m in self._metrics), result.get("epoch")
        if any(v is None for v in values) or epoch is None:
            return
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            self.adopt(trial_id, result_config(result))
        seen = self._values.setdefault(trial_id, {})
        again = int(epoch) in seen
        seen[int(epoch)] = tuple(float(v) for v in values)
        if again:
            return
        if trial_id not in self._adopted and not self._multi and not self._told_already(trial_id):
            self._ot_trials[trial_id].report(float(values[0]), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials and trial_id not in self._adopted:
            return
        if result:
            self.record(trial_id, result)
        elif trial_id not in self._ot_trials and trial_id not in self._adopted:
            return  # an error before the first result of a trial this searcher never saw
        elif not error and self._values.get(trial_id):
            # Stopped with no result: Tune's stop_trial on a PAUSED trial (HyperBand cutting it from
            # its bracket) passes none. It is judged at the last epoch it reported.
            result = {"epoch": max(self._values[trial_id])}
        state, value = self._outcome(trial_id, result, error)
        if trial_id in self._adopted:
            self._add_adopted(trial_id, state, value)
        elif not self._told_already(trial_id):
            self._tell(self._ot_trials[trial_id].number, value, state)
        self._completed_trials.add(trial_id)

    def _told_already(self, trial_id: str) -> bool:
        """Whether the study already holds this trial's outcome: told before the driver stopped, after
        the searcher's last snapshot, or by a restore from stored results. A second tell (or a
        report) would raise and kill the driver."""
        number = self._ot_trials[trial_id].number
        return self.study.get_trials(deepcopy=False)[number].state.is_finished()

    def _tell(self, number: int, value, state) -> None:
        try:
            self.study.tell(number, value, state=state)
        except RuntimeError as exc:
            # GridSampler's after_trial calls study.stop() once the grid is used up, which refuses
            # outside study.optimize; Optuna stores the outcome before that (a `finally`).
            if "Study.stop" not in str(exc):
                raise

    def _outcome(self, trial_id: str, result: dict[str, Any] | None, error: bool):
        """Optuna's state and value(s) for a trial that ended: FAIL, PRUNED, or COMPLETE at its best epoch."""
        if error:
            return TrialState.FAIL, None
        if is_pruned(result, self._max_t):
            return TrialState.PRUNED, None
        rows = list(self._values.get(trial_id, {}).values())
        if not rows:
            return TrialState.FAIL, None
        finite = [row for row in rows if all(math.isfinite(v) for v in row)]
        if not finite or (result or {}).get("diverged"):
            worst = [math.inf if mode == "min" else -math.inf for mode in self._modes]  # ranked last
            return TrialState.COMPLETE, worst if self._multi else worst[0]
        pick = min if self._modes[0] == "min" else max
        best = pick(finite, key=lambda row: row[0])
        return TrialState.COMPLETE, list(best) if self._multi else best[0]

    # --- trials Optuna did not ask for ------------------------------------------------------

    def adopt(self, trial_id: str, config: dict[str, Any]) -> None:
        """Take on a trial Tune runs but this searcher did not suggest (or saw fail before its retry)."""
        if trial_id in self._adopted:
            return
        fixed = optuna.trial.FixedTrial(dict(config))
        try:
            self._space(fixed)  # the searched parameters and their distributions, as this space defines them
        except ValueError as exc:
            logger.warning("trial %s does not fit the search space (%s); Optuna will not learn from it", trial_id, exc)
        self._adopted[trial_id] = {"params": fixed.params, "distributions": fixed.distributions}
        self._completed_trials.discard(trial_id)
        self._values.pop(trial_id, None)

    def _add_adopted(self, trial_id: str, state, value) -> None:
        adopted = self._adopted.pop(trial_id)
        if self._entered(trial_id):
            return  # added before the driver stopped, after the searcher's last snapshot
        intermediate = None if self._multi else {
            e: row[0] for e, row in self._values.get(trial_id, {}).items() if not math.isnan(row[0])}
        values = {"values": value} if self._multi and value is not None else {"value": value}
        self.study.add_trial(optuna.trial.create_trial(
            state=state, params=adopted["params"], distributions=adopted["distributions"],
            intermediate_values=intermediate, user_attrs={TUNE_TRIAL_ID: trial_id}, **values))

    def _entered(self, trial_id: str) -> bool:
        """Whether the study holds a COMPLETE or PRUNED trial for this Tune trial (a FAIL may be retried)."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return any(t.user_attrs.get(TUNE_TRIAL_ID) == trial_id for t in done)

    # --- after a restore ----------------------------------------------------------------------

    def fail_unknown(self, live_ids: Iterable[str]) -> int:
        """Tell FAIL for every RUNNING Optuna trial that no live Tune trial stands for; returns how many."""
        live = set(live_ids)
        kept = {self._ot_trials[t].number for t in live if t in self._ot_trials and t not in self._completed_trials}
        failed = 0
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in kept:
                self._tell(frozen.number, None, TrialState.FAIL)
                failed += 1
        for trial_id in [t for t in self._ot_trials if t not in live]:
            self._completed_trials.add(trial_id)
        return failed


def optuna_searcher(generator: SearchGenerator) -> SweepOptuna:
    return generator.searcher.searcher


def study_record(search) -> dict[str, Any]:
    """What sweep.json records about the study of a search algorithm made by `strategies.make_searcher`."""
    searcher = optuna_searcher(search)
    return {"study_name": searcher.study.study_name,
            "journal": str(searcher.journal) if searcher.journal is not None else None}


def reconcile(generator: SearchGenerator, trials, stored_results) -> dict[str, int]:
    """Make a restored searcher agree with the trials Tune restored (see the module docstring).

    `trials` are Tune's trials after the restore; `stored_results(trial)` the results a trial
    wrote before the interruption. They are replayed, so a resumed trial's best value counts
    every epoch, and a trial that ended after the searcher's last snapshot is told its outcome.
    """
    optuna_search = optuna_searcher(generator)
    counts = {"adopted": 0, "told": 0}
    for trial in trials:
        done = _sync_trial(optuna_search, trial, stored_results)
        if done:
            counts[done] += 1
    live = {t.trial_id for t in trials if t.status in LIVE}
    counts["failed"] = optuna_search.fail_unknown(live)
    limiter: ConcurrencyLimiter = generator.searcher
    limiter.live_trials = live
    limiter.num_unfinished_live_trials = len(live)
    # Every trial Tune holds was suggested once; a lost suggestion is made again.
    generator.set_state({**generator.get_state(), "counter": len(trials)})
    counts["live"] = len(live)
    return counts


def _sync_trial(optuna_search: SweepOptuna, trial, stored_results) -> str | None:
    """Bring one restored trial's record in the searcher up to date; returns "adopted", "told" or None."""
    trial_id, live = trial.trial_id, trial.status in LIVE
    known = trial_id in optuna_search._ot_trials
    running = known and trial_id not in optuna_search._completed_trials
    if not live and known and not running:
        return None  # ended, and the searcher knows how
    adopted = (live and not running) or not known
    if adopted:
        # Live but not running for the searcher: retried after an error, restarted with a new id,
        # or suggested after its last snapshot. Ended but unknown: it finished after that snapshot.
        optuna_search.adopt(trial_id, trial.config)
    results = stored_results(trial)
    for result in results:
        optuna_search.record(trial_id, result)
    if live:
        return "adopted" if adopted else None
    optuna_search.on_trial_complete(trial_id, results[-1] if results else None, error=trial.status == "ERROR")
    return "told"
