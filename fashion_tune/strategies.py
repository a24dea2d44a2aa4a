"""Search strategies: the Optuna sampler and the Ray scheduler a search space asks for.

`make_searcher(space)` builds `OptunaSearch` over the space's define-by-run function with the
sampler of `searcher: {type: ...}` (always seeded), the space's objectives, its starting points and
the finished trials of a `warm_start:` sweep (added to the study as evaluated trials, so they are
not run again). `make_scheduler(space)` builds the scheduler of `scheduler: {type: ...}`:

- asha       `sweep.SweepASHA` (ASHA that replays stored results on resume)
- hyperband  Ray's synchronous `HyperBandScheduler`; restored finished trials stay out of its brackets
- median     Ray's `MedianStoppingRule`, replaying stored results on resume
- pbt        Ray's `PopulationBasedTraining` on the space's `mutate:` parameters, mutations kept
             inside their distributions; every exploit is logged with trial ids in `pbt_lineage.jsonl`
- fifo       no early stopping

Schedulers see only the first objective (the space's `metric`). HyperBand and PBT pause trials and
need the whole population to exist, so with them the searcher proposes every trial without a
concurrency cap (Ray's resources still bound how many run at once).
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, MedianStoppingRule, PopulationBasedTraining

from fashion_tune.errors import FashionTuneError
from fashion_tune.spaces import Param, SearchSpace, grid_values

LINEAGE_FILE = "pbt_lineage.jsonl"  # ours, one exploit per line, with trial ids (Ray's pbt_global.txt has tags)
STOPPED_BY = {"asha": "asha", "hyperband": "hyperband", "median": "median"}  # schedulers that stop trials early
_DATA_KEYS = ("subset", "val_subset", "val_size", "split_seed", "seed")


# --- searchers ---------------------------------------------------------------------------------


def default_startup(space: SearchSpace) -> int:
    """Random trials before a model-based sampler takes over: half the sweep, 2 to 10.

    Optuna's default of 10 would leave a small sweep all random.
    """
    return max(2, min(10, space.num_samples // 2))


def make_sampler(space: SearchSpace):
    """The seeded Optuna sampler of `searcher: {type: ...}`."""
    import optuna.samplers as s

    options, seed = dict(space.searcher_options), space.seed
    if space.searcher == "tpe":
        return s.TPESampler(seed=seed, n_startup_trials=options.pop("n_startup_trials", default_startup(space)), **options)
    if space.searcher == "gp":
        return s.GPSampler(seed=seed, n_startup_trials=options.pop("n_startup_trials", default_startup(space)))
    if space.searcher == "cmaes":
        return s.CmaEsSampler(seed=seed, n_startup_trials=options.pop("n_startup_trials", default_startup(space)),
                              warn_independent_sampling=False, **options)
    if space.searcher == "random":
        return s.RandomSampler(seed=seed)
    if space.searcher == "qmc":
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():  # experimental since Optuna 3.0, and stable in use since
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Unscrambled Sobol ignores the seed; scrambling makes it count.
            return s.QMCSampler(seed=seed, qmc_type=options.get("qmc_type", "sobol"),
                                scramble=options.get("scramble", True),
                                warn_asynchronous_seeding=False, warn_independent_sampling=False)
    if space.searcher == "nsga2":
        # Parents need a few distinct members to cross: at least 4 (Optuna's default, 50, suits big sweeps).
        population = options.get("population_size", max(4, min(50, space.num_samples // 2)))
        return s.NSGAIISampler(seed=seed, population_size=population)
    if space.searcher == "grid":
        return s.GridSampler({p.name: grid_values(p) for p in space.params}, seed=seed)
    raise ValueError(f"unknown searcher {space.searcher!r}")  # spaces.py refuses it first


def objective(space: SearchSpace) -> tuple[Any, Any]:
    """OptunaSearch's metric and mode: lists for several objectives, else the one metric."""
    if space.multi_objective:
        return [m for m, _ in space.objectives], [mode for _, mode in space.objectives]
    return space.metric, space.mode


def concurrency(space: SearchSpace) -> int:
    """The searcher's cap on unfinished trials. HyperBand and PBT pause trials and wait for the rest of
    their population, so a cap below num_samples would leave them waiting for trials never proposed."""
    return space.num_samples if space.scheduler in ("hyperband", "pbt") else space.max_concurrent_trials


