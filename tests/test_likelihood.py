"""The VAE's likelihood bound: exact against numerical integration on a 1-D latent, and monotone in k."""

import math

import pytest
import torch
import torch.nn.functional as F

from fashion_tune.models import ConditionalVAE, VAEConfig
from fashion_tune.evaluation.likelihood import binarize, iwae_log_likelihood, iwae_scores


def tiny_vae(latent_dim: int = 1) -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(VAEConfig(latent_dim=latent_dim, width=4, depth=1, embed_dim=4)).eval()


@torch.no_grad()
def exact_log_likelihood(vae: ConditionalVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x|y) = log integral p(x|z,y) N(z; loc_y, scale_y^2) dz on a fine grid (1-D latent only)."""
    grid = torch.linspace(-10, 10, 4001)
    step = (grid[1] - grid[0]).item()
    out = []
    for xi, yi in zip(x, y):
        logits = vae.decode(grid[:, None], yi.repeat(len(grid)))
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xi.expand_as(logits), reduction="none").flatten(1).sum(1)
        loc, scale = vae.prior_loc[yi, :, 0, None], vae.prior_scale_tril[yi, :, 0, 0, None]  # (K, 1)
        log_pz = torch.logsumexp(vae.prior_logits[yi, :, None] - 0.5 * (math.log(2 * math.pi) + ((grid - loc) / scale) ** 2) - scale.log(), 0)
        out.append(torch.logsumexp((log_px_z + log_pz).double(), 0) + math.log(step))
    return torch.stack(out)


@pytest.mark.parametrize("prior", ["standard", "fitted", "mixture"])
def test_iwae_bound_approaches_the_exact_likelihood_from_below(prior):
    vae = tiny_vae()
    if prior == "fitted":  # a class prior as promotion fits one: another mean and scale per class
        vae.set_prior(torch.linspace(-1, 1, 10)[:, None], torch.linspace(0.4, 1.5, 10).view(10, 1, 1))
    if prior == "mixture":  # two Gaussians per class, unequal weights
        vae.set_prior(torch.stack([torch.linspace(-2, 1, 10), torch.linspace(1, 2, 10)], 1)[..., None],
                      torch.stack([torch.linspace(0.3, 0.8, 10), torch.linspace(0.5, 1.2, 10)], 1).view(10, 2, 1, 1),
                      torch.stack([torch.zeros(10), torch.linspace(-1, 1, 10)], 1))
    if prior != "standard":
        with torch.no_grad():  # and a decoder that depends on z enough for the prior to matter
            vae.from_latent.weight[:, 0] *= 30
    x = binarize(torch.rand(4, 1, 28, 28) * 0.3)
    y = torch.tensor([0, 3, 5, 9])
    exact = exact_log_likelihood(vae, x, y)
    gen = torch.Generator().manual_seed(1)
    elbo = iwae_log_likelihood(vae, x, y, k=1, generator=gen)
    bound = iwae_log_likelihood(vae, x, y, k=5000, generator=gen)
    gap_elbo, gap_iwae = (exact - elbo).mean().item(), (exact - bound).mean().item()
    assert gap_iwae >= -0.05  # a lower bound (up to Monte Carlo noise)
    assert gap_iwae < gap_elbo  # tighter than the ELBO
    assert gap_iwae < 0.5 * gap_elbo or gap_iwae < 0.1


def test_scores_binarize_with_a_fixed_seed_and_report_both_bounds():
    vae = tiny_vae(latent_dim=4)
    x, y = torch.rand(12, 1, 28, 28), torch.arange(12) % 10
    first = iwae_scores(vae, x, y, k=20, batch_size=5)
    assert first == iwae_scores(vae, x, y, k=20, batch_size=5)  # seeded binarization and latents
    assert first["images"] == 12 and first["k"] == 20
    assert math.isclose(first["nll_bound_unconditional"], first["nll_bound"] + math.log(10))
    assert first["nll_bound"] < first["neg_elbo_binarized"]
    assert torch.equal(binarize(x), binarize(x)) and set(binarize(x).unique().tolist()) <= {0.0, 1.0}
    assert not vae.training
