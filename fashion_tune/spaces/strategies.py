"""The sweep strategy in a space file: objectives, searcher, scheduler, and seeding from other sweeps.

Part of reading a search space (`fashion_tune.spaces.space`); `fashion_tune.search.strategies` builds the
Optuna sampler and Ray scheduler these settings describe.

`start_from:` and `warm_start:` name another sweep (or a promoted model). Parsing only checks
that they name one; `fashion_tune.search.sources` reads them, once, when a sweep starts. What it
read is stored with the sweep (`fashion_tune.search.sweep_info`), and a resumed sweep is built from
that with `with_sources`, so it never reads the other sweep again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fashion_tune.training.config import default_config
from fashion_tune.training.kinds import get_kind
from fashion_tune.spaces.params import Checker, grid_values, is_number, show, walk
from fashion_tune.spaces.search_space import SearchSpace


# Each scheduler type and the keys it takes (no `type:` means ASHA, as before).
SCHEDULER_TYPES = {
    "asha": ("type", "max_t", "grace_period", "reduction_factor"),
    "hyperband": ("type", "max_t", "reduction_factor"),
    "median": ("type", "max_t", "grace_period", "min_samples_required"),
    "pbt": ("type", "max_t", "perturbation_interval", "mutate", "quantile_fraction", "resample_probability"),
    "fifo": ("type", "max_t"),
}
SCHEDULER_KEYS = SCHEDULER_TYPES["asha"][1:]
# Each Optuna sampler and the options it takes besides `type`.
SEARCHER_TYPES = {
    "tpe": ("n_startup_trials", "multivariate", "constant_liar"),
    "gp": ("n_startup_trials",),
    "cmaes": ("n_startup_trials", "sigma0", "popsize"),
    "random": (),
    "qmc": ("qmc_type", "scramble"),
    "nsga2": ("population_size",),
    "grid": (),
}
# What PBT may change in a running trial: optimizer settings and regularisation, never the architecture.
MUTABLE = ("lr", "weight_decay", "dropout", "beta_start", "beta_end")


def check_sources(c: Checker, data: dict[str, Any]) -> tuple[str | None, str | None]:
    """`start_from:` and `warm_start:` as written: each a directory to read when the sweep starts, or None."""
    start_from, warm_start = data.get("start_from"), data.get("warm_start")
    if start_from is not None and (not isinstance(start_from, str) or not start_from):
        raise c.fail("start_from", "expected a finished sweep's directory (ray_results/NAME) or a promoted "
                                   f"model's (best_models/KIND), got {show(start_from)}")
    if warm_start is not None and (not isinstance(warm_start, str) or not warm_start):
        raise c.fail("warm_start", f"expected the directory of a finished sweep, e.g. ray_results/NAME, got {show(warm_start)}")
    return start_from, warm_start


def with_sources(space: SearchSpace, start_from: str | None, point: dict[str, Any] | None, warm_start: str | None,
                 trials) -> SearchSpace:
    """The space seeded with a start point (evaluated first) and warm trials (`strategies.WarmTrial`s, told
    to the searcher as evaluated); `points_to_evaluate` they already evaluated are dropped. Reads nothing."""
    known = [t.params for t in trials]
    points = tuple(p for p in ((point,) if point is not None else ()) + space.points_to_evaluate if p not in known)
    return dataclasses.replace(space, start_from=start_from, start_point=point, warm_start=warm_start,
                               warm_trials=tuple(trials), points_to_evaluate=points)


def parse_objectives(c: Checker, kind: str, raw: Any, metric: Any) -> tuple[tuple[str, str], ...]:
    """`objectives: [{metric, mode}, ...]`: the first is a validation metric; it drives the scheduler."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) < 2:
        raise c.fail("objectives", f"expected a list of at least two {{metric: M, mode: min|max}}, got {show(raw)}; "
                                   "for one objective use metric: and mode:")
    metrics = get_kind(kind).metrics
    objectives = []
    for i, item in enumerate(raw):
        key = f"objectives[{i}]"
        item = c.mapping(item, key, ("metric", "mode"))
        name = item.get("metric")
        if name not in metrics:
            raise c.fail(f"{key}.metric", f"{show(name)} is not a metric the {kind} trainable reports; "
                                          f"choose one of: {', '.join(metrics)}")
        if any(name == other for other, _ in objectives):
            raise c.fail(f"{key}.metric", f"{name} is listed twice; list each objective once")
        mode = item.get("mode", metrics[name])
        if mode != metrics[name]:
            raise c.fail(f"{key}.mode", f"{name} is better when {'lower' if metrics[name] == 'min' else 'higher'}; "
                                        f"use mode: {metrics[name]}")
        objectives.append((name, mode))
    if not objectives[0][0].startswith("val_"):
        raise c.fail("objectives[0].metric", f"{objectives[0][0]} is not a validation metric; the first objective "
                                             "is the one the scheduler stops on and checkpoints are ranked by, so put "
                                             "e.g. val_acc or val_neg_elbo first")
    if metric is not None and metric != objectives[0][0]:
        raise c.fail("metric", f"{metric} differs from the first objective {objectives[0][0]}; drop metric: "
                               "(the first objective is the metric)")
    return tuple(objectives)


