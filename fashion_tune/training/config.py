"""Training configs as users write them: a flat dict of settings, checked against the typed fields.

A config is a flat dict (what Ray Tune samples and what YAML files hold). Its keys are the fields
of the kind's typed training settings (`fashion_tune.training.settings`) plus those of the model's
config dataclass (`VAEConfig`, `CNNConfig`), so every default lives in one place.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from fashion_tune.util import yaml_loader
from fashion_tune.util.errors import ConfigError
from fashion_tune.training.kinds import get_kind
from fashion_tune.training.settings import TrainingConfig, coerce, field_types

def check_kind(kind: str) -> str:
    """Return `kind` if it names a model kind, else raise ConfigError."""
    return get_kind(kind).name


def _fields(kind: str) -> dict[str, Any]:
    """{key: type} of every config key of `kind`: shared training settings, the model's, the kind's own."""
    k = get_kind(kind)
    shared = field_types(TrainingConfig)
    model = {name: t for name, t in field_types(k.model_config).items() if name != "num_classes"}
    return {**shared, **model, **field_types(k.training)}


def default_config(kind: str) -> dict[str, Any]:
    """The full default config of a model kind."""
    k = get_kind(kind)
    model_defaults = dataclasses.asdict(k.model_config())
    model_defaults.pop("num_classes", None)
    training = dataclasses.asdict(k.training())
    shared = {name: training[name] for name in field_types(TrainingConfig)}
    return {**shared, **model_defaults, **training}


def resolve_config(kind: str, overrides: Mapping[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """Merge `overrides` into the defaults of `kind`, rejecting unknown keys and bad values by name."""
    config = default_config(kind)
    overrides = dict(overrides or {})
    where = f"{source}: " if source else ""
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ConfigError(
            f"{where}unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {kind}; allowed keys: {', '.join(sorted(config))}"
        )
    types = _fields(kind)
    for key, value in overrides.items():
        config[key] = coerce(key, value, types[key], where)
    k = get_kind(kind)
    k.settings(config).check(where)  # ranges the types cannot express
    k.model_config_of(config)  # the model's dataclass validates its own fields
    return config


def model_config(kind: str, config: Mapping[str, Any]) -> Any:
    """Build the model's config dataclass from the matching keys of a flat config."""
    return get_kind(kind).model_config_of(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml_loader.load`; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    try:
        data = yaml_loader.load(text)
    except yaml_loader.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def config_descriptions(kind: str) -> dict[str, str]:
    """{key: what it means} for the config keys of `kind`, from the comments beside (or just above) each
    field in the dataclasses that define it: the defaults and their meaning live in one place."""
    import inspect
    import re

    k = get_kind(kind)
    found: dict[str, str] = {}
    for cls in (TrainingConfig, k.model_config, k.training):
        above = ""
        for line in inspect.getsource(cls).splitlines():
            text = line.strip()
            field = re.match(r"(\w+):[^#]*?(?:#\s*(.*))?$", text)
            if text.startswith("#"):
                above = text.lstrip("# ")
            elif field and not text.startswith(("def ", "class ", "@")):
                if field.group(2) or above:
                    found[field.group(1)] = field.group(2) or above
                above = ""
            else:
                above = ""
    return {key: found[key] for key in default_config(kind) if key in found}
