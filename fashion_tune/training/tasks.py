"""What differs between training the two models: the loss, the augmentation, the per-epoch state.

`fashion_tune.training.loop.fit` runs the same loop for both and asks its task for these; the validation
numbers come from `fashion_tune.training.scoring`, like promotion's and grading's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fashion_tune.data.splits import Augment
from fashion_tune.models import ConditionalVAE, FashionCNN
from fashion_tune.training.judge import load_sample_judge
from fashion_tune.training.scoring import cnn_scores, cnn_validation, elbo_scores, sample_accuracy, vae_validation
from fashion_tune.training.settings import CNNTraining, VAETraining


class VAETask:
    """Trains the conditional beta-VAE; the HPO metric is the validation negative ELBO (nats)."""

    def __init__(self, settings: VAETraining):
        self.settings = settings
        self.beta_schedule = settings.beta()
        self.beta = self.beta_schedule(0, settings.epochs)
        self.sample_judge = load_sample_judge(settings) if settings.sample_judge else None

    def start_epoch(self, epoch: int) -> None:
        self.beta = self.beta_schedule(epoch, self.settings.epochs)

    def augment(self) -> Augment | None:
        return None

    def loss(self, model: ConditionalVAE, x, y) -> torch.Tensor:
        if self.settings.binarize == "dynamic":
            x = torch.bernoulli(x)  # a fresh binarization every step (from the training RNG)
        return model.loss_terms(x, y, self.beta)["loss"]

    def evaluate(self, model: ConditionalVAE, x, y) -> dict[str, float]:
        """Validation metrics at this epoch's beta (see `scoring.vae_validation`), and with `sample_judge`
        val_sample_acc: how many raw samples the judge classifies as their class (`scoring.sample_accuracy`)."""
        metrics = vae_validation(model, x, y, self.beta)
        if self.sample_judge is not None:
            metrics["val_sample_acc"] = sample_accuracy(model, self.sample_judge, self.settings.sample_judge_images)
        return metrics

    def raw_validation(self, model: ConditionalVAE | None, x, y, metrics: dict[str, float]) -> dict[str, float]:
        """The training weights' negative ELBO beside an EMA's `metrics` (model None: they are the same weights)."""
        if model is None:
            return {"val_neg_elbo_raw": metrics["val_neg_elbo"]}
        return {"val_neg_elbo_raw": elbo_scores(model, x, y)["neg_elbo"]}


class CNNTask:
    """Trains the CNN classifier; the HPO metric is validation accuracy."""

    def __init__(self, settings: CNNTraining):
        self.settings = settings

    def start_epoch(self, epoch: int) -> None:
        pass

    def augment(self) -> Augment | None:
        s = self.settings
        return Augment(crop_pad=s.crop_pad, flip=s.flip, erase_prob=s.erase_prob)

    def loss(self, model: FashionCNN, x, y) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.settings.label_smoothing)

    def evaluate(self, model: FashionCNN, x, y) -> dict[str, float]:
        return cnn_validation(model, x, y)

    def raw_validation(self, model: FashionCNN | None, x, y, metrics: dict[str, float]) -> dict[str, float]:
        """The training weights' accuracy without TTA beside an EMA's `metrics` (model None: they are the same
        weights), so val_acc_no_tta - val_acc_raw is what the EMA adds, at one validation pass."""
        if model is None:
            return {"val_acc_raw": metrics["val_acc_no_tta"]}
        return {"val_acc_raw": cnn_scores(model, x, y, tta=False)["accuracy"]}