def parse_strategies(c: Checker, space: SearchSpace, searcher: Any, scheduler: dict[str, Any]) -> SearchSpace:
    """The searcher's and the scheduler's options, checked against the space and each other."""
    searcher = c.mapping(searcher if searcher is not None else {}, "searcher")
    kind = searcher.get("type", "tpe")
    if kind not in SEARCHER_TYPES:
        raise c.fail("searcher.type", f"{show(kind)} is not allowed; choose one of: {', '.join(SEARCHER_TYPES)}")
    options = {k: v for k, v in c.mapping(searcher, "searcher", ("type", *SEARCHER_TYPES[kind])).items() if k != "type"}
    for name in ("n_startup_trials", "popsize", "population_size"):
        if name in options:
            options[name] = c.integer(options[name], f"searcher.{name}", 2 if name != "n_startup_trials" else 0)
    if "sigma0" in options and (not is_number(options["sigma0"]) or options["sigma0"] <= 0):
        raise c.fail("searcher.sigma0", f"{show(options['sigma0'])} is not allowed; use a number > 0")
    if "qmc_type" in options and options["qmc_type"] not in ("sobol", "halton"):
        raise c.fail("searcher.qmc_type", f"{show(options['qmc_type'])} is not allowed; choose sobol or halton")
    for name in ("multivariate", "constant_liar", "scramble"):
        if name in options and not isinstance(options[name], bool):
            raise c.fail(f"searcher.{name}", f"{show(options[name])} must be true or false")
    _check_searcher(c, space, kind)
    extra = _scheduler_options(c, space, scheduler)
    return dataclasses.replace(space, searcher=kind, searcher_options=options, scheduler_options=extra)


def _check_searcher(c: Checker, space: SearchSpace, kind: str) -> None:
    """Refuse a sampler that cannot handle this space or these objectives."""
    nested = [p.name for p in walk(space.params) if not any(p is top for top in space.params)]
    if kind == "cmaes":
        choices = [p.name for p in walk(space.params) if p.type == "choice"]
        if choices:
            raise c.fail(f"params.{choices[0]}", "searcher cmaes cannot sample choice parameters (CMA-ES moves "
                                                 "through continuous and integer ranges); use searcher: {type: gp} "
                                                 "or tpe, or make it a randint/quniform range")
        if space.multi_objective:
            raise c.fail("searcher.type", "cmaes optimizes a single objective; with objectives: use nsga2, tpe or gp")
    if kind == "grid":
        continuous = [p.name for p in walk(space.params) if p.type in ("uniform", "loguniform")]
        if continuous:
            raise c.fail(f"params.{continuous[0]}", "searcher grid needs a finite set of values, not a continuous "
                                                    "range; use {type: quniform, ...} or {type: choice, ...}, or "
                                                    "searcher: {type: qmc} to cover a range evenly")
        if nested:
            raise c.fail(f"params ({nested[0]})", "searcher grid needs a flat space (no parameters inside choice "
                                                  "options); flatten it or use searcher: {type: tpe}")
        size = math.prod(len(grid_values(p)) for p in space.params)
        if space.num_samples > size:
            raise c.fail("num_samples", f"{space.num_samples} is more than the grid's {size} points; "
                                        f"use num_samples: {size} (or less)")


def _scheduler_options(c: Checker, space: SearchSpace, raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of a scheduler type besides max_t (asha's grace_period and reduction_factor are fields)."""
    kind = space.scheduler
    if kind == "hyperband":
        return {"reduction_factor": space.reduction_factor}
    if kind == "median":
        return {"grace_period": space.grace_period,
                "min_samples_required": c.integer(raw.get("min_samples_required", 3),
                                                  "scheduler.min_samples_required", 1)}
    if kind != "pbt":
        return {}
    interval = c.integer(raw.get("perturbation_interval", max(1, space.max_t // 4)),
                         "scheduler.perturbation_interval", 1)
    if interval >= space.max_t:
        raise c.fail("scheduler.perturbation_interval", f"{interval} leaves no perturbation before max_t={space.max_t}; "
                                                        f"use 1..{space.max_t - 1}")
    options = {"perturbation_interval": interval, "mutate": _mutable(c, space, raw.get("mutate"))}
    for name, default in (("quantile_fraction", 0.25), ("resample_probability", 0.25)):
        value = raw.get(name, default)
        top = 0.5 if name == "quantile_fraction" else 1.0
        if not is_number(value) or not 0 < value <= top:
            raise c.fail(f"scheduler.{name}", f"{show(value)} is not allowed; use a number in (0, {top:g}]")
        options[name] = float(value)
    if space.num_samples < 2:
        raise c.fail("num_samples", "pbt needs a population: use num_samples >= 2 (4 or more is usual)")
    return options


def _mutable(c: Checker, space: SearchSpace, raw: Any) -> tuple[str, ...]:
    """PBT's `mutate:` list: searched top-level parameters the trainable can change mid-run."""
    allowed = [name for name in MUTABLE if name in default_config(space.kind)]
    if not isinstance(raw, list) or not raw:
        raise c.fail("scheduler.mutate", f"pbt needs the parameters it may change in a running trial, e.g. "
                                         f"mutate: [lr, weight_decay]; allowed: {', '.join(allowed)}")
    top = {p.name: p for p in space.params}
    for name in raw:
        if name not in allowed:
            raise c.fail("scheduler.mutate", f"{show(name)} cannot change in a running trial (the model or the data "
                                             f"would differ from its checkpoint); allowed: {', '.join(allowed)}")
        if name not in top:
            raise c.fail("scheduler.mutate", f"{name} is not a top-level searched parameter; add it under params: "
                                             "(its distribution bounds the mutations)")
    return tuple(dict.fromkeys(raw))
