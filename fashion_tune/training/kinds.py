"""The model kinds: one `Kind` record per model says everything the rest of the package needs.

    from fashion_tune.training.kinds import get_kind
    vae = get_kind("vae")
    vae.monitor, vae.mode          # "val_neg_elbo", "min": what sweeps and early stopping watch
    vae.build(config)              # the network a flat config describes

Adding a model means adding a record here (and its network under `fashion_tune/models/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from fashion_tune.util.errors import ConfigError
from fashion_tune.models import CNNConfig, ConditionalVAE, FashionCNN, VAEConfig
from fashion_tune.models.prior import fit_prior_if_better
from fashion_tune.training.scoring import cnn_scores, cnn_validation, vae_test, vae_validation
from fashion_tune.training.settings import CNNTraining, TrainingConfig, VAETraining, from_flat
from fashion_tune.training.tasks import CNNTask, VAETask


@dataclass(frozen=True)
class Kind:
    """One model kind: its configs, network, training task, metrics and how it is scored."""

    name: str
    task: str  # what the model does, in words
    model_config: type  # the network's config dataclass (VAEConfig, CNNConfig)
    network: Callable[[Any], nn.Module]  # builds the network from a model_config
    training: type[TrainingConfig]  # the typed training settings (VAETraining, CNNTraining)
    trainer: Callable[[Any], Any]  # the training task, given the typed settings (VAETask, CNNTask)
    monitor: str  # the validation metric sweeps, early stopping and best.pt watch
    mode: str  # "min" or "max": which way `monitor` is better
    metrics: dict[str, str]  # every metric a sweep may optimise -> its direction
    epoch_line: tuple[str, ...]  # metrics shown on each epoch's progress line
    validate: Callable[..., dict[str, float]]  # (model, x, y, beta) -> the val_* metrics training reports
    test: Callable[..., dict[str, Any]]  # (model, x, y) -> test numbers recorded at promotion
    # Promotion's names for the validation metrics it compares, with the val_* metric each one is.
    promoted_validation: tuple[tuple[str, str], ...]
    judge: str | None = None  # the kind whose promoted model grades this one's output
    # A fit promotion applies to the trained model (the VAE's class prior): (model, splits, validation
    # scores, score(model) -> validation scores) -> (what it did, for the manifest; the validation scores now).
    finish: Callable[..., tuple[dict[str, Any], dict[str, float]]] | None = None

    @property
    def promote_metric(self) -> str:
        """The name promotion compares champion and challenger on (its `monitor`, in promotion's names)."""
        return next(name for name, metric in self.promoted_validation if metric == self.monitor)

    def model_config_of(self, config: Mapping[str, Any]) -> Any:
        """The network's config dataclass from the matching keys of a flat config."""
        return from_flat(self.model_config, {k: v for k, v in config.items() if k != "num_classes"})

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """The (untrained) network a flat config describes."""
        return self.network(self.model_config_of(config))

    def settings(self, config: Mapping[str, Any]) -> TrainingConfig:
        """The typed training settings of a flat config."""
        return from_flat(self.training, config)

    def worst(self) -> float:
        """The worst possible value of `monitor`, given to a run that diverged."""
        return float("inf") if self.mode == "min" else 0.0


_SHARED_METRICS = {"train_loss": "min", "params": "min", "flops": "min"}

KINDS: dict[str, Kind] = {
    "vae": Kind(
        name="vae", task="generation: a class-conditional beta-VAE", model_config=VAEConfig, network=ConditionalVAE,
        training=VAETraining, trainer=VAETask, monitor="val_neg_elbo", mode="min",
        metrics={"val_neg_elbo": "min", "val_neg_elbo_bin": "min", "val_recon": "min", "val_kl": "min",
                 "val_loss": "min", "val_neg_elbo_raw": "min", "val_sample_acc": "max", **_SHARED_METRICS},
        epoch_line=("val_neg_elbo", "val_recon", "val_kl", "val_sample_acc", "beta"),
        validate=vae_validation, test=vae_test,
        promoted_validation=(("neg_elbo", "val_neg_elbo"), ("recon", "val_recon"), ("kl", "val_kl")), judge="cnn",
        finish=fit_prior_if_better,
    ),
    "cnn": Kind(
        name="cnn", task="recognition: a CNN classifier", model_config=CNNConfig, network=FashionCNN,
        training=CNNTraining, trainer=CNNTask, monitor="val_acc", mode="max",
        # val_acc: the scored weights (the EMA, if any) with flip TTA if `tta`; val_acc_no_tta: the same weights
        # without TTA; val_acc_raw: the training weights without TTA (without EMA: val_acc_no_tta).
        metrics={"val_acc": "max", "val_loss": "min", "val_acc_no_tta": "max", "val_acc_raw": "max", **_SHARED_METRICS},
        epoch_line=("val_acc", "val_loss"),
        validate=cnn_validation, test=cnn_scores,
        promoted_validation=(("accuracy", "val_acc"), ("loss", "val_loss"), ("accuracy_no_tta", "val_acc_no_tta")),
    ),
}


def get_kind(name: str) -> Kind:
    """The Kind called `name`; a ConfigError naming the choices otherwise."""
    if name not in KINDS:
        raise ConfigError(f"unknown model kind {name!r}; choose one of: {', '.join(KINDS)}")
    return KINDS[name]
