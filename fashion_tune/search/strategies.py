"""Search strategies: the Optuna sampler and the Ray scheduler a search space asks for.

`make_searcher(space)` builds `OptunaSearch` over the space's define-by-run function with the
sampler of `searcher: {type: ...}` (always seeded), the space's objectives, its starting points and
the finished trials of a `warm_start:` sweep (added to the study as evaluated trials, so they are
not run again). `make_scheduler(space)` builds the scheduler of `scheduler: {type: ...}`:

- asha       Ray's ASHA, replaying stored results on resume
- hyperband  Ray's synchronous `HyperBandScheduler`; restored finished trials stay out of its brackets
- median     Ray's `MedianStoppingRule`, replaying stored results on resume
- pbt        Ray's `PopulationBasedTraining` on the space's `mutate:` parameters, mutations kept
             inside their distributions; every exploit is logged with trial ids in `pbt_lineage.jsonl`
- fifo       no early stopping

The subclasses that add the resume behaviour live in `fashion_tune.search.schedulers`.

Schedulers see only the first objective (the space's `metric`). HyperBand and PBT pause trials and
need the whole population to exist, so with them the searcher proposes every trial without a
concurrency cap (Ray's resources still bound how many run at once).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from optuna.samplers import NSGAIISampler
from ray.tune.schedulers import FIFOScheduler

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.spaces.space import Param, SearchSpace, grid_values
from fashion_tune.store.results import SCHEDULER_STOPS
from fashion_tune.search.schedulers import SweepASHA, SweepHyperBand, SweepMedian, SweepPBT
from fashion_tune.search.study import journal_location, journal_storage, new_study_name

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
        return PicklableNSGAII(seed=seed, population_size=population)
    if space.searcher == "grid":
        return s.GridSampler({p.name: grid_values(p) for p in space.params}, seed=seed)
    raise ValueError(f"unknown searcher {space.searcher!r}")  # spaces.py refuses it first


class PicklableNSGAII(NSGAIISampler):
    """Optuna's NSGA-II that pickles, as Tune pickles the searcher into tuner.pkl and its snapshots.

    Optuna 5.1 gave its genetic samplers a `threading.Lock` (`_thread_lock`) and no `__getstate__`,
    so `tune.Tuner(...)` failed with "cannot pickle '_thread.lock' object". The lock guards a cache
    within one process; a copy gets a lock of its own.
    """

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def objective(space: SearchSpace) -> tuple[Any, Any]:
    """OptunaSearch's metric and mode: lists for several objectives, else the one metric."""
    if space.multi_objective:
        return [m for m, _ in space.objectives], [mode for _, mode in space.objectives]
    return space.metric, space.mode


def concurrency(space: SearchSpace) -> int:
    """The searcher's cap on unfinished trials. HyperBand and PBT pause trials and wait for the rest of
    their population, so a cap below num_samples would leave them waiting for trials never proposed."""
    return space.num_samples if space.scheduler in ("hyperband", "pbt") else space.max_concurrent_trials


def make_searcher(space: SearchSpace, experiment_dir: str | os.PathLike | None = None, name: str | None = None):
    """The sweep's search algorithm: `SearchGenerator(ConcurrencyLimiter(SweepOptuna))`.

    SweepOptuna (fashion_tune.search.searcher) is OptunaSearch over the space's define-by-run function
    with the space's sampler, objectives and starting points, which tells Optuna the truth about
    stopped, retried and restored trials; the finished trials of a `warm_start:` sweep go into its
    study as evaluated. The SearchGenerator (not the bare searcher) is passed to Tune so a
    restored sweep keeps a handle on its suggestion count.

    With `experiment_dir` the study is a new one (named `<name>-<random suffix>`) in the journal
    `fashion_tune.search.study.journal_location` gives; without, it is kept in memory.
    """
    import optuna
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from fashion_tune.search.searcher import SweepOptuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric, mode = objective(space)
    journal = storage = None
    if experiment_dir is not None:
        name = name or str(experiment_dir).rstrip("/").rsplit("/", 1)[-1]
        journal = journal_location(experiment_dir, name)
        storage = journal_storage(journal)
    searcher = SweepOptuna(space=space.suggest, metric=metric, mode=mode,
                           points_to_evaluate=[dict(p) for p in space.points_to_evaluate] or None,
                           sampler=make_sampler(space), storage=storage or optuna.storages.InMemoryStorage(),
                           study_name=new_study_name(name or space.kind), journal=journal, max_t=space.max_t)
    # The dashboard names each objective by its metric instead of "Objective 0".
    with warnings.catch_warnings():  # experimental since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        searcher.study.set_metric_names(list(metric) if isinstance(metric, (list, tuple)) else [metric])
    # OptunaSearch's evaluated_rewards refuses a define-by-run space, so the trials go in directly.
    add_warm_trials(searcher.study, space)
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=concurrency(space)))


