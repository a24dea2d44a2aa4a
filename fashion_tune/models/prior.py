"""The VAE's class prior, fitted after training: the mixture of Gaussians per class that maximises the ELBO.

A VAE trains against the standard normal prior p(z) = N(0, I), but its encoder's posteriors do
not fill that prior evenly: raw samples then come from regions the decoder saw little of. With
the encoder and decoder fixed, the ELBO's only term that depends on the prior is
E_x E_q(z|x,y) log p(z | y): fitting the prior is maximum likelihood on the class's aggregate
posterior, the mixture of the N(mu(x), diag(var(x))) of its training images.

- One Gaussian (K = 1) has the closed form of moment matching:
      m = mean over the class's training images of mu(x),
      S = mean of diag(var(x)) + covariance of mu(x).
- A mixture of K full-covariance Gaussians is fitted by EM on those posteriors as Gaussians, not
  on samples from them (`mixture_em`): the E step weighs image i by component k with
  E_q_i log N(z; m_k, S_k) (its Mahalanobis term plus tr(S_k^-1 diag(var_i))), the M step is
  moment matching with those weights. Each step raises a lower bound on the class's
  E_q log p(z); for K = 1 it is exactly moment matching.

Promotion (`fit_prior_if_better`) tries K = 1, 2, 4, ... on the training split and keeps the K
with the lowest validation negative ELBO, doubling while it still drops, and only if it beats the
prior the model came with. Fitting is deterministic: the same weights and images give the same prior.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from fashion_tune.models import ConditionalVAE
from fashion_tune.models.sampling import evaluating

ENCODE_BATCH = 250  # images per encoder pass: 1,000 ran at 0.45x the speed on a CPU (memory churn)
COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128)  # Gaussians per class promotion tries, in order, while validation improves
EM_ITERATIONS = 200
EM_TOLERANCE = 1e-4  # nats per image: EM stops when its bound rises less than this in a step
EM_RIDGE = 1e-6  # added to every fitted covariance, so its Cholesky factor exists


@torch.no_grad()
def posterior_moments(vae: ConditionalVAE, x: Tensor, y: Tensor, batch_size: int = ENCODE_BATCH) -> tuple[Tensor, Tensor]:
    """The encoder's posterior means and variances (N, D) for images x, in float64 on the CPU."""
    device = next(vae.parameters()).device
    means, variances = [], []
    with evaluating(vae):
        for i in range(0, len(x), batch_size):
            labels = y[i : i + batch_size].to(device) if vae.config.conditional else None
            mu, logvar = vae.encode(x[i : i + batch_size].to(device), labels)
            means.append(mu.double().cpu())
            variances.append(logvar.double().exp().cpu())
    return torch.cat(means), torch.cat(variances)


