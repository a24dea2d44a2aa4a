"""Sampling from a trained VAE: plain draws, and the original's quality-guided sampling.

Quality-guided sampling (the original project's "generate 100 candidates, select best") draws
`candidates` latents per requested image, decodes them all, asks the judge (the promoted CNN)
how likely each is to be the requested class, and keeps the most convincing one. It buys
recognisability with diversity; `fashion_tune.evaluation.grading` measures both sides.

All noise comes from an explicit generator, drawn in one piece on the generator's device (the
CPU by default) before any decoding, so a seed gives the same latents on every device and for
every batch size. Decoding and judging run in batches of whole (label x candidate) blocks on
the models' device.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from fashion_tune.models import ConditionalVAE

CANDIDATES = 100  # the original's "100 candidates, keep the best"
BATCH_SIZE = 500  # images decoded (and judged) per forward pass; larger batches are slower on a CPU
# (their activations are fresh memory each time: 2,000 ran at 0.6x the speed, mostly in the kernel)


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode (BatchNorm running stats, no dropout) and restore their mode after."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _labels(labels: Tensor | list[int], num_classes: int) -> Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min().item()}..{labels.max().item()}")
    return labels


def _noise(count: int, latent_dim: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(count, latent_dim, generator=generator, device=device)


def _slice(pick: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if pick is None else pick[start:stop]


def _decode(vae: ConditionalVAE, noise: Tensor, labels: Tensor, pick: Tensor | None = None) -> Tensor:
    """Pixel probabilities for latents drawn from the VAE's prior p(z | label) with standard-normal `noise`
    (and, for a mixture prior, the uniform numbers `pick` that choose its components)."""
    device = _device(vae)
    labels = labels.to(device) if vae.config.conditional else None
    return torch.sigmoid(vae.decode(vae.prior_latents(noise.to(device), labels, pick=pick), labels))


@torch.no_grad()
def raw_sample(
    vae: ConditionalVAE,
    labels: Tensor | list[int],
    generator: torch.Generator | None = None,
    batch_size: int = BATCH_SIZE,
) -> Tensor:
    """Pixel probabilities (N, 1, 28, 28), one z ~ p(z | label) per requested label: what the VAE gives unaided."""
    labels = _labels(labels, vae.config.num_classes)
    z = _noise(len(labels), vae.config.latent_dim, generator)
    pick = vae.prior_picks(len(labels), generator)
    out = []
    with evaluating(vae):
        for i in range(0, len(labels), batch_size):
            out.append(_decode(vae, z[i : i + batch_size], labels[i : i + batch_size], _slice(pick, i, i + batch_size)).cpu())
    return torch.cat(out) if out else torch.empty(0, 1, 28, 28)


@torch.no_grad()
def guided_sample(
    vae: ConditionalVAE,
    judge: nn.Module,
    labels: Tensor | list[int],
    candidates: int = CANDIDATES,
    generator: torch.Generator | None = None,
    batch_size: int = BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """For each label, the most convincing of `candidates` decoded latents, and the judge's confidence in it.

    Confidence is the judge's softmax probability of the requested class. Candidates for a
    block of labels are decoded and judged in one batch (about `batch_size` images), so the
    cost is (labels x candidates) decodes with no Python loop per candidate. Returns images
    (N, 1, 28, 28) on the CPU and confidences (N,); the same seed gives the same images.
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates={candidates!r} must be a positive integer")
    labels = _labels(labels, vae.config.num_classes)
    # Label-major: the candidates of labels[0] first. (N x candidates x latent_dim floats.)
    z = _noise(len(labels) * candidates, vae.config.latent_dim, generator)
    pick = vae.prior_picks(len(z), generator)
    per_block = max(1, batch_size // candidates)
    images, confidences = [], []
    judge_device = _device(judge)
    with evaluating(vae, judge):
        for i in range(0, len(labels), per_block):
            block = labels[i : i + per_block]
            wanted = block.repeat_interleave(candidates)
            start, stop = i * candidates, (i + len(block)) * candidates
            decoded = _decode(vae, z[start:stop], wanted, _slice(pick, start, stop))
            probs = torch.softmax(judge(decoded.to(judge_device)).float(), dim=1)
            confidence = probs.gather(1, wanted.to(judge_device)[:, None]).view(len(block), candidates)
            best_conf, best = confidence.max(dim=1)
            rows = torch.arange(len(block), device=best.device) * candidates + best
            images.append(decoded[rows.to(decoded.device)].cpu())
            confidences.append(best_conf.cpu())
    if not images:
        return torch.empty(0, 1, 28, 28), torch.empty(0)
    return torch.cat(images), torch.cat(confidences)


def class_labels(per_class: int, num_classes: int = 10) -> Tensor:
    """0,0,...,1,1,...: `per_class` requests of every class, class-major (a row per class in pictures)."""
    return torch.arange(num_classes).repeat_interleave(per_class)
