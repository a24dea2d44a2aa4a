"""An honest likelihood for the VAE: the importance-weighted bound on binarized test images.

The training objective treats grey levels as Bernoulli targets; that cross-entropy is not a
log-likelihood (its floor BCE(x, x) is about 188 nats on Fashion-MNIST) and cannot be compared
with published numbers. The standard protocol can: binarize the test images once with a fixed
seed, and estimate log p(x) with the importance-weighted bound (Burda et al., 2016)

    log p(x | y) >= IWAE_k = log (1/k) sum_i p(x | z_i, y) p(z_i | y) / q(z_i | x, y),  z_i ~ q(z | x, y)

which tightens as k grows (k = 1 is the ELBO). Our VAE is class-conditional, so the bound is on
log p(x | y); with the uniform class prior, log p(x) >= log p(x | y) - log 10, which gives an
upper bound on the unconditional negative log-likelihood too. Everything is in nats per image.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_tune.models import ConditionalVAE

IWAE_SAMPLES = 1_000  # k, importance samples per image
BINARIZE_SEED = 0  # the test images' one fixed binarization
DECODES_PER_PASS = 500  # latents decoded per forward pass: 12,500 (the old 50 images x 250) ran 3x slower on a
# CPU, two thirds of it in the kernel (each pass's activations, gigabytes, were fresh memory)
_LOG_2PI = math.log(2 * math.pi)


def binarize(images: Tensor, seed: int = BINARIZE_SEED) -> Tensor:
    """A fixed stochastic binarization: each pixel is 1 with probability its grey level."""
    return torch.bernoulli(images.cpu(), generator=torch.Generator().manual_seed(seed)).to(images.device)


def _gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


@torch.no_grad()
def iwae_log_likelihood(vae: ConditionalVAE, x: Tensor, y: Tensor | None, k: int = IWAE_SAMPLES,
                        chunk: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """IWAE_k lower bound on log p(x | y) for each binary image in x (B, 1, 28, 28), in nats (float64).

    The encoder runs once per image; the decoder runs on `chunk` latents per image at a time
    (default: DECODES_PER_PASS in all), so memory stays bounded for any k. Runs in fp32
    (log-weights accumulate in float64).
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    device = x.device
    chunk = chunk or max(1, DECODES_PER_PASS // len(x))
    labels = y.to(device) if vae.config.conditional else None
    mu, logvar = vae.encode(x, labels)
    std = (0.5 * logvar).exp()
    log_weights = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn((n, *mu.shape), generator=generator, device="cpu").to(device)
        z = mu + std * eps  # (n, B, latent)
        flat = z.reshape(-1, z.shape[-1])
        flat_labels = labels.repeat(n) if labels is not None else None
        logits = vae.decode(flat, flat_labels).view(n, *x.shape)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)
        log_pz = vae.prior_log_prob(flat, flat_labels).view(n, -1)
        log_qz = _gaussian_log_density(z, mu, logvar)
        log_weights.append((log_px_z + log_pz - log_qz).double())
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)


def iwae_scores(vae: ConditionalVAE, x: Tensor, y: Tensor, k: int = IWAE_SAMPLES, batch_size: int = 10,
                seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """The bound over a set of grey test images, binarized with the fixed seed, in nats per image.

    Returns nll_bound (-IWAE_k: an upper bound on -log p(x | y)), its standard error over images,
    nll_bound_unconditional (+ log num_classes: an upper bound on -log p(x)), the single-sample
    negative ELBO on the same images for contrast, k and the number of images.
    `progress(n)` is called as each batch of n images has its bound.
    """
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    binary = binarize(x).to(device)
    generator = torch.Generator().manual_seed(seed)
    try:
        bounds = []
        for i in range(0, len(binary), batch_size):
            bounds.append(iwae_log_likelihood(vae, binary[i : i + batch_size], y[i : i + batch_size], k, generator=generator))
            if progress:
                progress(len(bounds[-1]))
        bounds = torch.cat(bounds)
        elbo = torch.cat([iwae_log_likelihood(vae, binary[i : i + batch_size], y[i : i + batch_size], 1, generator=generator)
                          for i in range(0, len(binary), batch_size)])
    finally:
        vae.train(was_training)
    nll = -bounds
    classes = vae.config.num_classes if vae.config.conditional else 1
    return {
        "nll_bound": nll.mean().item(),
        "nll_bound_stderr": (nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else math.nan,
        "nll_bound_unconditional": nll.mean().item() + math.log(classes),
        "neg_elbo_binarized": -elbo.mean().item(),
        "k": k,
        "images": len(nll),
        "binarize_seed": BINARIZE_SEED,
    }
