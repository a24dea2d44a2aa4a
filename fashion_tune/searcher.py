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
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable

from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

LIVE = ("PENDING", "RUNNING", "PAUSED")


def is_pruned(result: dict[str, Any] | None, max_t: int) -> bool:
    """Whether a finished trial was stopped early by the scheduler (not diverged, not out of patience).

    The same rule as `analysis.load_results`' stop_reason "asha", so study and results agree.
    """
    if not result or result.get("diverged"):
        return False
    epoch = int(result.get("epoch", 0) or 0)
    if epoch >= max_t:
        return False
    patience = (result.get("config") or {}).get("early_stop_patience", 0) or 0
    best_epoch = int(result.get("best_epoch", 0) or 0)
    return not (patience and best_epoch and epoch - best_epoch >= patience)


class SweepOptuna(OptunaSearch):
    """OptunaSearch that reports intermediate values, prunes ASHA-stopped trials and tells the best value."""

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._values: dict[str, dict[int, float]] = {}  # trial id -> epoch -> metric
        self._adopted: dict[str, dict[str, Any]] = {}  # trial id -> params, for trials Optuna never asked

    # --- results --------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.record(trial_id, result)

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep one epoch's metric; report it to Optuna as an intermediate value (once per epoch)."""
        value, epoch = result.get(self._metric), result.get("epoch")
        if value is None or epoch is None:
            return
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            self.adopt(trial_id, result.get("config") or {})
        values = self._values.setdefault(trial_id, {})
        if int(epoch) in values:
            return  # an epoch re-run after a restore: its first report stands
        values[int(epoch)] = float(value)
        if trial_id not in self._adopted:
            self._ot_trials[trial_id].report(float(value), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials and trial_id not in self._adopted:
            return
        if result:
            self.record(trial_id, result)
        elif trial_id not in self._ot_trials and trial_id not in self._adopted:
            return  # an error before the first result of a trial this searcher never saw
        state, value = self._outcome(trial_id, result, error)
        if trial_id in self._adopted:
            self._add_adopted(trial_id, state, value)
        else:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)

    def _outcome(self, trial_id: str, result: dict[str, Any] | None, error: bool):
        """Optuna's state and value for a trial that ended: FAIL, PRUNED, or COMPLETE with its best value."""
        from optuna.trial import TrialState

        if error:
            return TrialState.FAIL, None
        if is_pruned(result, self._max_t):
            return TrialState.PRUNED, None
        values = list(self._values.get(trial_id, {}).values())
        if not values:
            return TrialState.FAIL, None
        finite = [v for v in values if math.isfinite(v)]
        if not finite or (result or {}).get("diverged"):
            return TrialState.COMPLETE, math.inf if self._mode == "min" else -math.inf  # ranked last
        return TrialState.COMPLETE, min(finite) if self._mode == "min" else max(finite)

    # --- trials Optuna did not ask for ------------------------------------------------------

    def adopt(self, trial_id: str, config: dict[str, Any]) -> None:
        """Take on a trial Tune runs but this searcher did not suggest (or saw fail before its retry)."""
        import optuna

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
        import optuna

        adopted = self._adopted.pop(trial_id)
        intermediate = {e: v for e, v in self._values.get(trial_id, {}).items() if not math.isnan(v)}
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=adopted["params"], distributions=adopted["distributions"],
            intermediate_values=intermediate))

    # --- after a restore ----------------------------------------------------------------------

    def fail_unknown(self, live_ids: Iterable[str]) -> int:
        """Tell FAIL for every RUNNING Optuna trial that no live Tune trial stands for; returns how many."""
        from optuna.trial import TrialState

        live = set(live_ids)
        kept = {self._ot_trials[t].number for t in live if t in self._ot_trials and t not in self._completed_trials}
        failed = 0
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in kept:
                self._ot_study.tell(frozen.number, state=TrialState.FAIL)
                failed += 1
        for trial_id in [t for t in self._ot_trials if t not in live]:
            self._completed_trials.add(trial_id)
        return failed


def make_search(space, max_t: int) -> SearchGenerator:
    """SearchGenerator(ConcurrencyLimiter(SweepOptuna)): TPE, seeded, starting from the space's points."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE samples at random for its first n_startup_trials; Optuna's default of 10 would leave a
    # small sweep all random, so it is half the sweep (2 to 10).
    startup = max(2, min(10, space.num_samples // 2))
    sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=startup)
    searcher = SweepOptuna(space=space.suggest, metric=space.metric, mode=space.mode,
                           points_to_evaluate=[dict(p) for p in space.points_to_evaluate] or None,
                           sampler=sampler, max_t=max_t)
    # Passing the SearchGenerator (not the bare searcher) keeps a handle on its suggestion count.
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent_trials))


def optuna_searcher(generator: SearchGenerator) -> SweepOptuna:
    return generator.searcher.searcher


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
    generator._counter = len(trials)  # every trial Tune holds was suggested once; a lost suggestion is made again
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
