"""Searched parameters: their distributions, and how a space file's `params:` and points are checked.

Part of reading a search space (`fashion_tune.spaces.space`): every mistake is one `ConfigError` line
that names the file, the key and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution,
                                  check_distribution_compatibility)

from fashion_tune.util.errors import ConfigError
from fashion_tune.training.config import default_config, resolve_config


DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice")
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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
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
        if self.type == "loguniform":
            return FloatDistribution(self.low, self.high, log=True)
        if self.type == "uniform":
            return FloatDistribution(self.low, self.high)
        if self.type == "quniform":
            if all(is_integer(v) for v in (self.low, self.high, self.q)):
                return IntDistribution(self.low, self.high, step=self.q)
            return FloatDistribution(self.low, self.high, step=self.q)
        if self.type == "randint":
            return IntDistribution(self.low, self.high - 1)
        return CategoricalDistribution(self.values)

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial (or Ray's define-by-run wrapper of one) for this parameter."""
        dist = self.distribution()
        if self.type == "choice":
            return trial.suggest_categorical(self.name, self.values)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.name, dist.low, dist.high, step=dist.step)
        return trial.suggest_float(self.name, dist.low, dist.high, log=dist.log, step=dist.step)

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this distribution can produce."""
        if self.type == "choice":
            return any(value == v and type(value) is type(v) or (is_number(value) and is_number(v) and value == v)
                       for v in self.values)
        if not is_number(value) or not self.low <= value <= self.high:
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



def walk(params) -> Iterator[Param]:
    for param in params:
        yield param
        for option in param.options:
            yield from walk(option.params)


def suggest_all(trial, params) -> None:
    for param in params:
        value = param.suggest(trial)
        if param.type == "choice":
            option = param.option(value)
            if option is not None:
                suggest_all(trial, option.params)


def describe_param(param: Param) -> str:
    if param.type == "choice":
        return "choice of " + ", ".join(repr(o.value) for o in param.options)
    extra = f", q {param.q:g}" if param.type == "quniform" else ""
    return f"{param.type} [{param.low:g}, {param.high:g}{')' if param.type == 'randint' else ']'}{extra}"



# --- checking -------------------------------------------------------------------------------


class Checker:
    """Error messages that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {show(value)}")
        if allowed is not None:
            unknown = [k for k in value if k not in allowed]
            if unknown:
                raise self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                                f"unknown key; allowed keys: {', '.join(allowed)}")
        return value

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_integer(value) or value < minimum:
            raise self.fail(key, f"{show(value)} is not allowed; use an integer >= {minimum}")
        return value


def show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def grid_values(param: Param) -> list[Any]:
    """Every value a finite distribution can produce, in order (for the grid searcher)."""
    if param.type == "choice":
        return param.values
    if param.type == "randint":
        return list(range(param.low, param.high))
    steps = int(round((param.high - param.low) / param.q))
    values = [param.low + i * param.q for i in range(steps + 1)]
    return [int(v) if all(is_integer(x) for x in (param.low, param.q)) else v for v in values]



def parse_params(c: Checker, kind: str, raw: Any, key: str, fixed: dict[str, Any],
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


def _parse_param(c: Checker, kind: str, name: str, spec: Any, key: str, fixed: dict[str, Any],
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
                     + f"), e.g. {{type: uniform, low: 0.0, high: 0.5}}; got {show(spec)}")
    dist = spec["type"]
    if dist not in DISTRIBUTIONS:
        raise c.fail(f"{key}.type", f"{show(dist)} is not allowed; choose one of: {', '.join(DISTRIBUTIONS)}")
    c.mapping(spec, key, _PARAM_KEYS[dist])

    if dist == "choice":
        return Param(name=name, type=dist, options=_parse_options(c, kind, name, spec.get("values"), key, fixed, context))
    return _parse_range(c, kind, name, spec, key, fixed, context)


def _parse_options(c: Checker, kind: str, name: str, values: Any, key: str, fixed: dict[str, Any],
                   context: dict[str, Any]) -> tuple[Option, ...]:
    """The options of a choice; an option given as {value, params} carries its own sub-parameters."""
    if not isinstance(values, list) or not values:
        raise c.fail(f"{key}.values", f"{show(values)} is not allowed; give a non-empty list of values to choose from")
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
            raise c.fail(where, f"{show(value)} is not allowed; choices are numbers, strings, true/false or null")
        if any(o.value == value and type(o.value) is type(value) for o in options):
            raise c.fail(where, f"{value!r} is listed twice; list each value once")
        _check_value(c, kind, name, value, where, fixed, context)
        sub_params = parse_params(c, kind, sub, f"{where}.params", fixed, {**context, name: value}) if sub else []
        options.append(Option(value=value, params=tuple(sub_params)))
    return tuple(options)


def _parse_range(c: Checker, kind: str, name: str, spec: dict[str, Any], key: str, fixed: dict[str, Any],
                 context: dict[str, Any]) -> Param:
    """A numeric distribution: its bounds (and step) checked, and its ends accepted by the trainable."""
    dist = spec["type"]
    for bound in ("low", "high") + (("q",) if dist == "quniform" else ()):
        if bound not in spec:
            raise c.fail(f"{key}.{bound}", f"missing; {dist} needs {', '.join(_PARAM_KEYS[dist][1:])}")
        if not is_number(spec[bound]):
            raise c.fail(f"{key}.{bound}", f"{show(spec[bound])} is not a number")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise c.fail(key, f"low={low!r} must be < high={high!r}")
    if dist == "loguniform" and low <= 0:
        raise c.fail(f"{key}.low", f"{low!r} is not allowed; loguniform needs low > 0 (and high > low)")
    if dist == "randint" and not (is_integer(low) and is_integer(high)):
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


def _check_value(c: Checker, kind: str, name: str, value: Any, key: str, fixed: dict[str, Any],
                 context: dict[str, Any], hint: str = "") -> None:
    """A parameter value must be one the trainable accepts (resolve_config decides, by name)."""
    try:
        resolve_config(kind, {**fixed, **context, name: value})
    except ConfigError as exc:
        raise c.fail(key, f"{value!r} is not a valid {name} ({exc}){'; ' + hint if hint else ''}") from None


def check_names(c: Checker, params: list[Param], fixed: dict[str, Any]) -> None:
    """A name is suggested at most once per trial; where options share it, Optuna's rule applies."""
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
