"""Typed training settings: the fields every model shares, and each model's own.

Users and Ray Tune see a config as a flat dict of these fields plus the model's (`VAEConfig`,
`CNNConfig`); `fashion_tune.training.config.resolve_config` checks such a dict against the field types
below and `training_settings` turns it into one of these dataclasses for the training loop.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from fashion_tune.util.errors import ConfigError
from fashion_tune.training.schedules import BetaSchedule

SHIPPED = "shipped"  # sample_judge: the judge in the fashion-tune checkout's best_models/


@dataclass(frozen=True)
class TrainingConfig:
    """Settings shared by every model kind. None means "not set" (e.g. no subset: the full split)."""

    seed: int = 0  # of the model's initial weights, the batch order and the augmentation
    epochs: int = 10  # training epochs (in a sweep: the scheduler's max_t)
    batch_size: int = 128  # training images per step
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay; SGD's L2 penalty
    optimizer: Literal["adamw", "sgd"] = "adamw"  # adamw | sgd (with Nesterov momentum)
    momentum: float = 0.9  # SGD's Nesterov momentum (0: plain SGD); adamw ignores it
    # per epoch: cosine_restarts (warm restarts, as the original) or cosine | per step: onecycle or triangular
    scheduler: Literal["cosine_restarts", "cosine", "onecycle", "triangular"] = "cosine_restarts"
    restart_epochs: int = 10  # length of the first cosine cycle (T_0), in epochs
    restart_mult: int = 1  # each cycle is this many times longer than the previous (T_mult)
    min_lr_ratio: float = 0.01  # the lr's floor (onecycle, triangular: also its start), as a fraction of lr
    lr_warmup: float = 0.25  # onecycle, triangular: the fraction of the steps the lr rises (then a cosine / linear fall)
    ema_decay: float = 0.0  # EMA of the weights per step, e.g. 0.999 (0 = off): validation and promotion use the EMA
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    early_stop_patience: int = 0  # epochs without a better validation metric before stopping; 0 = off
    val_size: int = 10_000  # training images held out for validation (HPO decisions), stratified
    split_seed: int = 0  # of the train/validation split
    subset: int | None = None  # stratified training subset size, for quick runs
    val_subset: int | None = None  # stratified validation subset size, for quick runs
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # training steps: auto (bf16 on CPUs with native bf16, else fp32) | fp32 | bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def check(self, where: str = "") -> None:
        """Ranges the types cannot express; raises ConfigError naming the key."""
        for key in ("epochs", "batch_size", "lr", "restart_epochs", "restart_mult", "val_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}{key}={getattr(self, key)!r} must be > 0")
        for key in ("weight_decay", "grad_clip", "early_stop_patience", "min_lr_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}{key}={getattr(self, key)!r} must be >= 0")
        for key in ("momentum", "ema_decay"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{where}{key}={getattr(self, key)!r} must be in [0, 1)")
        if not 0 < self.lr_warmup < 1:
            raise ConfigError(f"{where}lr_warmup={self.lr_warmup!r} must be in (0, 1)")
        for key in ("subset", "val_subset"):
            if getattr(self, key) is not None and getattr(self, key) < 10:
                raise ConfigError(f"{where}{key}={getattr(self, key)!r} must be at least 10 (one image per class) or null")


@dataclass(frozen=True)
class VAETraining(TrainingConfig):
    """The VAE's training settings: its KL-weight schedule and how pixels become targets."""

    batch_size: int = 64  # training images per step
    beta_schedule: Literal["constant", "linear", "cyclical"] = "linear"  # the KL weight per epoch
    beta_start: float = 0.1  # KL weight at the first epoch (of each cycle); constant ignores it
    beta_end: float = 1.0  # KL weight after the warm-up, at each cycle's top, or throughout (constant)
    beta_warmup: float = 0.5  # fraction of training (linear) or of each cycle (cyclical) the ramp takes
    beta_cycles: int = 4  # ramps in a cyclical schedule
    # none: grey levels as Bernoulli targets | dynamic: a fresh binarization per batch
    binarize: Literal["none", "dynamic"] = "none"
    # A models directory whose judge/ (`fashion-tune train-judge`) classifies raw samples after every epoch:
    # val_sample_acc, a metric (and second objective) that sees sample quality, which the ELBO does not;
    # "shipped" is the checkout's best_models/; an absolute path, as trials run in directories of their own.
    sample_judge: str | None = None
    sample_judge_images: int = 1000  # raw samples it classifies per epoch, as many of each class

    def sample_judge_file(self) -> Path | None:
        """The weights of the judge `sample_judge` names (None: no judge)."""
        if self.sample_judge is None:
            return None
        root = Path(__file__).resolve().parents[2] / "best_models" if self.sample_judge == SHIPPED else Path(self.sample_judge)
        return root / "judge" / "model.pt"

    def beta(self) -> BetaSchedule:
        """The KL-weight schedule these settings describe."""
        return BetaSchedule(kind=self.beta_schedule, start=self.beta_start, end=self.beta_end,
                            warmup=self.beta_warmup, cycles=self.beta_cycles)

    def check(self, where: str = "") -> None:
        super().check(where)
        self.beta()  # the schedule checks its own fields
        if self.sample_judge not in (None, SHIPPED) and not Path(self.sample_judge).is_absolute():
            raise ConfigError(f"{where}sample_judge={self.sample_judge!r} must be an absolute path (trials run in "
                              f"directories of their own) or {SHIPPED!r} (the checkout's best_models/)")
        judge = self.sample_judge_file()
        if judge is not None and not judge.is_file():
            raise ConfigError(f"{where}sample_judge={self.sample_judge!r}: no judge at {judge}; run `fashion-tune "
                              f"train-judge --models-dir {judge.parents[1]}` or name a models directory that holds one")
        if not 10 <= self.sample_judge_images <= 100_000:
            raise ConfigError(f"{where}sample_judge_images={self.sample_judge_images!r} must be in 10..100000")


