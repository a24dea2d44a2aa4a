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
    start_from: ray_results/NAME  # optional: the best trial of that finished sweep (same kind) is the
                                  # first point, e.g. to train a champion longer in a follow-up sweep
    searcher: {type: tpe}         # tpe | gp | cmaes | random | qmc | nsga2 | grid (SEARCHER_TYPES: options)
    objectives:                   # instead of metric/mode: several; the first is a validation metric and
      - {metric: val_neg_elbo, mode: min}   # the only one schedulers stop on
      - {metric: flops, mode: min}
    warm_start: ray_results/NAME  # tell the searcher every finished trial of that sweep (not run again)

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

Every mistake is one `ConfigError` line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from fashion_tune.config import KINDS, METRICS, MONITOR, default_config, load_yaml, resolve_config
from fashion_tune.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice")
TOP_KEYS = ("kind", "metric", "mode", "num_samples", "max_concurrent_trials", "seed", "scheduler",
            "resources_per_trial", "fixed", "params", "points_to_evaluate", "start_from",
            "searcher", "objectives", "warm_start")
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
    "tpe": ("n_startup_trials", "multivariate"),
    "gp": ("n_startup_trials",),
    "cmaes": ("n_startup_trials", "sigma0", "popsize"),
    "random": (),
    "qmc": ("qmc_type", "scramble"),
    "nsga2": ("population_size",),
    "grid": (),
}
# What PBT may change in a running trial: optimizer settings and regularisation, never the architecture.
MUTABLE = ("lr", "weight_decay", "dropout", "beta_start", "beta_end")
RESOURCE_KEYS = ("cpu", "gpu")
# Keys that define the data every trial shares, or where it runs: fixed per sweep, never searched.
NOT_SEARCHABLE = {
    "epochs": "it is ASHA's max_t; set scheduler.max_t",
    "subset": "the data split goes into the object store once; set it in fixed",
    "val_subset": "the data split goes into the object store once; set it in fixed",
    "val_size": "the data split goes into the object store once; set it in fixed",
    "split_seed": "the data split goes into the object store once; set it in fixed",
    "seed": "it picks the data subset every trial shares; set it in fixed",
    "device": "Ray places trials; set resources_per_trial (and fixed.device) instead",
}
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_GRACE_PERIOD = 1
DEFAULT_REDUCTION_FACTOR = 2


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Option:
    """One value of a choice, with the parameters that only matter when it is chosen."""

    value: Any
    params: tuple["Param", ...] = ()


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    q: float | int | None = None
    options: tuple[Option, ...] = ()

    @property
    def values(self) -> list[Any]:
        return [option.value for option in self.options]

    def distribution(self):
        """The equivalent Optuna distribution (randint's high is exclusive, as in Ray Tune)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "loguniform":
            return FloatDistribution(self.low, self.high, log=True)
        if self.type == "uniform":
            return FloatDistribution(self.low, self.high)
        if self.type == "quniform":
            if all(_integer(v) for v in (self.low, self.high, self.q)):
                return IntDistribution(self.low, self.high, step=self.q)
            return FloatDistribution(self.low, self.high, step=self.q)
        if self.type == "randint":
            return IntDistribution(self.low, self.high - 1)
        return CategoricalDistribution(self.values)

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial (or Ray's define-by-run wrapper of one) for this parameter."""
        from optuna.distributions import IntDistribution

        dist = self.distribution()
        if self.type == "choice":
            return trial.suggest_categorical(self.name, self.values)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.name, dist.low, dist.high, step=dist.step)
        return trial.suggest_float(self.name, dist.low, dist.high, log=dist.log, step=dist.step)

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this distribution can produce."""
        if self.type == "choice":
            return any(value == v and type(value) is type(v) or (_number(value) and _number(v) and value == v)
                       for v in self.values)
        if not _number(value) or not self.low <= value <= self.high:
            return False
        if self.type == "randint":
            return value == int(value) and value < self.high
        if self.type == "quniform":
            steps = (value - self.low) / self.q
            return abs(steps - round(steps)) < 1e-9
        return True

    def option(self, value: Any) -> Option | None:
        for option in self.options:
            if option.value == value:
                return option
        return None


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space file: sweep settings plus the distributions to search."""

    path: Path
    kind: str
    metric: str
    mode: str
    num_samples: int
    max_concurrent_trials: int
    seed: int
    max_t: int
    grace_period: int
    reduction_factor: float
    cpu: float
    gpu: float
    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    searcher: str = "tpe"  # an Optuna sampler, see SEARCHER_TYPES
    searcher_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "asha"  # a Ray scheduler, see SCHEDULER_TYPES
    scheduler_options: dict[str, Any] = field(default_factory=dict)  # the type's keys besides max_t
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) pairs; empty: the one metric
    warm_start: str | None = None
    warm_trials: tuple[Any, ...] = ()  # strategies.WarmTrial: finished trials of the warm_start sweep

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # --- what the sweep uses ------------------------------------------------------------

    def base_config(self) -> dict[str, Any]:
        """The config values every trial shares: `fixed` plus `epochs` = ASHA's max_t."""
        return {**self.fixed, "epochs": self.max_t}

    def data_config(self) -> dict[str, Any]:
        """The resolved base config, which says which data split every trial trains on."""
        return resolve_config(self.kind, self.base_config())

    def suggest(self, trial) -> None:
        """Optuna define-by-run search space: asks `trial` for every parameter that applies."""
        _suggest_all(trial, self.params)

    def all_params(self) -> list[Param]:
        """Every parameter, nested ones included, each name once (first definition)."""
        seen: dict[str, Param] = {}
        for param in _walk(self.params):
            seen.setdefault(param.name, param)
        return list(seen.values())

    def param_names(self) -> list[str]:
        return [param.name for param in self.all_params()]

    def active_params(self, config: Mapping[str, Any]) -> dict[str, Param]:
        """The parameters that apply to a trial's config (choices pick their options' sub-params)."""
        active: dict[str, Param] = {}

        def visit(params):
            for param in params:
                active[param.name] = param
                if param.type == "choice" and param.name in config:
                    option = param.option(config[param.name])
                    if option is not None:
                        visit(option.params)

        visit(self.params)
        return active

    def trial_config(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved training config of a trial with the `sampled` parameter values."""
        return resolve_config(self.kind, {**self.base_config(), **sampled}, source=str(self.path))

    def with_overrides(self, num_samples: int | None = None, max_concurrent_trials: int | None = None,
                       seed: int | None = None) -> "SearchSpace":
        """The same space with command-line overrides of its sweep settings, checked like the file's."""
        changes = {}
        for key, flag, value in (("num_samples", "--num-samples", num_samples),
                                 ("max_concurrent_trials", "--max-concurrent", max_concurrent_trials)):
            if value is not None:
                if not _integer(value) or value < 1:
                    raise ConfigError(f"{flag}={value!r} is not allowed; use an integer >= 1")
                changes[key] = value
        if seed is not None:
            changes["seed"] = seed
        return dataclasses.replace(self, **changes)

    def strategy_line(self) -> str:
        """The searcher and the scheduler with its settings, in one line."""
        options = {"max_t": self.max_t, **self.scheduler_options}
        if self.scheduler == "asha":
            options.update(grace_period=self.grace_period, reduction_factor=self.reduction_factor)
        shown = ", ".join(f"{k} {'/'.join(v) if isinstance(v, (list, tuple)) else v}" for k, v in options.items())
        return f"searcher {self.searcher}, scheduler {self.scheduler}: {shown}"

    def summary(self) -> str:
        """A few lines describing the sweep, for --dry-run and logs."""
        lines = [
            f"{self.path}: {self.kind} sweep, {self.num_samples} trials ({self.max_concurrent_trials} at a time), "
            f"{self.mode} {self.metric}",
            f"  {self.strategy_line()}",
            f"  per trial: {self.cpu:g} CPU, {self.gpu:g} GPU; {self.searcher} seed {self.seed}; "
            f"{len(self.points_to_evaluate)} starting point(s)"
            + (f"; warm start: {len(self.warm_trials)} trials of {self.warm_start}" if self.warm_start else ""),
        ]
        if self.multi_objective:
            lines.insert(1, "  objectives: " + ", ".join(f"{mode} {metric}" for metric, mode in self.objectives)
                         + f" (the scheduler stops on {self.metric} only)")

        def describe(params, indent):
            for param in params:
                lines.append(f"{indent}{param.name}: {_describe(param)}")
                for option in param.options:
                    if option.params:
                        lines.append(f"{indent}  when {param.name} = {option.value!r}:")
                        describe(option.params, indent + "    ")

        describe(self.params, "  ")
        return "\n".join(lines)


def _walk(params) -> Iterator[Param]:
    for param in params:
        yield param
        for option in param.options:
            yield from _walk(option.params)


def _suggest_all(trial, params) -> None:
    for param in params:
        value = param.suggest(trial)
        if param.type == "choice":
            option = param.option(value)
            if option is not None:
                _suggest_all(trial, option.params)


def _describe(param: Param) -> str:
    if param.type == "choice":
        return "choice of " + ", ".join(repr(o.value) for o in param.options)
    extra = f", q {param.q:g}" if param.type == "quniform" else ""
    return f"{param.type} [{param.low:g}, {param.high:g}{')' if param.type == 'randint' else ']'}{extra}"


# --- parsing -------------------------------------------------------------------------------


class _Checker:
    """Error messages that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_show(value)}")
        if allowed is not None:
            unknown = [k for k in value if k not in allowed]
            if unknown:
                raise self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                                f"unknown key; allowed keys: {', '.join(allowed)}")
        return value

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _integer(value) or value < minimum:
            raise self.fail(key, f"{_show(value)} is not allowed; use an integer >= {minimum}")
        return value


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def load_space(path: str | Path, kind: str | None = None) -> SearchSpace:
    """Read and validate a search space file; `kind`, when given, must match the file's."""
    path = Path(path)
    data = load_yaml(path)
    return parse_space(data, path, kind=kind)


def parse_space(data: Mapping[str, Any], path: str | Path = "<space>", kind: str | None = None) -> SearchSpace:
    """Validate a search space mapping (as read from `path`) and build a SearchSpace."""
    path = Path(path)
    c = _Checker(path)
    if not isinstance(data, Mapping):
        raise c.fail("(top level)", f"expected a mapping of sweep settings, got {_show(data)}")
    data = c.mapping(dict(data), "", TOP_KEYS)

    file_kind = data.get("kind")
    if file_kind not in KINDS:
        raise c.fail("kind", f"{_show(file_kind)} is not allowed; choose one of: {', '.join(KINDS)}")
    if kind is not None and kind != file_kind:
        raise c.fail("kind", f"this is a {file_kind} space but the sweep is for {kind}; pass a {kind} space file")
    kind = file_kind

    validation = [m for m in METRICS[kind] if m.startswith("val_")]
    objectives = _parse_objectives(c, kind, data.get("objectives"), data.get("metric"))
    metric = data.get("metric", objectives[0][0] if objectives else MONITOR[kind][0])
    if metric not in validation:
        raise c.fail("metric", f"{_show(metric)} is not a validation metric the {kind} trainable reports; "
                               f"choose one of: {', '.join(validation)}")
    mode = data.get("mode", METRICS[kind][metric])
    if mode not in ("min", "max"):
        raise c.fail("mode", f"{_show(mode)} is not allowed; choose min or max")
    if mode != METRICS[kind][metric]:
        raise c.fail("mode", f"{metric} is better when {'lower' if METRICS[kind][metric] == 'min' else 'higher'}; "
                             f"use mode: {METRICS[kind][metric]}")

    if "num_samples" not in data:
        raise c.fail("num_samples", "missing; give the number of trials, an integer >= 1")
    num_samples = c.integer(data["num_samples"], "num_samples", 1)
    max_concurrent = c.integer(data.get("max_concurrent_trials", DEFAULT_MAX_CONCURRENT), "max_concurrent_trials", 1)
    seed = c.integer(data.get("seed", 0), "seed", 0)

    fixed = dict(c.mapping(data.get("fixed") or {}, "fixed"))
    scheduler = c.mapping(data.get("scheduler") or {}, "scheduler")
    scheduler_type = scheduler.get("type", "asha")
    if scheduler_type not in SCHEDULER_TYPES:
        raise c.fail("scheduler.type", f"{_show(scheduler_type)} is not allowed; choose one of: {', '.join(SCHEDULER_TYPES)}")
    c.mapping(scheduler, "scheduler", SCHEDULER_TYPES[scheduler_type])
    max_t = scheduler.get("max_t", fixed.get("epochs"))
    if max_t is None:
        raise c.fail("scheduler.max_t", "missing; give the most epochs a trial may train, an integer >= 1")
    max_t = c.integer(max_t, "scheduler.max_t", 1)
    if "epochs" in fixed and fixed["epochs"] != max_t:
        raise c.fail("fixed.epochs", f"{_show(fixed['epochs'])} differs from scheduler.max_t={max_t}; "
                                     "a trial's epochs are ASHA's max_t, so drop fixed.epochs or make them equal")
    fixed.pop("epochs", None)
    grace = c.integer(scheduler.get("grace_period", DEFAULT_GRACE_PERIOD), "scheduler.grace_period", 1)
    if grace > max_t:
        raise c.fail("scheduler.grace_period", f"{grace} is more than max_t={max_t}; use 1..{max_t}")
    rf = scheduler.get("reduction_factor", DEFAULT_REDUCTION_FACTOR)
    if not _number(rf) or rf <= 1:
        raise c.fail("scheduler.reduction_factor", f"{_show(rf)} is not allowed; use a number > 1 (2, 3 or 4 are usual)")

    resources = c.mapping(data.get("resources_per_trial") or {}, "resources_per_trial", RESOURCE_KEYS)
    cpu = resources.get("cpu", 1)
    if not _number(cpu) or cpu <= 0:
        raise c.fail("resources_per_trial.cpu", f"{_show(cpu)} is not allowed; use a number > 0")
    gpu = resources.get("gpu", 0)
    if not _number(gpu) or gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise c.fail("resources_per_trial.gpu", f"{_show(gpu)} is not allowed; use 0, a fraction in (0, 1), "
                                                "or a whole number of GPUs")

    try:
        resolve_config(kind, {**fixed, "epochs": max_t})
    except ConfigError as exc:
        raise c.fail("fixed", str(exc)) from None

    if "params" not in data or not data["params"]:
        raise c.fail("params", "missing or empty; give at least one searched config key, e.g. lr: "
                               "{type: loguniform, low: 1.0e-4, high: 1.0e-2}")
    params = _parse_params(c, kind, data["params"], "params", fixed, {})
    _check_names(c, params, fixed)
    if any(p.name == "binarize" for p in params) and metric != "val_neg_elbo_bin":
        # Grey-level and binarized training are only comparable on one likelihood: the binarized one.
        raise c.fail("params.binarize", f"searching binarize needs metric: val_neg_elbo_bin (the negative ELBO on "
                                        f"binarized validation images), not {metric}; or fix binarize under fixed:")

    space = SearchSpace(
        path=path, kind=kind, metric=metric, mode=mode, num_samples=num_samples,
        max_concurrent_trials=max_concurrent, seed=seed, max_t=max_t, grace_period=grace,
        reduction_factor=float(rf) if not _integer(rf) else rf, cpu=float(cpu), gpu=float(gpu),
        fixed=fixed, params=tuple(params), scheduler=scheduler_type, objectives=objectives,
    )
    space = _parse_strategies(c, space, data.get("searcher"), scheduler)
    points = data.get("points_to_evaluate") or []
    if not isinstance(points, list):
        raise c.fail("points_to_evaluate", f"expected a list of mappings of parameter values, got {_show(points)}")
    checked = tuple(_check_point(c, space, point, f"points_to_evaluate[{i}]") for i, point in enumerate(points))
    if data.get("start_from") is not None:
        checked = (_start_point(c, space, data["start_from"]), *checked)
    space = dataclasses.replace(space, points_to_evaluate=checked)
    if data.get("warm_start") is not None:
        space = _warm_start(c, space, data["warm_start"])
    return space


def _start_point(c: _Checker, space: SearchSpace, experiment: Any) -> dict[str, Any]:
    """The searched values of the best trial of a finished sweep, checked against this space."""
    from fashion_tune.analysis import best_trial  # reads results with pandas: only when asked
    from fashion_tune.errors import FashionTuneError

    if not isinstance(experiment, str) or not experiment:
        raise c.fail("start_from", f"expected the directory of a finished sweep, e.g. ray_results/NAME, got {_show(experiment)}")
    try:
        pick = best_trial(experiment)
    except FashionTuneError as exc:
        raise c.fail("start_from", f"{exc}") from None
    if pick.kind != space.kind:
        raise c.fail("start_from", f"{experiment} is a {pick.kind} sweep and this space is for {space.kind}; "
                                   f"start from a {space.kind} sweep")
    point = {p.name: pick.config[p.name] for p in space.all_params() if p.name in pick.config}
    active = space.active_params(point)
    return _check_point(c, space, {name: value for name, value in point.items() if name in active}, "start_from")


# --- strategies: objectives, searcher, scheduler, warm start -----------------------------------


def _parse_objectives(c: _Checker, kind: str, raw: Any, metric: Any) -> tuple[tuple[str, str], ...]:
    """`objectives: [{metric, mode}, ...]`: the first is a validation metric; it drives the scheduler."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) < 2:
        raise c.fail("objectives", f"expected a list of at least two {{metric: M, mode: min|max}}, got {_show(raw)}; "
                                   "for one objective use metric: and mode:")
    objectives = []
    for i, item in enumerate(raw):
        key = f"objectives[{i}]"
        item = c.mapping(item, key, ("metric", "mode"))
        name = item.get("metric")
        if name not in METRICS[kind]:
            raise c.fail(f"{key}.metric", f"{_show(name)} is not a metric the {kind} trainable reports; "
                                          f"choose one of: {', '.join(METRICS[kind])}")
        if any(name == other for other, _ in objectives):
            raise c.fail(f"{key}.metric", f"{name} is listed twice; list each objective once")
        mode = item.get("mode", METRICS[kind][name])
        if mode != METRICS[kind][name]:
            raise c.fail(f"{key}.mode", f"{name} is better when {'lower' if METRICS[kind][name] == 'min' else 'higher'}; "
                                        f"use mode: {METRICS[kind][name]}")
        objectives.append((name, mode))
    if not objectives[0][0].startswith("val_"):
        raise c.fail("objectives[0].metric", f"{objectives[0][0]} is not a validation metric; the first objective "
                                             "is the one the scheduler stops on and checkpoints are ranked by, so put "
                                             "e.g. val_acc or val_neg_elbo first")
    if metric is not None and metric != objectives[0][0]:
        raise c.fail("metric", f"{metric} differs from the first objective {objectives[0][0]}; drop metric: "
                               "(the first objective is the metric)")
    return tuple(objectives)


def _parse_strategies(c: _Checker, space: SearchSpace, searcher: Any, scheduler: dict[str, Any]) -> SearchSpace:
    """The searcher's and the scheduler's options, checked against the space and each other."""
    searcher = c.mapping(searcher if searcher is not None else {}, "searcher")
    kind = searcher.get("type", "tpe")
    if kind not in SEARCHER_TYPES:
        raise c.fail("searcher.type", f"{_show(kind)} is not allowed; choose one of: {', '.join(SEARCHER_TYPES)}")
    options = {k: v for k, v in c.mapping(searcher, "searcher", ("type", *SEARCHER_TYPES[kind])).items() if k != "type"}
    for name in ("n_startup_trials", "popsize", "population_size"):
        if name in options:
            options[name] = c.integer(options[name], f"searcher.{name}", 2 if name != "n_startup_trials" else 0)
    if "sigma0" in options and (not _number(options["sigma0"]) or options["sigma0"] <= 0):
        raise c.fail("searcher.sigma0", f"{_show(options['sigma0'])} is not allowed; use a number > 0")
    if "qmc_type" in options and options["qmc_type"] not in ("sobol", "halton"):
        raise c.fail("searcher.qmc_type", f"{_show(options['qmc_type'])} is not allowed; choose sobol or halton")
    for name in ("multivariate", "scramble"):
        if name in options and not isinstance(options[name], bool):
            raise c.fail(f"searcher.{name}", f"{_show(options[name])} must be true or false")
    _check_searcher(c, space, kind)
    extra = _scheduler_options(c, space, scheduler)
    return dataclasses.replace(space, searcher=kind, searcher_options=options, scheduler_options=extra)


def _check_searcher(c: _Checker, space: SearchSpace, kind: str) -> None:
    """Refuse a sampler that cannot handle this space or these objectives."""
    nested = [p.name for p in _walk(space.params) if not any(p is top for top in space.params)]
    if kind == "cmaes":
        choices = [p.name for p in _walk(space.params) if p.type == "choice"]
        if choices:
            raise c.fail(f"params.{choices[0]}", "searcher cmaes cannot sample choice parameters (CMA-ES moves "
                                                 "through continuous and integer ranges); use searcher: {type: gp} "
                                                 "or tpe, or make it a randint/quniform range")
        if space.multi_objective:
            raise c.fail("searcher.type", "cmaes optimizes a single objective; with objectives: use nsga2, tpe or gp")
    if kind == "grid":
        continuous = [p.name for p in _walk(space.params) if p.type in ("uniform", "loguniform")]
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


def grid_values(param: Param) -> list[Any]:
    """Every value a finite distribution can produce, in order (for the grid searcher)."""
    if param.type == "choice":
        return param.values
    if param.type == "randint":
        return list(range(param.low, param.high))
    steps = int(round((param.high - param.low) / param.q))
    values = [param.low + i * param.q for i in range(steps + 1)]
    return [int(v) if all(_integer(x) for x in (param.low, param.q)) else v for v in values]


def _scheduler_options(c: _Checker, space: SearchSpace, raw: dict[str, Any]) -> dict[str, Any]:
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
        if not _number(value) or not 0 < value <= top:
            raise c.fail(f"scheduler.{name}", f"{_show(value)} is not allowed; use a number in (0, {top:g}]")
        options[name] = float(value)
    if space.num_samples < 2:
        raise c.fail("num_samples", "pbt needs a population: use num_samples >= 2 (4 or more is usual)")
    return options


def _mutable(c: _Checker, space: SearchSpace, raw: Any) -> tuple[str, ...]:
    """PBT's `mutate:` list: searched top-level parameters the trainable can change mid-run."""
    allowed = [name for name in MUTABLE if name in default_config(space.kind)]
    if not isinstance(raw, list) or not raw:
        raise c.fail("scheduler.mutate", f"pbt needs the parameters it may change in a running trial, e.g. "
                                         f"mutate: [lr, weight_decay]; allowed: {', '.join(allowed)}")
    top = {p.name: p for p in space.params}
    for name in raw:
        if name not in allowed:
            raise c.fail("scheduler.mutate", f"{_show(name)} cannot change in a running trial (the model or the data "
                                             f"would differ from its checkpoint); allowed: {', '.join(allowed)}")
        if name not in top:
            raise c.fail("scheduler.mutate", f"{name} is not a top-level searched parameter; add it under params: "
                                             "(its distribution bounds the mutations)")
    return tuple(dict.fromkeys(raw))


def _warm_start(c: _Checker, space: SearchSpace, experiment: Any) -> SearchSpace:
    """Seed the searcher with every finished trial of another sweep; its configs are not run again."""
    from fashion_tune.errors import FashionTuneError
    from fashion_tune.strategies import warm_trials  # reads results with pandas: only when asked

    if not isinstance(experiment, str) or not experiment:
        raise c.fail("warm_start", f"expected the directory of a finished sweep, e.g. ray_results/NAME, got {_show(experiment)}")
    try:
        trials = warm_trials(experiment, space)
    except FashionTuneError as exc:
        raise c.fail("warm_start", str(exc)) from None
    known = [t.params for t in trials]
    points = tuple(p for p in space.points_to_evaluate if p not in known)  # already evaluated there
    return dataclasses.replace(space, warm_start=experiment, warm_trials=tuple(trials), points_to_evaluate=points)


def _parse_params(c: _Checker, kind: str, raw: Any, key: str, fixed: dict[str, Any],
                  context: dict[str, Any]) -> list[Param]:
    raw = c.mapping(raw, key)
    return [_parse_param(c, kind, str(name), spec, f"{key}.{name}", fixed, context) for name, spec in raw.items()]


_PARAM_KEYS = {
    "loguniform": ("type", "low", "high"),
    "uniform": ("type", "low", "high"),
    "quniform": ("type", "low", "high", "q"),
    "randint": ("type", "low", "high"),
    "choice": ("type", "values"),
}


def _parse_param(c: _Checker, kind: str, name: str, spec: Any, key: str, fixed: dict[str, Any],
                 context: dict[str, Any]) -> Param:
    if name in NOT_SEARCHABLE:
        raise c.fail(key, f"{name} cannot be searched: {NOT_SEARCHABLE[name]}")
    if name not in default_config(kind):
        allowed = sorted(set(default_config(kind)) - set(NOT_SEARCHABLE))
        raise c.fail(key, f"{name!r} is not a {kind} config key; allowed: {', '.join(allowed)}")
    if name in fixed:
        raise c.fail(key, f"{name} is also in fixed; keep it in one place")
    if not isinstance(spec, dict) or "type" not in spec:
        raise c.fail(key, "expected a mapping with `type:` (one of: " + ", ".join(DISTRIBUTIONS)
                     + f"), e.g. {{type: uniform, low: 0.0, high: 0.5}}; got {_show(spec)}")
    dist = spec["type"]
    if dist not in DISTRIBUTIONS:
        raise c.fail(f"{key}.type", f"{_show(dist)} is not allowed; choose one of: {', '.join(DISTRIBUTIONS)}")
    c.mapping(spec, key, _PARAM_KEYS[dist])

    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise c.fail(f"{key}.values", f"{_show(values)} is not allowed; give a non-empty list of values to choose from")
        options = []
        for i, item in enumerate(values):
            where = f"{key}.values[{i}]"
            if isinstance(item, dict):
                c.mapping(item, where, ("value", "params"))
                if "value" not in item:
                    raise c.fail(where, "an option with sub-parameters needs `value:` and `params:`")
                value, sub = item["value"], item.get("params") or {}
            else:
                value, sub = item, {}
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise c.fail(where, f"{_show(value)} is not allowed; choices are numbers, strings, true/false or null")
            if any(o.value == value and type(o.value) is type(value) for o in options):
                raise c.fail(where, f"{value!r} is listed twice; list each value once")
            _check_value(c, kind, name, value, where, fixed, context)
            sub_params = _parse_params(c, kind, sub, f"{where}.params", fixed, {**context, name: value}) if sub else []
            options.append(Option(value=value, params=tuple(sub_params)))
        return Param(name=name, type=dist, options=tuple(options))

    for bound in ("low", "high") + (("q",) if dist == "quniform" else ()):
        if bound not in spec:
            raise c.fail(f"{key}.{bound}", f"missing; {dist} needs {', '.join(_PARAM_KEYS[dist][1:])}")
        if not _number(spec[bound]):
            raise c.fail(f"{key}.{bound}", f"{_show(spec[bound])} is not a number")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise c.fail(key, f"low={low!r} must be < high={high!r}")
    if dist == "loguniform" and low <= 0:
        raise c.fail(f"{key}.low", f"{low!r} is not allowed; loguniform needs low > 0 (and high > low)")
    if dist == "randint" and not (_integer(low) and _integer(high)):
        raise c.fail(key, f"randint needs integer low and high (high is exclusive), got low={low!r}, high={high!r}")
    q = spec.get("q")
    if dist == "quniform":
        if q <= 0:
            raise c.fail(f"{key}.q", f"{q!r} is not allowed; use a step > 0")
        steps = (high - low) / q
        if abs(steps - round(steps)) > 1e-9:
            raise c.fail(key, f"high - low = {high - low!r} is not a multiple of q={q!r}; "
                              f"use a high of low + k*q, e.g. {low + math.floor(steps) * q!r}")
    param = Param(name=name, type=dist, low=low, high=high, q=q)
    probes = [low, high - 1 if dist == "randint" else high]
    if dist in ("uniform", "loguniform"):
        probes.append(low + (high - low) * 0.37)  # a non-whole value: integer keys reject it
    for value in probes:
        _check_value(c, kind, name, value, key, fixed, context,
                     hint="integer keys need randint, quniform with whole numbers, or choice"
                     if dist in ("uniform", "loguniform") else "")
    return param


def _check_value(c: _Checker, kind: str, name: str, value: Any, key: str, fixed: dict[str, Any],
                 context: dict[str, Any], hint: str = "") -> None:
    """A parameter value must be one the trainable accepts (resolve_config decides, by name)."""
    try:
        resolve_config(kind, {**fixed, **context, name: value})
    except ConfigError as exc:
        raise c.fail(key, f"{value!r} is not a valid {name} ({exc}){'; ' + hint if hint else ''}") from None


def _check_names(c: _Checker, params: list[Param], fixed: dict[str, Any]) -> None:
    """A name is suggested at most once per trial; where options share it, Optuna's rule applies."""
    from optuna.distributions import check_distribution_compatibility

    places: list[tuple[Param, str, dict[str, int]]] = []  # (param, its key, the options it needs)

    def visit(params, prefix, needs):
        for param in params:
            places.append((param, f"{prefix}.{param.name}", needs))
            for i, option in enumerate(param.options):
                visit(option.params, f"{prefix}.{param.name}.values[{i}].params", {**needs, param.name: i})

    visit(params, "params", {})
    for j, (param, key, needs) in enumerate(places):
        for other, other_key, other_needs in places[:j]:
            if other.name != param.name:
                continue
            exclusive = any(name in other_needs and other_needs[name] != i for name, i in needs.items())
            if not exclusive:
                raise c.fail(key, f"{param.name} is already searched at {other_key} for the same trials; "
                                  "a name may repeat only in different options of one choice")
            try:
                check_distribution_compatibility(other.distribution(), param.distribution())
            except ValueError:
                raise c.fail(key, f"{param.name} is defined at {other_key} with another distribution type or "
                                  f"choices; use the same type ({other.type})") from None


def _check_point(c: _Checker, space: SearchSpace, point: Any, key: str) -> dict[str, Any]:
    point = c.mapping(point, key)
    active = space.active_params(point)
    for name, value in point.items():
        if name not in active:
            known = [p.name for p in space.all_params()]
            if name in known:
                raise c.fail(f"{key}.{name}", "does not apply with the choices this point makes; "
                                              "drop it or change the choice it belongs to")
            raise c.fail(f"{key}.{name}", f"not a searched parameter; allowed: {', '.join(known)}")
        if not active[name].contains(value):
            raise c.fail(f"{key}.{name}", f"{value!r} is outside its distribution ({_describe(active[name])})")
    try:
        space.trial_config(point)
    except ConfigError as exc:
        raise c.fail(key, str(exc).removeprefix(f"{space.path}: ")) from None
    return dict(point)


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
    c = _Checker(space.path)
    if space.cpu > cpus:
        raise c.fail("resources_per_trial.cpu", f"{space.cpu:g} CPUs per trial can never be placed: {where} has "
                                                f"{cpus:g}; use cpu <= {cpus:g}")
    if space.gpu > gpus:
        raise c.fail("resources_per_trial.gpu", f"{space.gpu:g} GPUs per trial can never be placed: {where} has "
                                                f"{gpus:g}; use gpu <= {gpus:g}"
                                                + (" (gpu: 0 trains on CPUs)" if gpus == 0 else ""))