def make_searcher(space: SearchSpace):
    """The sweep's search algorithm: `SearchGenerator(ConcurrencyLimiter(SweepOptuna))`.

    SweepOptuna (fashion_tune.searcher) is OptunaSearch over the space's define-by-run function
    with the space's sampler, objectives and starting points, which tells Optuna the truth about
    stopped, retried and restored trials; the finished trials of a `warm_start:` sweep go into its
    study as evaluated. The SearchGenerator (not the bare searcher) is passed to Tune so a
    restored sweep keeps a handle on its suggestion count.
    """
    import optuna
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from fashion_tune.searcher import SweepOptuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric, mode = objective(space)
    searcher = SweepOptuna(space=space.suggest, metric=metric, mode=mode,
                           points_to_evaluate=[dict(p) for p in space.points_to_evaluate] or None,
                           sampler=make_sampler(space), max_t=space.max_t)
    # OptunaSearch's evaluated_rewards refuses a define-by-run space, so the trials go in directly.
    add_warm_trials(searcher._ot_study, space)
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=concurrency(space)))


# --- warm start --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmTrial:
    """A finished trial of an earlier sweep, as the new sweep's searcher is told of it."""

    trial_id: str
    params: dict[str, Any]  # the new space's active parameters
    values: tuple[float, ...]  # one per objective, at the trial's best epoch of the first one
    pruned: bool = False  # stopped early by its scheduler
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> first objective


def add_warm_trials(study, space: SearchSpace) -> None:
    """Add the warm-start trials to an Optuna study as evaluated (COMPLETE, or PRUNED if stopped early)."""
    import optuna
    from optuna.trial import TrialState

    for warm in space.warm_trials:
        active = space.active_params(warm.params)
        distributions = {name: active[name].distribution() for name in warm.params}
        if warm.pruned:
            trial = optuna.trial.create_trial(
                state=TrialState.PRUNED, params=warm.params, distributions=distributions,
                intermediate_values=None if space.multi_objective else warm.intermediate)
        else:
            values = list(warm.values)
            trial = optuna.trial.create_trial(params=warm.params, distributions=distributions,
                                              **({"values": values} if space.multi_objective else {"value": values[0]}))
        study.add_trial(trial)


def warm_trials(experiment: str, space: SearchSpace) -> list[WarmTrial]:
    """The finished trials of `experiment`, checked to be trials of `space` (kind, data, parameters)."""
    from fashion_tune.analysis import load_history, load_results, read_sweep_info

    info = read_sweep_info(experiment)
    if info["kind"] != space.kind:
        raise FashionTuneError(f"{experiment} is a {info['kind']} sweep and this space is for {space.kind}; "
                               f"warm-start from a {space.kind} sweep")
    if info.get("max_t") != space.max_t:
        raise FashionTuneError(f"{experiment} trained trials for {info.get('max_t')} epochs and this space for "
                               f"{space.max_t}; their values are not comparable, use max_t: {info.get('max_t')}")
    results, history = load_results(experiment), load_history(experiment)
    done = results[(results["status"] == "TERMINATED") & ~results["diverged"].astype(bool)]
    trials = [t for t in (_warm_trial(row, history, space, experiment) for _, row in done.iterrows()) if t]
    if not trials:
        raise FashionTuneError(f"{experiment} has no finished trial with a finite {space.metric} to start from")
    return trials


