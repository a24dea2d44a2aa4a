"""The validated search space: what `load_space`/`parse_space` (`fashion_tune.spaces.space`) return, and
what the parsers of its sections (`params`, `strategies`, `limits`) build it with and check it by.

It sits above `params` (its parameters) and below the section parsers and the file parser, so none
of them refers back to a module that imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fashion_tune.util.errors import ConfigError
from fashion_tune.training.config import resolve_config
from fashion_tune.spaces.params import Checker, Param, describe_param, is_integer, suggest_all, walk

DEFAULT_TIME_SCALE = 0.01
LOOKUPS = ("nearest", "interpolate")  # kind: replay: how a config off the table is answered
CLOCKS = ("sleep", "simulated")  # kind: replay: real sleeps order the reports, or a simulated clock (search.sim_clock)


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
    # start_from: and warm_start: as written; once resolved (resolve_sources, or a resumed sweep's
    # stored sources), absolute, with what was read there.
    start_from: str | None = None
    start_point: dict[str, Any] | None = None  # the start_from point, first in points_to_evaluate
    warm_start: str | None = None
    warm_trials: tuple[Any, ...] = ()  # strategies.WarmTrial: finished trials of the warm_start sweep
    reuse_actors: bool = True  # Tune's reuse_actors: a finished trial's actor runs the next one
    table: str | None = None  # kind: replay: the recorded curves its trials replay (as written; absolute once resolved)
    time_scale: float = DEFAULT_TIME_SCALE  # kind: replay: real seconds slept per recorded second
    lookup: str = LOOKUPS[0]  # kind: replay: a config off the table replays the nearest recorded one, or a blend
    clock: str = CLOCKS[0]  # kind: replay: what orders the reports of trials running at once
    limits: dict[str, int] = field(default_factory=dict)  # {"params": N}: no shape the space allows is larger

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
        suggest_all(trial, self.params)

    def all_params(self) -> list[Param]:
        """Every parameter, nested ones included, each name once (first definition)."""
        seen: dict[str, Param] = {}
        for param in walk(self.params):
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
                if not is_integer(value) or value < 1:
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


def check_point(c: Checker, space: SearchSpace, point: Any, key: str) -> dict[str, Any]:
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
            raise c.fail(f"{key}.{name}", f"{value!r} is outside its distribution ({describe_param(active[name])})")
    try:
        space.trial_config(point)
    except ConfigError as exc:
        raise c.fail(key, str(exc).removeprefix(f"{space.path}: ")) from None
    return dict(point)
