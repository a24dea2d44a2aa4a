"""The VAE's fitted class prior: its densities against torch's own, the closed-form and EM fits, the
choice of the number of Gaussians, loading."""

from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, kl_divergence

from fashion_tune.models import ConditionalVAE, VAEConfig
from fashion_tune.models import vae as vae_module
from fashion_tune.models.prior import fit_class_prior, fit_prior_if_better, mixture_em, moment_matched, posterior_moments

D = 3


def tiny_vae(conditional: bool = True) -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(VAEConfig(latent_dim=D, width=4, depth=1, embed_dim=4, conditional=conditional)).eval()


def random_prior(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(rows, D, generator=g)
    a = torch.randn(rows, D, D, generator=g)
    return loc, torch.linalg.cholesky(a @ a.transpose(1, 2) + 0.5 * torch.eye(D))


def random_mixture(rows: int, components: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loc, tril = random_prior(rows * components, seed)
    logits = torch.randn(rows, components, generator=torch.Generator().manual_seed(seed + 1))
    return 3 * loc.view(rows, components, D), tril.view(rows, components, D, D), logits


def torch_mixture(loc, tril, logits, y) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(logits=logits[y]), MultivariateNormal(loc[y], scale_tril=tril[y]))


def posteriors(count: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, D, generator=g), torch.randn(count, D, generator=g) * 0.5, torch.arange(count) % 10


def test_a_new_vae_has_the_standard_prior_and_set_prior_changes_it():
    vae = tiny_vae()
    assert vae.prior_is_standard and vae.prior_components == 1
    assert vae.prior_loc.shape == (10, 1, D) and vae.prior_scale_tril.shape == (10, 1, D, D) and vae.prior_logits.shape == (10, 1)
    vae.set_prior(*random_prior(10))
    assert not vae.prior_is_standard and vae.prior_loc.shape == (10, 1, D)
    vae.set_prior(*random_mixture(10, 3))
    assert vae.prior_components == 3 and vae.prior_logits.exp().sum(1).allclose(torch.ones(10))
    with pytest.raises(ValueError, match="needs loc"):
        vae.set_prior(torch.zeros(9, 2, D), torch.eye(D).repeat(9, 2, 1, 1))
    assert tiny_vae(conditional=False).prior_loc.shape == (1, 1, D)


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


def test_a_mixture_prior_matches_torch_distributions(monkeypatch):
    vae = tiny_vae()
    loc, tril, logits = random_mixture(10, 3)
    vae.set_prior(loc, tril, logits)
    mu, logvar, y = posteriors(40)
    p = torch_mixture(loc, tril, logits, y)
    z = torch.randn(40, D)
    torch.testing.assert_close(vae.prior_log_prob(z, y), p.log_prob(z), rtol=1e-4, atol=1e-4)
    # The KL has no closed form: vae.kl averages log q - log p over samples; with many, it is the KL.
    q = MultivariateNormal(mu, scale_tril=torch.diag_embed((0.5 * logvar).exp()))
    draws = q.sample((20_000,))
    reference = (q.log_prob(draws) - p.log_prob(draws)).mean(0)
    monkeypatch.setattr(vae_module, "MIXTURE_KL_SAMPLES", 20_000)
    torch.testing.assert_close(vae.kl(mu, logvar, y), reference, rtol=0, atol=0.15)
    # Draws: pick chooses the component by the class's weights; many draws have the mixture's moments.
    with pytest.raises(ValueError, match="pass `pick`"):
        vae.prior_latents(torch.randn(5, D), y[:5])
    g = torch.Generator().manual_seed(4)
    count, label = 40_000, torch.full((40_000,), 7)
    draws = vae.prior_latents(torch.randn(count, D, generator=g), label, pick=vae.prior_picks(count, g))
    weights = logits[7].softmax(0)
    mean = (weights[:, None] * loc[7]).sum(0)
    second = (weights[:, None, None] * (tril[7] @ tril[7].transpose(1, 2) + loc[7, :, :, None] * loc[7, :, None, :])).sum(0)
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.1)
    torch.testing.assert_close(draws.T.cov(correction=0), second - mean[:, None] * mean, rtol=0.05, atol=0.3)


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
    expected = torch.sigmoid(vae.decode(vae.prior_loc[rows, 0], labels[:5] if conditional else None))
    torch.testing.assert_close(vae.sample(y[:5] if conditional else 5, temperature=0.0), expected)


