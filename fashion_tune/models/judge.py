"""The independent judge: a second classifier, unlike the promoted CNN, that scores the VAE's samples.

Guided sampling keeps the candidate the promoted CNN is most confident about, so that CNN's
verdict on guided samples is decided by construction. This network had no part in picking them,
and shares none of the CNN's design: it is a multilayer perceptron on the 784 pixels (no
convolutions, no pooling, no batch norm; inputs scaled to [-1, 1], not standardised): two hidden
layers with ReLU and dropout, the second one's activations being the feature space for diversity
and the Frechet distance, then the class logits. `FashionCNN` is a stack of 3x3 convolutions with
batch norm over three scales. An MLP also trains in seconds per epoch on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fashion_tune.util.errors import ConfigError

ARCHITECTURE = "JudgeMLP: 784 pixels -> dense(width) + ReLU + dropout -> dense(feature_dim) + ReLU -> dropout -> dense(10)"


@dataclass
class JudgeConfig:
    """Shape of a JudgeMLP; the defaults give 535,818 parameters."""

    num_classes: int = 10
    width: int = 512  # units of the first hidden layer
    feature_dim: int = 256  # units of the second, whose activations are the judge's features
    dropout: float = 0.2  # after each hidden layer

    def __post_init__(self) -> None:
        for name in ("num_classes", "width", "feature_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"judge {name}={value!r} must be a positive integer")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"judge dropout={self.dropout!r} must be a number in [0, 1)")


class JudgeMLP(nn.Module):
    """Classifier on raw [0, 1] images; `features` gives the second hidden layer's activations."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, config.width), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
            nn.Linear(config.width, config.feature_dim), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Second-hidden-layer activations (B, feature_dim) of images in [0, 1]."""
        return self.body(2 * x - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of images in [0, 1]."""
        return self.classifier(self.dropout(self.features(x)))

    def predict(self, x: torch.Tensor, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, the same logits, features): FashionCNN.predict's interface; the judge has no TTA."""
        h = self.features(x)
        logits = self.classifier(self.dropout(h))
        return logits, logits, h
