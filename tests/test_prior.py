"""The VAE's fitted class prior: its densities against torch's own, the closed-form fit, loading."""

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from fashion_tune.models import ConditionalVAE, VAEConfig
from fashion_tune.prior import fit_class_prior, moment_matched, posterior_moments

D = 3


def tiny_vae(conditional: bool = True) -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(VAEConfig(latent_dim=D, width=4, depth=1, embed_dim=4, conditional=conditional)).eval()


def random_prior(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(rows, D, generator=g)
    a = torch.randn(rows, D, D, generator=g)
    return loc, torch.linalg.cholesky(a @ a.transpose(1, 2) + 0.5 * torch.eye(D))


def posteriors(count: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, D, generator=g), torch.randn(count, D, generator=g) * 0.5, torch.arange(count) % 10


def test_a_new_vae_has_the_standard_prior_and_set_prior_changes_it():
    vae = tiny_vae()
    assert vae.prior_is_standard and vae.prior_loc.shape == (10, D) and vae.prior_scale_tril.shape == (10, D, D)
    vae.set_prior(*random_prior(10))
    assert not vae.prior_is_standard
    assert tiny_vae(conditional=False).prior_loc.shape == (1, D)


def test_kl_and_log_prob_match_torch_distributions_for_a_fitted_prior():
    vae = tiny_vae()
    loc, tril = random_prior(10)
    vae.set_prior(loc, tril)
    mu, logvar, y = posteriors(40)
    q = MultivariateNormal(mu, scale_tril=torch.diag_embed((0.5 * logvar).exp()))
    p = MultivariateNormal(loc[y], scale_tril=tril[y])
    torch.testing.assert_close(vae.kl(mu, logvar, y), kl_divergence(q, p), rtol=1e-4, atol=1e-4)
    z = torch.randn(40, D)
    torch.testing.assert_close(vae.prior_log_prob(z, y), p.log_prob(z), rtol=1e-4, atol=1e-4)
    noise = torch.randn(40, D)
    torch.testing.assert_close(vae.prior_latents(noise, y), loc[y] + (tril[y] @ noise[:, :, None])[..., 0])


def test_the_standard_shortcut_agrees_with_the_general_formulas():
    vae = tiny_vae()
    mu, logvar, y = posteriors(40)
    z = torch.randn(40, D)
    standard = (vae.kl(mu, logvar, y), vae.prior_log_prob(z, y), vae.prior_latents(z, y, temperature=0.5))
    vae.prior_is_standard = False  # the identity prior through the general path
    general = (vae.kl(mu, logvar, y), vae.prior_log_prob(z, y), vae.prior_latents(z, y, temperature=0.5))
    for a, b in zip(standard, general):
        torch.testing.assert_close(a, b)


def test_moment_matching_is_the_gaussian_closest_to_the_posteriors():
    """No other Gaussian has a smaller average KL from the posteriors (the ELBO's prior term)."""
    mu, logvar, _ = posteriors(200)
    loc, tril = moment_matched(mu.double(), logvar.double().exp())
    q = MultivariateNormal(mu.double(), scale_tril=torch.diag_embed((0.5 * logvar.double()).exp()))

    def average_kl(l, t):
        return kl_divergence(q, MultivariateNormal(l.expand(len(mu), D), scale_tril=t.expand(len(mu), D, D))).mean()

    best = average_kl(loc, tril)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        assert average_kl(loc + 0.05 * torch.randn(D, generator=g, dtype=torch.float64), tril) > best
        nudged = tril + torch.tril(0.05 * torch.randn(D, D, generator=g, dtype=torch.float64))
        assert average_kl(loc, nudged) > best
    assert average_kl(torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)) > best


@pytest.mark.parametrize("conditional", [True, False])
def test_fitting_lowers_the_kl_of_the_images_it_was_fitted_on(conditional):
    vae = tiny_vae(conditional)
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(300) % 10
    mu, var = posterior_moments(vae, x, y)
    labels = y if conditional else None
    before = vae.kl(mu.float(), var.log().float(), labels).mean()
    fitted = fit_class_prior(vae, x, y)
    assert fitted == {"images": 300, "fewest_per_row": 30 if conditional else 300}
    assert not vae.prior_is_standard
    assert vae.kl(mu.float(), var.log().float(), labels).mean() < before
    rows = y[:5] if conditional else torch.zeros(5, dtype=torch.long)
    # Temperature 0 decodes the prior's mean of each class.
    expected = torch.sigmoid(vae.decode(vae.prior_loc[rows], labels[:5] if conditional else None))
    torch.testing.assert_close(vae.sample(y[:5] if conditional else 5, temperature=0.0), expected)


def test_fitting_needs_two_images_of_every_class():
    with pytest.raises(ValueError, match="at least 2 training images of every class"):
        fit_class_prior(tiny_vae(), torch.rand(9, 1, 28, 28), torch.arange(9))


def test_the_prior_travels_in_the_state_dict_and_old_checkpoints_load_as_standard():
    vae = tiny_vae()
    vae.set_prior(*random_prior(10))
    again = tiny_vae()
    again.load_state_dict(vae.state_dict())
    assert not again.prior_is_standard
    torch.testing.assert_close(again.prior_scale_tril, vae.prior_scale_tril)
    old = {k: v for k, v in vae.state_dict().items() if not k.startswith("prior_")}
    again.load_state_dict(old)  # strict: nothing missing, and the prior it had is not kept
    assert again.prior_is_standard