def moment_matched(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """The Gaussian (loc, scale_tril) closest in KL to the mixture of N(means[i], diag(variances[i]))."""
    loc = means.mean(0)
    centred = means - loc
    covariance = centred.T @ centred / len(means) + torch.diag(variances.mean(0))
    return loc, torch.linalg.cholesky(covariance)


def mixture_em(means: Tensor, variances: Tensor, components: int, iterations: int = EM_ITERATIONS,
               seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """log weights (K,), locs (K, D) and scale_trils (K, D, D) of the K-Gaussian mixture fitted by EM to the
    mixture of N(means[i], diag(variances[i])) (float64); see the module docstring."""
    if components == 1:
        loc, tril = moment_matched(means, variances)
        return torch.zeros(1, dtype=loc.dtype), loc[None], tril[None]
    n, dim = means.shape
    start = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:components]
    loc = means[start].clone()  # every component starts at one image's posterior mean, with the whole class's spread
    _, tril = moment_matched(means, variances)
    covariance = (tril @ tril.T).expand(components, dim, dim).clone()
    log_weights = torch.full((components,), -math.log(components), dtype=means.dtype)
    ridge = EM_RIDGE * torch.eye(dim, dtype=means.dtype)
    outer = (means[:, :, None] * means[:, None, :]).reshape(n, dim * dim)  # mu_i mu_i^T, flattened
    previous = -math.inf
    for _ in range(iterations):
        tril = torch.linalg.cholesky(covariance + ridge)
        inverse = torch.linalg.solve_triangular(tril, torch.eye(dim, dtype=means.dtype).expand_as(tril), upper=False)
        log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # L_k^-1 (mu_i - m_k) for every image and component in one matrix product: (n, K, D).
        white = (means @ inverse.reshape(-1, dim).T).view(n, components, dim) - (inverse @ loc[..., None]).squeeze(-1)
        # E_q_i of the Mahalanobis term: that of the mean plus tr(S_k^-1 diag(var_i)).
        expected = white.pow(2).sum(-1) + variances @ inverse.pow(2).sum(1).T
        log_joint = log_weights - 0.5 * (expected + log_det + dim * math.log(2 * math.pi))
        bound = torch.logsumexp(log_joint, 1, keepdim=True)
        weight = (log_joint - bound).exp()  # responsibilities (n, K)
        total = weight.sum(0).clamp_min(1e-12)
        log_weights = (total / n).log()
        loc = weight.T @ means / total[:, None]
        # The weighted moments: sum_i w_ik (mu_i mu_i^T + diag(var_i)) / total_k - m_k m_k^T.
        second = (weight.T @ outer).view(components, dim, dim) + torch.diag_embed(weight.T @ variances)
        covariance = second / total[:, None, None] - loc[:, :, None] * loc[:, None, :]
        if bound.mean().item() - previous < EM_TOLERANCE:
            break
        previous = bound.mean().item()
    return log_weights, loc, torch.linalg.cholesky(covariance + ridge)


def _rows(vae: ConditionalVAE, y: Tensor) -> list[Tensor]:
    """Which images each row of the prior is fitted on: one row per class, or all for an unconditional VAE."""
    if vae.config.conditional:
        return [y == c for c in range(vae.config.num_classes)]
    return [torch.ones_like(y, dtype=torch.bool)]


def fit_class_prior(vae: ConditionalVAE, x: Tensor, y: Tensor, components: int = 1,
                    posteriors: tuple[Tensor, Tensor] | None = None) -> dict[str, int]:
    """Set `vae`'s prior to the mixture of `components` Gaussians fitted to each class's training posteriors
    (one for all images if the VAE is unconditional); `posteriors` = posterior_moments(vae, x, y) if
    already computed. Returns the number of images each row was fitted on."""
    means, variances = posteriors if posteriors is not None else posterior_moments(vae, x, y)
    groups = _rows(vae, y)
    fewest = min(int(group.sum()) for group in groups)
    if fewest < 2 * components:
        raise ValueError(f"fitting a prior of {components} Gaussian{'s' if components > 1 else ''} per class needs at least {2 * components} "
                         f"training images of every class; the fewest has {fewest}")
    fitted = [mixture_em(means[group], variances[group], components) for group in groups]
    vae.set_prior(*(torch.stack([part[i] for part in fitted]) for i in (1, 2, 0)))
    return {"images": len(y), "fewest_per_row": fewest}


def fit_prior_if_better(vae: ConditionalVAE, splits, validation: dict[str, float],
                        score: Callable[[ConditionalVAE], dict[str, float]],
                        echo: Callable[[str], None] = lambda line: None) -> tuple[dict[str, Any], dict[str, float]]:
    """Promotion's step for a VAE: fit the class prior on the training split with K = 1, 2, 4, ... Gaussians
    per class while the validation negative ELBO drops (`COMPONENTS`), and keep the best if it beats
    `validation` (the model's prior as it came), else put that prior back. Returns what was done (for
    the manifest) and the validation scores of the model as it now is. `echo` hears each step (minutes on a CPU)."""
    before = (vae.prior_loc.clone(), vae.prior_scale_tril.clone(), vae.prior_logits.clone())
    echo(f"fitting the sampling prior: encoding {len(splits.train_y):,} training images")
    posteriors = posterior_moments(vae, splits.train_x, splits.train_y)
    fewest = min(int(group.sum()) for group in _rows(vae, splits.train_y))
    tried: dict[int, dict[str, float]] = {}
    priors: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    for components in COMPONENTS:
        if components > 1 and 2 * components > fewest:
            break
        fitted = fit_class_prior(vae, splits.train_x, splits.train_y, components, posteriors)
        priors[components] = (vae.prior_loc.clone(), vae.prior_scale_tril.clone(), vae.prior_logits.clone())
        tried[components] = score(vae)
        echo(f"  K={components} Gaussian{'s' if components > 1 else ''}: val neg. ELBO {tried[components]['neg_elbo']:.2f}")
        if tried[components]["neg_elbo"] > min(t["neg_elbo"] for t in tried.values()):
            break  # more components stopped paying
    best = min(tried, key=lambda k: tried[k]["neg_elbo"])
    kept = tried[best]["neg_elbo"] < validation["neg_elbo"]
    vae.set_prior(*(priors[best] if kept else before))
    what = "class prior" if vae.config.conditional else "prior"
    shape = "1 Gaussian" if best == 1 else f"a mixture of {best} Gaussians"
    per = " per class" if vae.config.conditional else ""
    by_components = ", ".join(f"K={k}: {t['neg_elbo']:.2f}" for k, t in tried.items())
    summary = (f"{what} fitted on {fitted['images']:,} training images ({by_components}): "
               f"best {shape}{per}, val neg. ELBO {validation['neg_elbo']:.2f} -> {tried[best]['neg_elbo']:.2f}; "
               + ("kept" if kept else "not better, so the prior stays as it was"))
    record = {"step": "fit_class_prior", "kept": kept, "training_images": fitted["images"], "components": best,
              "val_neg_elbo_by_components": {str(k): t["neg_elbo"] for k, t in tried.items()},
              "val_neg_elbo_before": validation["neg_elbo"], "val_neg_elbo_fitted": tried[best]["neg_elbo"], "summary": summary}
    return record, (tried[best] if kept else validation)
