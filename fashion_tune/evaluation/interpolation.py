"""Class-to-class interpolation through a VAE's latent space and class embedding, and how smooth it is."""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.models import ConditionalVAE
from fashion_tune.models.sampling import evaluating

INTERPOLATION_STEPS = 8  # frames per path, as the original's smoothness test
PATHS_PER_PAIR = 1  # random paths per ordered class pair (90 pairs)


@contextlib.contextmanager
def _embedding_mix(vae: ConditionalVAE, target: Tensor, weight: Tensor) -> Iterator[None]:
    """While active, the label embedding of row i is lerp(embed(label_i), embed(target_i), weight_i)."""

    def mix(module, inputs, output):
        return torch.lerp(output, F.embedding(target.to(output.device), module.weight), weight.to(output.device)[:, None])

    handle = vae.embedding.register_forward_hook(mix)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def interpolation_paths(
    vae: ConditionalVAE, pairs: list[tuple[int, int]], steps: int = INTERPOLATION_STEPS, generator: torch.Generator | None = None
) -> Tensor:
    """Images (P, steps, 1, 28, 28) along class-to-class paths: z_a -> z_b and embed(a) -> embed(b) linearly."""
    device = next(vae.parameters()).device
    noise_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(len(pairs), 2, vae.config.latent_dim, generator=generator, device=noise_device).cpu()
    # Each end is a draw from its own class's prior (from N(0, I) for a model with the standard prior).
    classes = torch.tensor(pairs).view(-1, 2)
    pick = vae.prior_picks(2 * len(pairs), generator)
    ends = vae.prior_latents(noise.flatten(0, 1).to(device), classes.flatten().to(device), pick=pick).cpu().view(noise.shape)
    t = torch.linspace(0, 1, steps)
    z = torch.lerp(ends[:, :1], ends[:, 1:], t[None, :, None]).flatten(0, 1)  # (P*steps, latent)
    source = classes[:, 0].repeat_interleave(steps)
    target = classes[:, 1].repeat_interleave(steps)
    weight = t.repeat(len(pairs))
    with evaluating(vae):
        if vae.config.conditional:
            with _embedding_mix(vae, target, weight):
                logits = vae.decode(z.to(device), source.to(device))
        else:
            logits = vae.decode(z.to(device))
    return torch.sigmoid(logits).cpu().view(len(pairs), steps, 1, 28, 28)


def interpolation_scores(paths: Tensor) -> dict[str, float]:
    """smoothness: mean MSE between consecutive frames (lower is smoother); evenness: max / mean step L2."""
    steps = paths[:, 1:] - paths[:, :-1]
    mse = steps.double().pow(2).flatten(2).mean(2)  # (P, steps-1)
    l2 = steps.double().flatten(2).norm(dim=2)
    evenness = (l2.max(1).values / l2.mean(1).clamp_min(1e-12)).mean()
    return {"smoothness": mse.mean().item(), "evenness": evenness.item(), "paths": len(paths)}


def all_class_pairs(num_classes: int = len(CLASSES), paths_per_pair: int = PATHS_PER_PAIR) -> list[tuple[int, int]]:
    return [pair for pair in itertools.permutations(range(num_classes), 2) for _ in range(paths_per_pair)]