# --- warm start --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmTrial:
    """A finished trial of an earlier sweep, as the new sweep's searcher is told of it."""

    trial_id: str
    params: dict[str, Any]  # the new space's active parameters
    values: tuple[float, ...]  # one per objective, at the trial's best epoch of the first one
    pruned: bool = False  # stopped early by its scheduler (not by its own early-stop patience)
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> first objective

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WarmTrial:
        """A trial as `dataclasses.asdict` wrote it to JSON (a sweep's stored sources)."""
        return cls(trial_id=data["trial_id"], params=dict(data["params"]),
                   values=tuple(float(v) for v in data["values"]), pruned=bool(data["pruned"]),
                   intermediate={int(e): float(v) for e, v in data["intermediate"].items()})


def add_warm_trials(study, space: SearchSpace) -> None:
    """Add the warm-start trials to an Optuna study as evaluated: PRUNED if their scheduler stopped them
    early, else COMPLETE at their best value (a trial its own early-stop patience ended included)."""
    import optuna
    from optuna.trial import TrialState

    for warm in space.warm_trials:
        active = space.active_params(warm.params)
        distributions = {name: active[name].distribution() for name in warm.params}
        origin = {"warm_start_trial_id": warm.trial_id, "warm_start": space.warm_start}
        if warm.pruned:
            trial = optuna.trial.create_trial(
                state=TrialState.PRUNED, params=warm.params, distributions=distributions, user_attrs=origin,
                intermediate_values=None if space.multi_objective else warm.intermediate)
        else:
            values = list(warm.values)
            trial = optuna.trial.create_trial(params=warm.params, distributions=distributions, user_attrs=origin,
                                              **({"values": values} if space.multi_objective else {"value": values[0]}))
        study.add_trial(trial)


def warm_trials(experiment: str, space: SearchSpace) -> list[WarmTrial]:
    """The finished trials of `experiment`, checked to be trials of `space` (kind, data, parameters)."""
    from fashion_tune.store.reading import load_history, load_results, read_sweep_info

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
    from fashion_tune.training.config import resolve_config

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
                     pruned=row.get("stop_reason") in SCHEDULER_STOPS,
                     intermediate={int(e): float(v) for e, v in zip(rows["epoch"], rows[space.metric])})


# --- schedulers ------------------------------------------------------------------------------


def make_scheduler(space: SearchSpace):
    """The Ray scheduler of `scheduler: {type: ...}`, on the first objective, with `epoch` as its time."""
    options = space.scheduler_options
    if space.scheduler == "asha":
        return SweepASHA(time_attr="epoch", max_t=space.max_t, grace_period=space.grace_period,
                         reduction_factor=space.reduction_factor)
    if space.scheduler == "hyperband":
        return SweepHyperBand(time_attr="epoch", max_t=space.max_t, reduction_factor=options["reduction_factor"])
    if space.scheduler == "median":
        return SweepMedian(time_attr="epoch", grace_period=options["grace_period"],
                           min_samples_required=options["min_samples_required"])
    if space.scheduler == "pbt":
        params = {p.name: p for p in space.params}
        return SweepPBT(time_attr="epoch", max_t=space.max_t, seed=space.seed,
                        perturbation_interval=options["perturbation_interval"],
                        hyperparam_mutations={name: _mutation(params[name]) for name in options["mutate"]},
                        quantile_fraction=options["quantile_fraction"],
                        resample_probability=options["resample_probability"],
                        custom_explore_fn=_Clip([params[name] for name in options["mutate"]]))
    return FIFOScheduler()


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
        "start_from": space.start_from, "warm_start": space.warm_start, "warm_trials": len(space.warm_trials),
    }
