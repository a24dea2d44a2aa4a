"""Search spaces: one YAML file per sweep, parsed and validated before Ray starts.

A space file holds the sweep settings and the parameter distributions::

    kind: vae                     # vae | cnn: which trainable the sweep runs
    metric: val_neg_elbo          # a validation metric the trainable reports (default: its monitor)
    mode: min                     # min | max; must match the metric (default: the metric's own)
    num_samples: 40               # trials in the sweep (--num-samples overrides)
    max_concurrent_trials: 4      # trials running at once (--max-concurrent overrides; default 2)
    seed: 0                       # seed of Optuna's TPE sampler (default 0)
    scheduler:                    # ASHA on `metric`; its time unit is the trainable's `epoch`
      max_t: 30                   # epochs a trial may reach; every trial's `epochs` config is this
      grace_period: 3             # epochs before ASHA may stop a trial (default 1)
      reduction_factor: 3         # ASHA keeps the top 1/reduction_factor at each rung (default 2)
    resources_per_trial:
      cpu: 2                      # > 0, fractions allowed (default 1)
      gpu: 0.25                   # >= 0; a fraction < 1 packs several trials on one GPU (default 0)
    reuse_actors: true            # a finished trial's process takes the next trial (skips starting one
                                  # and importing torch); false: each trial gets its own, placed on
                                  # the nodes as its resources fit (default true)
    fixed:                        # config values shared by every trial (see `train KIND --show-config`)
      subset: null
      batch_size: 64
    params:                       # searched config keys, each one distribution:
      lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}      # low > 0
      dropout: {type: uniform, low: 0.0, high: 0.5}
      width: {type: quniform, low: 16, high: 64, q: 16}      # low, low+q, ..., high
      depth: {type: randint, low: 1, high: 4}                # integers low..high-1, as tune.randint
      latent_dim: {type: choice, values: [16, 32, 64]}
      beta_schedule:                                         # a choice whose options carry sub-params
        type: choice
        values:
          - value: constant
            params: {beta_end: {type: uniform, low: 0.1, high: 1.0}}
          - value: linear
            params:
              beta_start: {type: loguniform, low: 0.01, high: 0.5}
              beta_end: {type: uniform, low: 0.5, high: 2.0}
    points_to_evaluate:           # tried first, in order (e.g. the known-good settings)
      - {lr: 2.0e-3, latent_dim: 32, beta_schedule: linear, beta_start: 0.1, beta_end: 1.0}
    start_from: ray_results/NAME  # optional: the best trial of that finished sweep (same kind), or a
                                  # promoted model (best_models/KIND), is the first point, e.g. to
                                  # train a champion longer in a follow-up sweep (read once, see below)
    searcher: {type: tpe}         # tpe | gp | cmaes | random | qmc | nsga2 | grid (SEARCHER_TYPES: options)
    objectives:                   # instead of metric/mode: several; the first is a validation metric and
      - {metric: val_neg_elbo, mode: min}   # the only one schedulers stop on
      - {metric: flops, mode: min}
    warm_start: ray_results/NAME  # tell the searcher every finished trial of that sweep (not run again)
    limits:                       # optional: caps on every model a trial may build, checked as the file
      params: 1000000             # is read: a space that allows a larger one is refused (`limits`)

A replay space (`kind: replay`) runs the same sweep on recorded CNN learning curves instead of
training (`fashion_tune.search.replay`): `table: PATH` names the curves benchmarks/record_curves.py
recorded (runs.jsonl or curves.csv; a relative path is read from the current directory, as
`start_from:`), `time_scale: 0.01` the real seconds a trial sleeps per recorded second (0: none),
`clock: sleep | simulated` whether those sleeps order the reports or a simulated clock grants them
in recorded-time order, one at a time, with no sleep and the same order every run
(`fashion_tune.search.sim_clock`),
`lookup: nearest | interpolate` how a config off the table is answered (the nearest recorded
configuration's curve, or a blend of the nearest few: `ReplayTable.blended`), and `params:` the table's parameters (no `fixed:`: the recording fixed those). The space is a CNN
space in everything else (its metrics, configs and results).

`scheduler` may name its type: `{type: asha | hyperband | median | pbt | fifo, ...}`, each with its
own keys (SCHEDULER_TYPES); without `type` it is ASHA. PBT needs `mutate: [lr, ...]`, searched
top-level parameters among MUTABLE, and takes `perturbation_interval` (epochs), `quantile_fraction`
and `resample_probability`. A sampler that cannot handle the space (cmaes and a choice, grid and a
continuous range, cmaes and several objectives) is refused with what to use instead.

`epochs` is not set in `fixed` or `params`: it is `scheduler.max_t` (a `fixed.epochs` equal to it
is accepted, and gives `max_t` when the scheduler omits it). The data split (`subset`, `val_subset`,
`val_size`, `split_seed`, `seed`) and `device` are fixed: the data goes into Ray's object store once
and every trial trains on it. A parameter name may appear in several options of a choice if its
distribution type agrees (Optuna's rule), and a point may leave parameters out (TPE samples them).

`load_space` and `parse_space` read no file of another experiment: `start_from` and `warm_start`
stay references (paths as written). A sweep (and `--dry-run`) then resolves them with
`fashion_tune.search.sources.resolve_sources`: it reads the start point and the warm trials once,
relative to the current directory, and makes the paths absolute. The sweep stores what was read in its
experiment directory, and `--resume` rebuilds the space from that, never from the sources.

Every mistake is one `ConfigError` line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from fashion_tune.util.errors import ConfigError
from fashion_tune.util.files import format_short
from fashion_tune.training.config import load_yaml, resolve_config
from fashion_tune.training.kinds import KINDS, get_kind
from fashion_tune.spaces.params import (Checker, Param, check_names, describe_param, grid_values, is_integer, is_number,
                                        parse_params, show)
from fashion_tune.spaces.search_space import CLOCKS, DEFAULT_TIME_SCALE, LOOKUPS, SearchSpace, check_point
from fashion_tune.spaces.strategies import SCHEDULER_TYPES, check_sources, parse_objectives, parse_strategies
from fashion_tune.spaces.limits import LIMIT_KEYS, check_limits, describe_shape, largest_shapes, parse_limits

# Param and grid_values are imported from here by fashion_tune.search.strategies.
__all__ = ["SearchSpace", "Param", "grid_values", "load_space", "parse_space", "describe_space", "check_resources",
           "local_capacity"]

TOP_KEYS = ("kind", "metric", "mode", "num_samples", "max_concurrent_trials", "seed", "scheduler",
            "resources_per_trial", "fixed", "params", "points_to_evaluate", "start_from",
            "searcher", "objectives", "warm_start", "reuse_actors", "table", "time_scale", "lookup", "clock", "limits")
RESOURCE_KEYS = ("cpu", "gpu")
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_GRACE_PERIOD = 1
DEFAULT_REDUCTION_FACTOR = 2
REPLAY, REPLAYED_KIND = "replay", "cnn"  # `kind: replay` replays recorded CNN curves


def describe_space(space: SearchSpace) -> str:
    """A few lines describing the sweep, for --dry-run and logs."""
    lines = [
        f"{space.path}: {'replay (of ' + space.kind + ' curves)' if space.table else space.kind} sweep, "
        f"{space.num_samples} trials ({space.max_concurrent_trials} at a time), "
        f"{space.mode} {space.metric}",
        f"  {space.strategy_line()}",
        f"  per trial: {space.cpu:g} CPU, {space.gpu:g} GPU; {space.searcher} seed {space.seed}; "
        f"{len(space.points_to_evaluate)} starting point(s)"
        + (f"; warm start: {len(space.warm_trials)} trials of {space.warm_start}" if space.warm_start else ""),
    ]
    if space.table is not None:
        timing = "simulated clock" if space.clock == "simulated" else f"time scale {space.time_scale:g}"
        lines.insert(1, f"  replays the curves of {space.table} ({timing}, lookup {space.lookup})")
    # The values every trial shares (the rest are `train KIND --show-config`'s defaults); epochs is max_t.
    lines.append("  fixed: " + ", ".join(f"{key}={format_short(value) if value is not None else 'null'}"
                                         for key, value in space.base_config().items()))
    if space.multi_objective:
        lines.insert(1, "  objectives: " + ", ".join(f"{mode} {metric}" for metric, mode in space.objectives)
                     + f" (the scheduler stops on {space.metric} only)")

    def describe(params, indent):
        for param in params:
            lines.append(f"{indent}{param.name}: {describe_param(param)}")
            for option in param.options:
                if option.params:
                    lines.append(f"{indent}  when {param.name} = {option.value!r}:")
                    describe(option.params, indent + "    ")

    describe(space.params, "  ")
    for key, (cost, shape) in largest_shapes(space).items():
        lines.append(f"  limits: {key} <= {space.limits[key]:,} {LIMIT_KEYS[key]}; the largest model the space "
                     f"allows has {cost:,} ({describe_shape(shape)})")
    return "\n".join(lines)


def load_space(path: str | Path, kind: str | None = None) -> SearchSpace:
    """Read and validate a search space file; `kind`, when given, must match the file's.

    Its `start_from:` and `warm_start:` stay references: a sweep reads them as it starts
    (`fashion_tune.search.sources.resolve_sources`).
    """
    path = Path(path)
    data = load_yaml(path)
    return parse_space(data, path, kind=kind)


def parse_space(data: Mapping[str, Any], path: str | Path = "<space>", kind: str | None = None) -> SearchSpace:
    """Validate a search space mapping (as read from `path`) and build a SearchSpace.

    Reads no other file: `start_from` and `warm_start` are kept as written, unresolved (see `load_space`).
    """
    path = Path(path)
    c = Checker(path)
    if not isinstance(data, Mapping):
        raise c.fail("(top level)", f"expected a mapping of sweep settings, got {show(data)}")
    data = c.mapping(dict(data), "", TOP_KEYS)
    _all_required_keys(c, data)
    kind = _parse_kind(c, data.get("kind"), kind)
    table, time_scale, lookup, clock = _parse_replay(c, data)
    objectives, metric, mode = _parse_metric(c, kind, data)
    if "num_samples" not in data:
        raise c.fail("num_samples", "missing; give the number of trials, an integer >= 1")
    fixed = dict(c.mapping(data.get("fixed") or {}, "fixed"))
    scheduler = c.mapping(data.get("scheduler") or {}, "scheduler")
    scheduler_type, max_t, grace, rf = _parse_scheduler(c, scheduler, fixed)
    fixed.pop("epochs", None)
    cpu, gpu = _parse_resources(c, data.get("resources_per_trial"))
    reuse_actors = data.get("reuse_actors", True)
    if not isinstance(reuse_actors, bool):
        raise c.fail("reuse_actors", f"{show(reuse_actors)} is not allowed; use true or false")
    try:
        resolve_config(kind, {**fixed, "epochs": max_t})
    except ConfigError as exc:
        raise c.fail("fixed", str(exc)) from None
    if "params" not in data or not data["params"]:
        raise c.fail("params", "missing or empty; give at least one searched config key, e.g. lr: "
                               "{type: loguniform, low: 1.0e-4, high: 1.0e-2}")
    params = parse_params(c, kind, data["params"], "params", fixed, {})
    check_names(c, params, fixed)
    if any(p.name == "binarize" for p in params) and metric != "val_neg_elbo_bin":
        # Grey-level and binarized training are only comparable on one likelihood: the binarized one.
        raise c.fail("params.binarize", f"searching binarize needs metric: val_neg_elbo_bin (the negative ELBO on "
                                        f"binarized validation images), not {metric}; or fix binarize under fixed:")
    watched = {metric, *(name for name, _ in objectives)}
    if "val_sample_acc" in watched and not fixed.get("sample_judge"):
        # Only a VAE trained with a judge reports it (training.settings.VAETraining.sample_judge).
        raise c.fail("objectives" if objectives else "metric", "val_sample_acc needs a judge: set fixed: sample_judge: "
                     "shipped (or an absolute models directory with judge/)")
    space = SearchSpace(
        path=path, kind=kind, metric=metric, mode=mode, num_samples=c.integer(data["num_samples"], "num_samples", 1),
        max_concurrent_trials=c.integer(data.get("max_concurrent_trials", DEFAULT_MAX_CONCURRENT), "max_concurrent_trials", 1),
        seed=c.integer(data.get("seed", 0), "seed", 0), max_t=max_t, grace_period=grace,
        reduction_factor=float(rf) if not is_integer(rf) else rf, cpu=float(cpu), gpu=float(gpu),
        fixed=fixed, params=tuple(params), scheduler=scheduler_type, objectives=objectives, reuse_actors=reuse_actors,
        table=table, time_scale=time_scale, lookup=lookup, clock=clock, limits=parse_limits(c, data.get("limits")),
    )
    check_limits(c, space)
    space = parse_strategies(c, space, data.get("searcher"), scheduler)
    return _with_points(c, space, data)


REQUIRED = {  # key -> what to give; each is also checked (and explained) where it is parsed
    "kind": "vae or cnn",
    "num_samples": "the number of trials",
    "scheduler.max_t": "the most epochs a trial may train",
    "params": "the searched config keys, e.g. lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}",
}


def _all_required_keys(c: Checker, data: dict[str, Any]) -> None:
    """Several required keys missing are named in one error (one alone gets its own message later)."""
    scheduler = data.get("scheduler") if isinstance(data.get("scheduler"), Mapping) else {}
    fixed = data.get("fixed") if isinstance(data.get("fixed"), Mapping) else {}
    present = {"kind": "kind" in data, "num_samples": "num_samples" in data,
               "scheduler.max_t": "max_t" in scheduler or "epochs" in fixed, "params": bool(data.get("params"))}
    missing = [key for key, there in present.items() if not there]
    if len(missing) > 1:
        raise c.fail(", ".join(missing), "missing; give " + "; ".join(f"{key}: {REQUIRED[key]}" for key in missing))


def _parse_kind(c: Checker, file_kind: Any, kind: str | None) -> str:
    if file_kind is None:
        raise c.fail("kind", f"missing; give kind: {kind or 'vae or cnn'}")
    if file_kind == REPLAY:  # read as the kind it replays (a stored replay sweep is read as that kind too)
        if kind not in (None, REPLAY, REPLAYED_KIND):
            raise c.fail("kind", f"this is a replay space but the sweep is for {kind}; run `fashion-tune sweep replay`")
        return REPLAYED_KIND
    if not isinstance(file_kind, str) or file_kind not in KINDS:
        raise c.fail("kind", f"{show(file_kind)} is not allowed; choose one of: {', '.join(KINDS)}")
    if kind is not None and kind != file_kind:
        raise c.fail("kind", f"this is a {file_kind} space but the sweep is for {kind}; pass a {kind} space file")
    return file_kind


def _parse_replay(c: Checker, data: dict[str, Any]) -> tuple[str | None, float, str, str]:
    """`table:`, `time_scale:`, `lookup:` and `clock:` of a `kind: replay` space (the table is read when the sweep
    starts)."""
    if data.get("kind") != REPLAY:
        for key in ("table", "time_scale", "lookup", "clock"):
            if key in data:
                raise c.fail(key, "only a replay space has it; use kind: replay, or drop it")
        return None, DEFAULT_TIME_SCALE, LOOKUPS[0], CLOCKS[0]
    table = data.get("table")
    if not isinstance(table, str) or not table:
        raise c.fail("table", f"expected the path of recorded curves (runs.jsonl or curves.csv from "
                              f"benchmarks/record_curves.py), got {show(table)}")
    if data.get("fixed"):
        raise c.fail("fixed", "a replay replays what the table recorded, whose fixed values the recording chose; "
                              "drop fixed:")
    scale = data.get("time_scale", DEFAULT_TIME_SCALE)
    if not is_number(scale) or scale < 0:
        raise c.fail("time_scale", f"{show(scale)} is not allowed; use a number >= 0 (0.01: a recorded second "
                                   "sleeps 10 ms; 0: no sleep)")
    lookup = data.get("lookup", LOOKUPS[0])
    if lookup not in LOOKUPS:
        raise c.fail("lookup", f"{show(lookup)} is not allowed; choose nearest (the nearest recorded configuration "
                               "answers) or interpolate (a blend of the nearest few)")
    clock = data.get("clock", CLOCKS[0])
    if clock not in CLOCKS:
        raise c.fail("clock", f"{show(clock)} is not allowed; choose sleep (each report after time_scale x its "
                              "recorded seconds of real sleep) or simulated (reports in recorded-time order, no sleep)")
    return table, float(scale), lookup, clock


def _parse_metric(c: Checker, kind: str, data: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], str, str]:
    """The objectives (if several), the metric the scheduler stops on, and its mode."""
    metrics = get_kind(kind).metrics
    validation = [m for m in metrics if m.startswith("val_")]
    objectives = parse_objectives(c, kind, data.get("objectives"), data.get("metric"))
    metric = data.get("metric", objectives[0][0] if objectives else get_kind(kind).monitor)
    if metric not in validation:
        raise c.fail("metric", f"{show(metric)} is not a validation metric the {kind} trainable reports; "
                               f"choose one of: {', '.join(validation)}")
    mode = data.get("mode", metrics[metric])
    if mode not in ("min", "max"):
        raise c.fail("mode", f"{show(mode)} is not allowed; choose min or max")
    if mode != metrics[metric]:
        raise c.fail("mode", f"{metric} is better when {'lower' if metrics[metric] == 'min' else 'higher'}; "
                             f"use mode: {metrics[metric]}")
    return objectives, metric, mode


def _parse_scheduler(c: Checker, scheduler: dict[str, Any], fixed: dict[str, Any]) -> tuple[str, int, int, float]:
    """The scheduler's type, max_t (= every trial's epochs), grace period and reduction factor."""
    scheduler_type = scheduler.get("type", "asha")
    if scheduler_type not in SCHEDULER_TYPES:
        raise c.fail("scheduler.type", f"{show(scheduler_type)} is not allowed; choose one of: {', '.join(SCHEDULER_TYPES)}")
    c.mapping(scheduler, "scheduler", SCHEDULER_TYPES[scheduler_type])
    max_t = scheduler.get("max_t", fixed.get("epochs"))
    if max_t is None:
        raise c.fail("scheduler.max_t", "missing; give the most epochs a trial may train, an integer >= 1")
    max_t = c.integer(max_t, "scheduler.max_t", 1)
    if "epochs" in fixed and fixed["epochs"] != max_t:
        raise c.fail("fixed.epochs", f"{show(fixed['epochs'])} differs from scheduler.max_t={max_t}; "
                                     "a trial's epochs are ASHA's max_t, so drop fixed.epochs or make them equal")
    grace = c.integer(scheduler.get("grace_period", DEFAULT_GRACE_PERIOD), "scheduler.grace_period", 1)
    if grace > max_t:
        raise c.fail("scheduler.grace_period", f"{grace} is more than max_t={max_t}; use 1..{max_t}")
    rf = scheduler.get("reduction_factor", DEFAULT_REDUCTION_FACTOR)
    if not is_number(rf) or rf <= 1:
        raise c.fail("scheduler.reduction_factor", f"{show(rf)} is not allowed; use a number > 1 (2, 3 or 4 are usual)")
    return scheduler_type, max_t, grace, rf


def _parse_resources(c: Checker, raw: Any) -> tuple[float, float]:
    resources = c.mapping(raw or {}, "resources_per_trial", RESOURCE_KEYS)
    cpu = resources.get("cpu", 1)
    if not is_number(cpu) or cpu <= 0:
        raise c.fail("resources_per_trial.cpu", f"{show(cpu)} is not allowed; use a number > 0")
    gpu = resources.get("gpu", 0)
    if not is_number(gpu) or gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise c.fail("resources_per_trial.gpu", f"{show(gpu)} is not allowed; use 0, a fraction in (0, 1), "
                                                "or a whole number of GPUs")
    return cpu, gpu


def _with_points(c: Checker, space: SearchSpace, data: dict[str, Any]) -> SearchSpace:
    """The space with its checked starting points and its start_from and warm_start sources, unread."""
    points = data.get("points_to_evaluate") or []
    if not isinstance(points, list):
        raise c.fail("points_to_evaluate", f"expected a list of mappings of parameter values, got {show(points)}")
    checked = tuple(check_point(c, space, point, f"points_to_evaluate[{i}]") for i, point in enumerate(points))
    start_from, warm_start = check_sources(c, data)
    return dataclasses.replace(space, points_to_evaluate=checked, start_from=start_from, warm_start=warm_start)


# --- resources ----------------------------------------------------------------------------


def local_capacity() -> tuple[float, float]:
    """CPUs and GPUs this machine can give a local Ray."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPUs for us
        gpus = 0
    return float(cpus), float(gpus)


def check_resources(space: SearchSpace, cpus: float, gpus: float, where: str = "this machine") -> None:
    """A trial's CPUs and GPUs must fit on one node, or Ray would wait for it forever."""
    c = Checker(space.path)
    if space.cpu > cpus:
        raise c.fail("resources_per_trial.cpu", f"{space.cpu:g} CPUs per trial can never be placed: {where} has "
                                                f"{cpus:g}; use cpu <= {cpus:g}")
    if space.gpu > gpus:
        raise c.fail("resources_per_trial.gpu", f"{space.gpu:g} GPUs per trial can never be placed: {where} has "
                                                f"{gpus:g}; use gpu <= {gpus:g}"
                                                + (" (gpu: 0 trains on CPUs)" if gpus == 0 else ""))
