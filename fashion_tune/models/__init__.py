"""The networks: a class-conditional beta-VAE, a CNN classifier for Fashion-MNIST, and the independent
judge (`judge`, an MLP) that scores the VAE's samples."""

import torch.nn as nn

from fashion_tune.models.cnn import CNNConfig, FashionCNN
from fashion_tune.models.vae import ConditionalVAE, VAEConfig


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BatchNorm statistics not included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["CNNConfig", "ConditionalVAE", "FashionCNN", "VAEConfig", "count_parameters"]
