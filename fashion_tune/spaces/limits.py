"""A search space's cost limits: `limits: {params: 1000000}` caps every model a trial of the sweep may build.

The limit is enforced by the space itself, when the file is read: every model shape the space can
give a trial is listed and sized, and a space that allows one shape over a limit is refused, with
that shape named. So no trial, starting point or warm-started trial can exceed it, whatever the
searcher proposes. A space keeps a wide search within the limit by nesting: a choice whose options
carry their own ranges (`depth` options, each with the `width` values that fit).

Only the keys of the model's config (`CNNConfig`'s arch, width, depth, ...) change its size. They are
listed the way trials get them: each choice with the sub-parameters of the option chosen, a randint
or quniform at each of its values, a continuous range at both ends; `fixed` gives the rest. Each
shape is counted by `parameter_count` (the network built on the meta device: milliseconds, no memory).
"""

from __future__ import annotations

from typing import Any, Iterator

from fashion_tune.util.errors import ConfigError
from fashion_tune.training.config import resolve_config
from fashion_tune.training.kinds import get_kind
from fashion_tune.training.loop import parameter_count
from fashion_tune.spaces.params import Checker, Param, grid_values, show
from fashion_tune.spaces.search_space import SearchSpace


LIMIT_KEYS = {"params": "trainable parameters"}
MAX_SHAPES = 5_000  # shapes a space may list; beyond this a file takes too long to read


def parse_limits(c: Checker, raw: Any) -> dict[str, int]:
    """The `limits:` mapping, {name: a positive integer}."""
    limits = c.mapping(raw if raw is not None else {}, "limits", tuple(LIMIT_KEYS))
    return {key: c.integer(value, f"limits.{key}", 1) for key, value in limits.items()}


def model_shapes(kind: str, params: tuple[Param, ...], c: Checker | None = None) -> list[dict[str, Any]]:
    """Every distinct assignment of the model-config keys a trial of these parameters can get."""
    model_keys = {name for name in get_kind(kind).model_config.__dataclass_fields__ if name != "num_classes"}
    shapes: dict[str, dict[str, Any]] = {}
    walked = 0

    def expand(todo: tuple[Param, ...]) -> Iterator[dict[str, Any]]:
        if not todo:
            yield {}
            return
        first, rest = todo[0], todo[1:]
        shaping = first.name in model_keys
        for value, sub in _values(first, shaping):
            for tail in expand(sub + rest):
                yield {first.name: value, **tail} if shaping else tail

    for shape in expand(tuple(params)):
        walked += 1
        if walked > 20 * MAX_SHAPES:
            raise (c or Checker("<space>")).fail("limits", f"the space has more than {20 * MAX_SHAPES:,} combinations of "
                                                           "choices to size; search fewer nested choices")
        shapes.setdefault(repr(sorted(shape.items())), shape)
        if len(shapes) > MAX_SHAPES:
            raise (c or Checker("<space>")).fail("limits", f"the space allows more than {MAX_SHAPES:,} model shapes, "
                                                           "too many to size; search fewer values of the model's keys")
    return list(shapes.values())


def _values(param: Param, shaping: bool) -> list[tuple[Any, tuple[Param, ...]]]:
    """(value, the sub-parameters it brings) for each value of `param` that can change a model's size."""
    if param.type == "choice":
        if not shaping and not any(option.params for option in param.options):
            return [(None, ())]
        return [(option.value, option.params) for option in param.options]
    if not shaping:
        return [(None, ())]
    if param.type in ("randint", "quniform"):
        return [(value, ()) for value in grid_values(param)]
    return [(param.low, ()), (param.high, ())]


def largest_shapes(space: SearchSpace) -> dict[str, tuple[int, dict[str, Any]]]:
    """{limit: (the largest cost of a shape the space allows, that shape)}."""
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    if not space.limits:
        return found
    c = Checker(space.path)
    for shape in model_shapes(space.kind, space.params, c):
        try:
            config = resolve_config(space.kind, {**space.base_config(), **shape})
        except ConfigError as exc:
            raise c.fail("params", f"{describe_shape(shape)}: {exc}") from None
        cost = {"params": parameter_count(space.kind, config)}
        for key in space.limits:
            if key not in found or cost[key] > found[key][0]:
                found[key] = (cost[key], shape)
    return found


def check_limits(c: Checker, space: SearchSpace) -> None:
    """Refuse a space that allows a model over one of its limits, naming the largest such shape."""
    for key, (cost, shape) in largest_shapes(space).items():
        limit = space.limits[key]
        if cost > limit:
            raise c.fail(f"limits.{key}", f"the space allows {describe_shape(shape)} with {cost:,} {LIMIT_KEYS[key]}, "
                                          f"over the limit of {limit:,}; narrow the ranges of its model keys, or nest "
                                          "them under a choice (e.g. width under each depth) so that every option fits")


def describe_shape(shape: dict[str, Any]) -> str:
    return ", ".join(f"{key}={show(value)}" for key, value in shape.items()) or "the fixed model"