@dataclass(frozen=True)
class CNNTraining(TrainingConfig):
    """The CNN's training settings: regularisation and batch augmentation."""

    weight_decay: float = 5e-4  # AdamW's decoupled weight decay; SGD's L2 penalty
    label_smoothing: float = 0.0  # of the cross-entropy targets, in [0, 1)
    crop_pad: int = 2  # random crops from images padded by this many pixels; 0 = off
    flip: bool = True  # random horizontal flips
    erase_prob: float = 0.0  # probability of random erasing per image

    def check(self, where: str = "") -> None:
        super().check(where)
        if not 0 <= self.erase_prob <= 1:
            raise ConfigError(f"{where}erase_prob={self.erase_prob!r} must be in [0, 1]")
        if not 0 <= self.crop_pad <= 8:
            raise ConfigError(f"{where}crop_pad={self.crop_pad!r} must be in 0..8")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}label_smoothing={self.label_smoothing!r} must be in [0, 1)")


# --- flat dicts <-> typed dataclasses ------------------------------------------------------------


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type annotation} of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, annotation: Any, where: str = "") -> Any:
    """Check one value against its field's type; ints may arrive as whole floats (quniform yields them)."""
    args = typing.get_args(annotation)
    if type(None) in args:  # an optional field
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        if value not in args:
            raise ConfigError(f"{where}{key}={value!r} is not allowed; choose one of: {', '.join(map(str, args))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}={value!r} must be true or false")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key}={value!r} must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{key}={value!r} must be a number")
        return float(value)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where}{key}={value!r} must be a string")
    return value


def from_flat(cls: type, config: Mapping[str, Any]) -> Any:
    """The dataclass `cls` built from the keys of a flat config that name its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: config[name] for name in names if name in config})
