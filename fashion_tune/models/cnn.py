"""VGG-style Fashion-MNIST classifier whose penultimate layer doubles as a feature space for grading samples.

Three blocks of `depth` 3x3 conv + BatchNorm + ReLU layers, each ending in a 2x2 max-pool
(28 -> 14 -> 7 -> 3), then a dense layer of `feature_dim` units and the class logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fashion_tune.util.errors import ConfigError

# Fashion-MNIST training-set pixel statistics, for inputs in [0, 1].
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


@dataclass
class CNNConfig:
    """Shape of a FashionCNN; the defaults give about 0.68M parameters."""

    num_classes: int = 10
    width: int = 40  # channels of the first block; 2x and 4x in the next two
    depth: int = 2  # conv layers per block
    dropout: float = 0.3  # dropout rate before the final linear layer

    def __post_init__(self) -> None:
        for name in ("num_classes", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CNN {name}={value!r} must be a positive integer")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"CNN dropout={self.dropout!r} must be a number in [0, 1)")


def conv_block(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class FashionCNN(nn.Module):
    """Classifier on raw [0, 1] images; `features` gives the penultimate activations."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        w, d = config.width, config.depth
        self.feature_dim = 4 * w
        self.register_buffer("mean", torch.tensor(FASHION_MEAN))
        self.register_buffer("std", torch.tensor(FASHION_STD))
        self.body = nn.Sequential(
            conv_block(1, w, d),  # 28 -> 14
            conv_block(w, 2 * w, d),  # 14 -> 7
            conv_block(2 * w, 4 * w, d),  # 7 -> 3
            nn.Flatten(),
            nn.Linear(4 * w * 3 * 3, self.feature_dim),
            nn.BatchNorm1d(self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images in [0, 1]."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of images in [0, 1]."""
        return self.classifier(self.dropout(self.features(x)))