def _warm_trial(row, history, space: SearchSpace, experiment: str) -> WarmTrial | None:
    from fashion_tune.config import resolve_config

    trial_id = row["trial_id"]
    raw = {k.removeprefix("config/"): v for k, v in row.items()
           if str(k).startswith("config/") and not (isinstance(v, float) and math.isnan(v))}
    config = resolve_config(space.kind, raw)
    active = space.active_params(config)
    point = {name: config[name] for name in active}
    for name, value in point.items():
        if not active[name].contains(value):
            raise FashionTuneError(f"trial {trial_id} of {experiment} has {name}={value!r}, outside this space's "
                                   f"{name}; widen {name} to include it, or drop warm_start")
    mine = space.trial_config(point)
    differ = [k for k in mine if k != "device" and mine[k] != config.get(k)]
    if differ:
        k = differ[0]
        what = "trained on other data" if k in _DATA_KEYS else "is not a trial of this space"
        raise FashionTuneError(f"trial {trial_id} of {experiment} has {k}={config.get(k)!r} but this space gives "
                               f"{k}={mine[k]!r}, so it {what}; search {k} or fix it to match"
                               + (f" (also differ: {', '.join(differ[1:])})" if len(differ) > 1 else ""))
    rows = history[history["trial_id"] == trial_id]
    rows = rows[rows[space.metric].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    if rows.empty:
        return None
    best = rows.loc[rows[space.metric].idxmax() if space.mode == "max" else rows[space.metric].idxmin()]
    names = [m for m, _ in space.objectives] or [space.metric]
    return WarmTrial(trial_id=trial_id, params=point, values=tuple(float(best[m]) for m in names),
                     pruned=bool(row.get("stopped_early")),
                     intermediate={int(e): float(v) for e, v in zip(rows["epoch"], rows[space.metric])})


# --- schedulers ------------------------------------------------------------------------------


def make_scheduler(space: SearchSpace):
    """The Ray scheduler of `scheduler: {type: ...}`, on the first objective, with `epoch` as its time."""
    options = space.scheduler_options
    if space.scheduler == "asha":
        from fashion_tune.sweep import SweepASHA

        return SweepASHA(time_attr="epoch", max_t=space.max_t, grace_period=space.grace_period,
                         reduction_factor=space.reduction_factor)
    if space.scheduler == "hyperband":
        return SweepHyperBand(time_attr="epoch", max_t=space.max_t, reduction_factor=options["reduction_factor"])
    if space.scheduler == "median":
        return SweepMedian(time_attr="epoch", grace_period=options["grace_period"],
                           min_samples_required=options["min_samples_required"])
    if space.scheduler == "pbt":
        random.seed(space.seed)  # PBT draws clones and perturbations from the global `random`
        params = {p.name: p for p in space.params}
        return SweepPBT(time_attr="epoch", max_t=space.max_t, perturbation_interval=options["perturbation_interval"],
                        hyperparam_mutations={name: _mutation(params[name]) for name in options["mutate"]},
                        quantile_fraction=options["quantile_fraction"],
                        resample_probability=options["resample_probability"],
                        custom_explore_fn=_Clip([params[name] for name in options["mutate"]]))
    return FIFOScheduler()


def _replay(trial) -> list[dict[str, Any]]:
    """The results a restored trial stored before the interruption, non-finite values made finite."""
    from fashion_tune.sweep import _stored_results

    return _stored_results(trial)


class SweepMedian(MedianStoppingRule):
    """The median stopping rule that, on resume, knows the results restored trials had reported."""

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        for row in _replay(trial):
            if row.get(self._time_attr) is not None and isinstance(row.get(self._metric), (int, float)):
                self._results[trial].append(row)


class SweepHyperBand(HyperBandScheduler):
    """Synchronous HyperBand whose brackets hold only trials that start in this run.

    Ray does not save a scheduler, and a bracket rebuilt on resume would wait for finished trials
    (they never report again) or pause restored ones that it never releases. So a trial restored
    with results (finished or not) stays out of the brackets: unfinished ones run on to max_t
    without early stopping; trials proposed after the resume fill new brackets as usual.
    """

    def on_trial_add(self, tune_controller, trial):
        if trial.status in (trial.TERMINATED, trial.ERROR) or _replay(trial):
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

    def on_trial_remove(self, tune_controller, trial):
        if trial in self._trial_info:
            super().on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is None:  # the restored trials outside the brackets
            chosen = next((t for t in tune_controller.get_trials()
                           if t not in self._trial_info and t.status in (t.PENDING, t.PAUSED)), None)
        return chosen


def _mutation(param: Param):
    """PBT's resample distribution for a parameter: the list of a choice, else the Tune domain."""
    from ray import tune

    if param.type == "choice":
        return list(param.values)
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "randint":
        return tune.randint(param.low, param.high)
    if param.type == "quniform":
        return tune.quniform(param.low, param.high, param.q)
    return tune.uniform(param.low, param.high)


class _Clip:
    """PBT's explore step multiplies by 0.8 or 1.2; keep the result inside each distribution
    (a dropout of 0.6 from 0.5 would be refused by the model, an lr past the range never searched)."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for p in self.params:
            if p.type == "choice" or p.name not in config:
                continue
            value = min(max(config[p.name], p.low), p.high - 1 if p.type == "randint" else p.high)
            if p.type == "quniform":
                value = p.low + round((value - p.low) / p.q) * p.q
            config[p.name] = int(round(value)) if p.type == "randint" or isinstance(config[p.name], int) else float(value)
        return config


class SweepPBT(PopulationBasedTraining):
    """Population Based Training that takes its population from our searcher and logs lineage by trial id.

    Ray refuses any search algorithm with PBT, since a searcher learns from configs that PBT then
    changes. Here the searcher only draws the initial population (seeded, from the space, with its
    starting points), which is what a space file promises; so that check is left out. On resume,
    each restored trial's last stored result becomes its score, so quantiles need not start empty.
    """

    def on_trial_add(self, tune_controller, trial):
        from ray.tune.schedulers.pbt import _fill_config, _PBTTrialState

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

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t

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


# --- what sweep.json records ----------------------------------------------------------------------


def info(space: SearchSpace) -> dict[str, Any]:
    """The strategy fields of sweep.json (ASHA's rung settings only where ASHA ran)."""
    asha = space.scheduler == "asha"
    return {
        "searcher": space.searcher, "searcher_options": dict(space.searcher_options),
        "scheduler": space.scheduler, "scheduler_options": dict(space.scheduler_options),
        "grace_period": space.grace_period if space.scheduler in ("asha", "median") else None,
        "reduction_factor": space.reduction_factor if asha else None,
        "objectives": [list(o) for o in space.objectives] or None,
        "warm_start": space.warm_start, "warm_trials": len(space.warm_trials),
    }