def test_fitting_needs_two_images_of_every_class_per_component():
    with pytest.raises(ValueError, match="at least 2 training images of every class"):
        fit_class_prior(tiny_vae(), torch.rand(9, 1, 28, 28), torch.arange(9))
    with pytest.raises(ValueError, match="prior of 4 Gaussians per class needs at least 8"):
        fit_class_prior(tiny_vae(), torch.rand(70, 1, 28, 28), torch.arange(70) % 10, components=4)


def test_em_with_one_component_is_moment_matching_and_finds_separate_clusters():
    mu, logvar, _ = posteriors(300)
    variances = logvar.double().exp() * 0.01
    log_weights, loc, tril = mixture_em(mu.double(), variances, 1)
    expected = moment_matched(mu.double(), variances)
    torch.testing.assert_close((loc[0], tril[0]), expected)
    torch.testing.assert_close(log_weights, torch.zeros(1, dtype=torch.float64))
    # Two tight clusters, 1/3 and 2/3 of the posteriors: EM with K = 2 finds both and their shares.
    centres = torch.tensor([[-5.0, 0.0, 1.0], [4.0, 2.0, -1.0]], dtype=torch.float64)
    member = (torch.arange(300) % 3 != 0).long()
    means = centres[member] + 0.3 * mu.double()
    log_weights, loc, tril = mixture_em(means, variances, 2)
    order = loc[:, 0].argsort()
    torch.testing.assert_close(loc[order], centres, rtol=0, atol=0.1)
    torch.testing.assert_close(log_weights[order].exp(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), rtol=0, atol=0.01)
    # ... and that mixture explains the posteriors better (the ELBO's prior term) than one Gaussian.
    z = means + variances.sqrt() * torch.randn(300, D, dtype=torch.float64)
    one = MultivariateNormal(expected[0], scale_tril=expected[1]).log_prob(z).mean()
    two = MixtureSameFamily(Categorical(logits=log_weights), MultivariateNormal(loc, scale_tril=tril)).log_prob(z).mean()
    assert two > one + 1.0


def test_promotion_doubles_the_components_while_validation_improves_and_keeps_only_a_gain():
    vae = tiny_vae()
    splits = SimpleNamespace(train_x=torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(5)), train_y=torch.arange(400) % 10)
    scored = []

    def score(model, by_components={1: 100.0, 2: 99.0, 4: 98.5, 8: 98.7, 16: 90.0}):
        scored.append(model.prior_components)
        return {"neg_elbo": by_components[model.prior_components]}

    record, validation = fit_prior_if_better(vae, splits, {"neg_elbo": 101.0}, score)
    assert scored == [1, 2, 4, 8]  # stopped when 8 did worse than 4; 16 never tried
    assert record["kept"] and record["components"] == 4 and validation == {"neg_elbo": 98.5}
    assert record["val_neg_elbo_by_components"] == {"1": 100.0, "2": 99.0, "4": 98.5, "8": 98.7}
    assert vae.prior_components == 4 and "a mixture of 4 Gaussians per class" in record["summary"]

    vae = tiny_vae()
    record, validation = fit_prior_if_better(vae, splits, {"neg_elbo": 97.0}, score)
    assert not record["kept"] and validation == {"neg_elbo": 97.0} and vae.prior_is_standard


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
    # Before mixtures: one Gaussian per row as (rows, D) and (rows, D, D), no weights.
    loc, tril = random_prior(10)
    single = {**old, "prior_loc": loc, "prior_scale_tril": tril}
    again.load_state_dict(single)
    torch.testing.assert_close((again.prior_loc[:, 0], again.prior_scale_tril[:, 0]), (loc, tril))
    assert again.prior_logits.shape == (10, 1) and not again.prior_is_standard
    # A mixture loads into a fresh model, which makes room for its components.
    vae.set_prior(*random_mixture(10, 5))
    fresh = tiny_vae()
    fresh.load_state_dict(vae.state_dict())
    assert fresh.prior_components == 5
    torch.testing.assert_close(fresh.prior_log_prob(torch.ones(3, D), torch.arange(3)), vae.prior_log_prob(torch.ones(3, D), torch.arange(3)))
