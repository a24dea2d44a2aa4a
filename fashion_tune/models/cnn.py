"""Fashion-MNIST classifiers whose penultimate layer doubles as a feature space for grading samples.

`arch: plain` (the default): VGG-style, three blocks of `depth` 3x3 conv + BatchNorm + ReLU layers,
each ending in a 2x2 max-pool (28 -> 14 -> 7 -> 3), then a dense layer of `feature_dim` units.
`arch: resnet`: CIFAR-style ResNet (He et al. 2016, the ResNet-20/32 family) for 28x28 inputs: a
3x3 stem, three stages of `depth` basic blocks at `width`, 2x and 4x channels (28 -> 14 -> 7, the
first block of a stage strides and projects its shortcut with a 1x1 conv), global average pooling.
Both end in dropout and the class logits. With `tta`, eval-mode predictions average the logits of
each image and its mirror image (horizontal-flip test-time augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from fashion_tune.util.errors import ConfigError

# Fashion-MNIST training-set pixel statistics, for inputs in [0, 1].
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
ARCHS = ("plain", "resnet")


@dataclass
class CNNConfig:
    """Shape of a FashionCNN and how it predicts; the defaults give the plain CNN of about 0.68M parameters."""

    num_classes: int = 10
    arch: Literal["plain", "resnet"] = "plain"  # plain: VGG-style blocks with max-pools | resnet: CIFAR-style ResNet
    width: int = 40  # channels of the first block (resnet: stage); 2x and 4x in the next two
    depth: int = 2  # conv layers per block (plain); basic blocks per stage (resnet: 3 is ResNet-20, 5 ResNet-32)
    dropout: float = 0.3  # dropout rate before the final linear layer
    tta: bool = False  # flip test-time augmentation: eval-mode logits average each image's and its mirror image's

    def __post_init__(self) -> None:
        for name in ("num_classes", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CNN {name}={value!r} must be a positive integer")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"CNN dropout={self.dropout!r} must be a number in [0, 1)")
        if self.arch not in ARCHS:
            raise ConfigError(f"CNN arch={self.arch!r} is not allowed; choose one of: {', '.join(ARCHS)}")
        if not isinstance(self.tta, bool):
            raise ConfigError(f"CNN tta={self.tta!r} must be true or false")


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


def plain_body(width: int, depth: int) -> nn.Sequential:
    """The VGG-style body: three conv blocks, then a dense layer of 4 x width features."""
    w = width
    return nn.Sequential(
        conv_block(1, w, depth),  # 28 -> 14
        conv_block(w, 2 * w, depth),  # 14 -> 7
        conv_block(2 * w, 4 * w, depth),  # 7 -> 3
        nn.Flatten(),
        nn.Linear(4 * w * 3 * 3, 4 * w),
        nn.BatchNorm1d(4 * w),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers around a shortcut: identity, or a strided 1x1 conv where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Each block starts as the identity (zero last BN scale, Goyal et al. 2017): deep stacks train from step one.
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


def resnet_body(width: int, depth: int) -> nn.Sequential:
    """The CIFAR-style ResNet body (6 x depth + 2 layers): stem, three stages, global average pool."""
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    channels = width
    for stage, out_channels in enumerate((width, 2 * width, 4 * width)):  # 28, 14, 7 pixels
        for block in range(depth):
            layers.append(BasicBlock(channels, out_channels, stride=2 if stage > 0 and block == 0 else 1))
            channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
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
        self.body = plain_body(w, d) if config.arch == "plain" else resnet_body(w, d)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images in [0, 1]."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of images in [0, 1]; in eval mode with `tta`, averaged with the mirror images'."""
        return self.predict(x)[0]

    def predict(self, x: torch.Tensor, tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits as `forward` gives them, logits of the images alone, features of the images alone).

        With flip TTA (eval mode and `tta`, which defaults to the config's) the mirror images go through
        the network in the same batch as the images and the first logits are the mean of both; otherwise
        both logits are the same.
        """
        tta = (self.config.tta if tta is None else tta) and not self.training
        h = self.features(torch.cat([x, x.flip(-1)]) if tta else x)
        logits = self.classifier(self.dropout(h))
        if not tta:
            return logits, logits, h
        plain, mirrored = logits.chunk(2)
        return (plain + mirrored) / 2, plain, h[: len(x)]
