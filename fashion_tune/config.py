"""Training configs: defaults for each model kind, and validation of user overrides.

A config is a flat dict (what Ray Tune samples and what YAML files hold). Its keys are the
training settings below plus the fields of the model's config dataclass, so the model's own
defaults live in one place (`VAEConfig`, `CNNConfig`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import yaml

from fashion_tune.device import PRECISIONS
from fashion_tune.errors import ConfigError
from fashion_tune.models import CNNConfig, VAEConfig
from fashion_tune.schedules import BETA_SCHEDULES, BetaSchedule

KINDS = ("vae", "cnn")
SCHEDULERS = ("cosine_restarts", "cosine")
BINARIZE = ("none", "dynamic")

# Settings shared by both trainables. None means "not set" (e.g. no subset: the full split).
TRAINING_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "epochs": 10,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "scheduler": "cosine_restarts",  # AdamW + cosine annealing with warm restarts, as the original
    "restart_epochs": 10,  # length of the first cosine cycle (T_0), in epochs
    "restart_mult": 1,  # each cycle is this many times longer than the previous (T_mult)
    "min_lr_ratio": 0.01,  # the cosine's floor, as a fraction of lr
    "grad_clip": 1.0,  # max gradient norm; 0 turns clipping off
    "early_stop_patience": 0,  # epochs without a better validation metric before stopping; 0 = off
    "val_size": 10_000,
    "split_seed": 0,
    "subset": None,  # stratified training subset size, for quick runs
    "val_subset": None,  # stratified validation subset size, for quick runs
    "device": "auto",
    "precision": "auto",  # training steps: auto (bf16 on CPUs with native bf16, else fp32) | fp32 | bf16
}

KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "vae": {
        "batch_size": 64,
        "lr": 2e-3,
        "beta_schedule": "linear",
        "beta_start": 0.1,
        "beta_end": 1.0,
        "beta_warmup": 0.5,
        "beta_cycles": 4,
        "binarize": "none",  # none: grey levels as Bernoulli targets | dynamic: a fresh binarization per batch
    },
    "cnn": {
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "crop_pad": 2,
        "flip": True,
        "erase_prob": 0.0,
    },
}

MODEL_CONFIGS = {"vae": VAEConfig, "cnn": CNNConfig}

# What each trainable reports every epoch, and which way is better. Sweeps must pick one of these.
METRICS: dict[str, dict[str, str]] = {
    "vae": {
        "val_neg_elbo": "min",
        "val_neg_elbo_bin": "min",
        "val_recon": "min",
        "val_kl": "min",
        "val_loss": "min",
        "train_loss": "min",
        "params": "min",
        "flops": "min",
    },
    "cnn": {"val_acc": "max", "val_loss": "min", "train_loss": "min", "params": "min", "flops": "min"},
}
MONITOR = {"vae": ("val_neg_elbo", "min"), "cnn": ("val_acc", "max")}

_OPTIONAL_INTS = {"subset", "val_subset"}
_CHOICES = {"scheduler": SCHEDULERS, "beta_schedule": BETA_SCHEDULES, "precision": PRECISIONS, "binarize": BINARIZE}


def check_kind(kind: str) -> str:
    """Return `kind` if it names a model kind, else raise ConfigError."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


def default_config(kind: str) -> dict[str, Any]:
    """The full default config of a model kind."""
    check_kind(kind)
    model_defaults = dataclasses.asdict(MODEL_CONFIGS[kind]())
    model_defaults.pop("num_classes", None)
    return {**TRAINING_DEFAULTS, **model_defaults, **KIND_DEFAULTS[kind]}


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check one value against the type of its default; ints may arrive as whole floats."""
    where = f"{source}: " if source else ""
    if key in _OPTIONAL_INTS:
        default = 0
        if value is None:
            return None
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{where}{key}={value!r} is not allowed; choose one of: {', '.join(_CHOICES[key])}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}={value!r} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():  # quniform yields floats
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key}={value!r} must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{key}={value!r} must be a number")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}{key}={value!r} must be a string")
    return value


def resolve_config(kind: str, overrides: Mapping[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """Merge `overrides` into the defaults of `kind`, rejecting unknown keys and bad values by name."""
    config = default_config(kind)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {kind}; allowed keys: {', '.join(sorted(config))}"
        )
    for key, value in overrides.items():
        config[key] = _coerce(key, value, config[key], source)
    _check_ranges(kind, config, source)
    model_config(kind, config)  # the model's dataclass validates its own fields
    if kind == "vae":
        beta_schedule(config)
    return config


def _check_ranges(kind: str, config: Mapping[str, Any], source: str) -> None:
    where = f"{source}: " if source else ""
    positive = ["epochs", "batch_size", "lr", "restart_epochs", "restart_mult", "val_size"]
    for key in positive:
        if config[key] <= 0:
            raise ConfigError(f"{where}{key}={config[key]!r} must be > 0")
    for key in ["weight_decay", "grad_clip", "early_stop_patience", "min_lr_ratio"]:
        if config[key] < 0:
            raise ConfigError(f"{where}{key}={config[key]!r} must be >= 0")
    for key in _OPTIONAL_INTS:
        if config[key] is not None and config[key] < 10:
            raise ConfigError(f"{where}{key}={config[key]!r} must be at least 10 (one image per class) or null")
    if kind == "cnn":
        if not 0 <= config["erase_prob"] <= 1:
            raise ConfigError(f"{where}erase_prob={config['erase_prob']!r} must be in [0, 1]")
        if not 0 <= config["crop_pad"] <= 8:
            raise ConfigError(f"{where}crop_pad={config['crop_pad']!r} must be in 0..8")
        if not 0 <= config["label_smoothing"] < 1:
            raise ConfigError(f"{where}label_smoothing={config['label_smoothing']!r} must be in [0, 1)")


def model_config(kind: str, config: Mapping[str, Any]) -> VAEConfig | CNNConfig:
    """Build the model's config dataclass from the matching keys of a flat config."""
    cls = MODEL_CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)} - {"num_classes"}
    return cls(**{name: config[name] for name in names if name in config})


def beta_schedule(config: Mapping[str, Any]) -> BetaSchedule:
    """The VAE's KL-weight schedule described by a flat config."""
    return BetaSchedule(
        kind=config["beta_schedule"],
        start=config["beta_start"],
        end=config["beta_end"],
        warmup=config["beta_warmup"],
        cycles=config["beta_cycles"],
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data
