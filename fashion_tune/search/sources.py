"""Reading what a space's `start_from:` and `warm_start:` name: the one place a sweep reads another
experiment's files (or a promoted model's) for its space.

Parsing a space (`fashion_tune.spaces`) leaves both as references; a sweep resolves them once, as
it starts (`resolve_sources`), and stores what it read (`sweep_info`), so `--resume` never reads
them again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fashion_tune.util import yaml_loader
from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import is_uri
from fashion_tune.spaces.params import Checker
from fashion_tune.spaces.search_space import check_point
from fashion_tune.spaces.space import SearchSpace
from fashion_tune.spaces.strategies import with_sources
from fashion_tune.store.promoted import CONFIG_FILE, MANIFEST_FILE
from fashion_tune.store.reading import best_trial
from fashion_tune.search.strategies import warm_trials


def resolve_sources(space: SearchSpace) -> SearchSpace:
    """The space with what its `start_from:` and `warm_start:` name read in: the start point (the first
    point to evaluate) and the warm trials, and the sources as absolute paths (a URI as given); a
    replay space's `table:` read, checked against the space and made absolute.

    This is the one place that reads another experiment's files for a space; a sweep calls it once,
    as it starts. Errors are one line naming the space file and the key.
    """
    c = Checker(space.path)
    point = start_point(c, space, space.start_from) if space.start_from is not None else None
    trials = _warm_trials(c, space, space.warm_start) if space.warm_start is not None else ()
    space = with_sources(space, _absolute(space.start_from), point, _absolute(space.warm_start), trials)
    if space.table is not None:  # a replay space: its table read and checked now, before Ray starts
        from fashion_tune.search.replay import check_space

        space = dataclasses.replace(space, table=check_space(space).path)
    return space


def _absolute(source: str | None) -> str | None:
    if source is None or is_uri(source):
        return source
    return str(Path(source).expanduser().resolve())


def start_point(c: Checker, space: SearchSpace, source: str) -> dict[str, Any]:
    """The searched values of a promoted model (`best_models/<kind>`) or of the best trial of a finished
    sweep (`ray_results/NAME`), checked against this space."""
    kind, config = (_promoted_config(c, Path(source)) if (Path(source) / MANIFEST_FILE).is_file()
                    else _best_trial_config(c, source))
    if kind != space.kind:
        raise c.fail("start_from", f"{source} is a {kind} sweep and this space is for {space.kind}; "
                                   f"start from a {space.kind} sweep")
    point = {p.name: config[p.name] for p in space.all_params() if p.name in config}
    active = space.active_params(point)
    return check_point(c, space, {name: value for name, value in point.items() if name in active}, "start_from")


def _best_trial_config(c: Checker, experiment: str) -> tuple[str, dict[str, Any]]:
    try:
        pick = best_trial(experiment)
    except FashionTuneError as exc:
        raise c.fail("start_from", f"{exc}") from None
    return pick.kind, pick.config


def _promoted_config(c: Checker, model_dir: Path) -> tuple[str, dict[str, Any]]:
    """A promoted model's kind (its manifest) and training config (its config.yaml)."""
    try:
        kind = json.loads((model_dir / MANIFEST_FILE).read_text()).get("kind")
        config = yaml_loader.load((model_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError, yaml_loader.YAMLError) as exc:
        raise c.fail("start_from", f"{model_dir} is not a readable promoted model ({type(exc).__name__}: {exc}); "
                                   "promote it again with --force") from None
    if not isinstance(config, dict) or not isinstance(kind, str):
        raise c.fail("start_from", f"{model_dir / CONFIG_FILE} or {MANIFEST_FILE} is malformed; promote it again with --force")
    return kind, config


def _warm_trials(c: Checker, space: SearchSpace, experiment: str) -> list:
    """Every finished trial of another sweep (`strategies.WarmTrial`s), checked to be trials of this space."""
    try:
        return warm_trials(experiment, space)
    except FashionTuneError as exc:
        raise c.fail("warm_start", str(exc)) from None
