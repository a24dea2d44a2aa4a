"""The VAE's class prior, fitted after training: the Gaussian per class that maximises the ELBO.

A VAE trains against the standard normal prior p(z) = N(0, I), but its encoder's posteriors do
not fill that prior evenly: raw samples then come from regions the decoder saw little of. With
the encoder and decoder fixed, the ELBO's only term that depends on the prior is
-E_x KL(q(z | x, y) || p(z | y)), and over Gaussians p(z | y) = N(m, S) it is largest in closed
form where p matches the moments of the class's aggregate posterior:

    m = mean over the class's training images of mu(x),
    S = mean of diag(exp(logvar(x))) + covariance of mu(x).

So `fit_class_prior` can only raise the training ELBO; promotion keeps the fitted prior only when
it also raises the validation ELBO (`fashion_tune.promote`). It is fitted on the training split
alone and needs no sampling: the same weights and images give the same prior.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from fashion_tune.models import ConditionalVAE
from fashion_tune.sampling import evaluating

ENCODE_BATCH = 1_000


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


def fit_class_prior(vae: ConditionalVAE, x: Tensor, y: Tensor) -> dict[str, int]:
    """Set `vae`'s prior to the moment-matched Gaussian of each class's training posteriors (one for all
    images if the VAE is unconditional). Returns the number of images each row was fitted on."""
    means, variances = posterior_moments(vae, x, y)
    groups = [y == c for c in range(vae.config.num_classes)] if vae.config.conditional else [torch.ones_like(y, dtype=torch.bool)]
    if any(int(group.sum()) < 2 for group in groups):
        raise ValueError("fitting the class prior needs at least 2 training images of every class")
    fitted = [moment_matched(means[group], variances[group]) for group in groups]
    vae.set_prior(torch.stack([loc for loc, _ in fitted]).float(), torch.stack([tril for _, tril in fitted]).float())
    return {"images": len(y), "fewest_per_row": min(int(group.sum()) for group in groups)}


def fit_prior_if_better(vae: ConditionalVAE, splits, validation: dict[str, float],
                        score: Callable[[ConditionalVAE], dict[str, float]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Promotion's step for a VAE: fit the class prior on the training split, keep it if the validation
    negative ELBO (`validation`, scored with the model's prior as it came) goes down, else put that prior
    back. Returns what was done (for the manifest) and the validation scores of the model as it now is."""
    before = (vae.prior_loc.clone(), vae.prior_scale_tril.clone())
    fitted = fit_class_prior(vae, splits.train_x, splits.train_y)
    after = score(vae)
    kept = after["neg_elbo"] < validation["neg_elbo"]
    if not kept:
        vae.set_prior(*before)
    what = "class prior fitted" if vae.config.conditional else "prior fitted"
    summary = (f"{what} on {fitted['images']:,} training images: val neg. ELBO {validation['neg_elbo']:.2f} -> "
               f"{after['neg_elbo']:.2f}; " + ("kept" if kept else "not better, so the prior stays as it was"))
    record = {"step": "fit_class_prior", "kept": kept, "training_images": fitted["images"],
              "val_neg_elbo_before": validation["neg_elbo"], "val_neg_elbo_fitted": after["neg_elbo"], "summary": summary}
    return record, (after if kept else validation)
