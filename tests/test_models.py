"""The networks (shapes, losses, sampling, parameter counts) and the beta schedules."""

import pytest
import torch
import torch.nn.functional as F

from fashion_tune.util.errors import ConfigError
from fashion_tune.models import CNNConfig, ConditionalVAE, FashionCNN, VAEConfig, count_parameters
from fashion_tune.training.schedules import BETA_SCHEDULES, BetaSchedule

# Parameter counts of the original project's models; the defaults must land within 3%.
ORIGINAL_VAE_PARAMETERS = 3_477_328
ORIGINAL_CNN_PARAMETERS = 688_138

TINY_VAE = dict(width=8, depth=1, embed_dim=8, latent_dim=8)
TINY_CNN = dict(width=8, depth=1, dropout=0.25)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def tiny_vae(**overrides) -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(VAEConfig(**{**TINY_VAE, **overrides}))


def tiny_cnn(**overrides) -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(CNNConfig(**{**TINY_CNN, **overrides}))


# ---- parameter counts ----


def test_default_vae_parameter_count_matches_original():
    n = count_parameters(ConditionalVAE(VAEConfig()))
    print(f"default VAE parameters: {n:,} (original {ORIGINAL_VAE_PARAMETERS:,})")
    assert abs(n / ORIGINAL_VAE_PARAMETERS - 1) <= 0.03


def test_default_cnn_parameter_count_matches_original():
    n = count_parameters(FashionCNN(CNNConfig()))
    print(f"default CNN parameters: {n:,} (original {ORIGINAL_CNN_PARAMETERS:,})")
    assert abs(n / ORIGINAL_CNN_PARAMETERS - 1) <= 0.03


def test_tiny_configs_are_small_and_width_depth_scale_the_models():
    assert count_parameters(tiny_vae()) < 200_000
    assert count_parameters(tiny_cnn()) < 30_000
    assert count_parameters(tiny_vae(width=16)) > count_parameters(tiny_vae())
    assert count_parameters(tiny_vae(depth=2)) > count_parameters(tiny_vae())
    assert count_parameters(tiny_cnn(width=16)) > count_parameters(tiny_cnn())
    assert count_parameters(tiny_cnn(depth=2)) > count_parameters(tiny_cnn())


def test_the_decoder_may_be_wider_or_deeper_than_the_encoder():
    base = tiny_vae()
    wide, deep = tiny_vae(decoder_width=16), tiny_vae(decoder_depth=2)
    same = tiny_vae(decoder_width=TINY_VAE["width"], decoder_depth=TINY_VAE["depth"])
    assert count_parameters(same) == count_parameters(base)  # None is the encoder's shape
    encoder = sum(p.numel() for p in base.encoder.parameters())
    for bigger in (wide, deep):
        assert sum(p.numel() for p in bigger.encoder.parameters()) == encoder  # the encoder is unchanged
        assert sum(p.numel() for p in bigger.decoder.parameters()) > sum(p.numel() for p in base.decoder.parameters())
        x, y = images(4), torch.arange(4)
        logits, mu, _ = bigger(x, y)
        assert logits.shape == x.shape and mu.shape == (4, TINY_VAE["latent_dim"])
        assert bigger.sample(y).shape == x.shape
    assert wide.decoder[0][0].body[2].in_channels == 4 * 16  # the widths double down to 28x28: 64, 32, 16
    assert wide.decoder[-1].in_channels == 16
    assert len(deep.decoder[0]) == 2 and len(base.decoder[0]) == 1


def test_count_parameters_skips_frozen_parameters_and_buffers():
    model = tiny_cnn()
    total = sum(p.numel() for p in model.parameters())
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.classifier.weight.numel()


# ---- VAE ----


@pytest.mark.parametrize("conditional", [True, False])
def test_vae_method_shapes(conditional):
    model = tiny_vae(conditional=conditional).eval()
    x, labels = images(5), torch.arange(5)
    labels = labels if conditional else None
    mu, logvar = model.encode(x, labels)
    assert mu.shape == logvar.shape == (5, 8)
    assert model.decode(mu, labels).shape == (5, 1, 28, 28)
    logits, mu2, logvar2 = model(x, labels)
    assert logits.shape == (5, 1, 28, 28) and mu2.shape == logvar2.shape == (5, 8)
    assert model.reconstruct(x, labels).shape == (5, 1, 28, 28)
    assert model.sample(torch.arange(3) if conditional else 3).shape == (3, 1, 28, 28)


def test_default_vae_runs():
    model = ConditionalVAE(VAEConfig()).eval()
    x, labels = images(2), torch.tensor([3, 7])
    assert model.reconstruct(x, labels).shape == (2, 1, 28, 28)
    assert model.sample(labels).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("conditional", [True, False])
def test_vae_loss_terms_are_consistent_nats_per_image(conditional):
    model = tiny_vae(conditional=conditional)
    x, labels = images(6), torch.arange(6)
    torch.manual_seed(1)
    terms = model.loss_terms(x, labels, beta=0.5)
    assert set(terms) == {"recon", "kl", "neg_elbo", "loss"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert terms["kl"] >= 0
    torch.testing.assert_close(terms["neg_elbo"], terms["recon"] + terms["kl"])
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["kl"])

    # Same noise again: recon is BCE summed over 784 pixels, kl the analytic Gaussian KL, both averaged over images.
    torch.manual_seed(1)
    logits, mu, logvar = model(x, labels)
    recon = sum(F.binary_cross_entropy_with_logits(logits[i], x[i], reduction="sum") for i in range(6)) / 6
    posterior = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(1).mean()
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)


def test_vae_loss_uses_beta():
    model = tiny_vae()
    x, labels = images(4), torch.arange(4)
    for beta in (0.0, 0.3, 4.0):
        terms = model.loss_terms(x, labels, beta=beta)
        assert terms["kl"] > 0
        torch.testing.assert_close(terms["loss"], terms["recon"] + beta * terms["kl"])


def test_vae_forward_samples_z_from_the_global_rng():
    model = tiny_vae().eval()
    x, labels = images(3), torch.arange(3)
    torch.manual_seed(5)
    first = model(x, labels)[0]
    torch.manual_seed(5)
    assert torch.equal(model(x, labels)[0], first)
    assert not torch.equal(model(x, labels)[0], first)


def test_vae_logvar_is_clamped_for_huge_inputs():
    model = tiny_vae().eval()
    with torch.no_grad():
        model.to_logvar.bias.fill_(1e4)
    terms = model.loss_terms(images(2), torch.arange(2), beta=1.0)
    assert all(torch.isfinite(t) for t in terms.values())


def test_vae_conditions_both_encoder_and_decoder_on_the_label():
    model = tiny_vae().eval()
    x, z = images(4), torch.randn(4, 8)
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert not torch.allclose(model.encode(x, zeros)[0], model.encode(x, ones)[0])
    assert not torch.allclose(model.decode(z, zeros), model.decode(z, ones))


def test_conditional_vae_needs_labels():
    model = tiny_vae().eval()
    with pytest.raises(ValueError, match="conditional"):
        model.encode(images(2), None)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(3)


def test_vae_reconstruct_and_sample_are_probabilities():
    model = tiny_vae().eval()
    x, labels = images(4), torch.arange(4)
    for out in (model.reconstruct(x, labels), model.sample(labels), model.sample(labels, temperature=3.0)):
        assert out.min() >= 0 and out.max() <= 1
    assert not model.reconstruct(x, labels).requires_grad


def test_vae_reconstruct_decodes_the_posterior_mean():
    model = tiny_vae().eval()
    x, labels = images(3), torch.arange(3)
    mu, _ = model.encode(x, labels)
    torch.testing.assert_close(model.reconstruct(x, labels), torch.sigmoid(model.decode(mu, labels)))


def test_vae_sample_is_reproducible_with_a_seeded_generator():
    model = tiny_vae().eval()
    labels = torch.tensor([0, 1, 2, 2])
    a = model.sample(labels, generator=torch.Generator().manual_seed(7))
    b = model.sample(labels, generator=torch.Generator().manual_seed(7))
    c = model.sample(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_vae_sample_honours_labels_and_temperature():
    model = tiny_vae().eval()
    assert model.sample(torch.arange(7)).shape[0] == 7
    assert model.sample([1, 2]).shape[0] == 2
    as_zero = model.sample(torch.zeros(3, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    as_five = model.sample(torch.full((3,), 5), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(as_zero, as_five)
    # At temperature 0 every z is the prior mean, so images depend on the label alone.
    cold = model.sample(torch.tensor([4, 4, 6]), temperature=0.0)
    assert torch.allclose(cold[0], cold[1]) and not torch.allclose(cold[0], cold[2])


def test_unconditional_vae_ignores_labels():
    model = tiny_vae(conditional=False).eval()
    assert not hasattr(model, "embedding")
    as_zero = model.sample(torch.zeros(3, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    as_five = model.sample(torch.full((3,), 5), generator=torch.Generator().manual_seed(0))
    by_count = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(as_zero, as_five) and torch.equal(as_zero, by_count)
    x = images(3)
    torch.testing.assert_close(model.reconstruct(x, torch.arange(3)), model.reconstruct(x))


@pytest.mark.parametrize("conditional", [True, False])
def test_vae_gradients_reach_every_parameter(conditional):
    model = tiny_vae(conditional=conditional)
    terms = model.loss_terms(images(10), torch.arange(10), beta=1.0)
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---- CNN ----


def test_cnn_shapes():
    model = tiny_cnn().eval()
    x = images(5)
    assert model.feature_dim == 32
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, model.feature_dim)
    default = FashionCNN(CNNConfig()).eval()
    assert default(images(2)).shape == (2, 10)
    assert default.features(images(2)).shape == (2, default.feature_dim)
    assert tiny_cnn(num_classes=3).eval()(x).shape == (5, 3)


def test_cnn_logits_are_the_final_linear_of_features():
    model = tiny_cnn().eval()
    x = images(4)
    torch.testing.assert_close(model(x), model.classifier(model.features(x)))


def test_cnn_normalises_with_fashion_mnist_statistics_stored_as_buffers():
    model = tiny_cnn().eval()
    state = model.state_dict()
    assert state["mean"].item() == pytest.approx(0.2860)
    assert state["std"].item() == pytest.approx(0.3530)
    x = images(3)
    # A first layer that sees the raw [0, 1] pixels would give a different answer.
    standardised = (x - 0.2860) / 0.3530
    torch.testing.assert_close(model.features(x), model.body(standardised))
    assert not torch.allclose(model.features(x), model.body(x))


def test_cnn_dropout_acts_in_training_only():
    x = images(8)
    model = tiny_cnn(dropout=0.5).train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    no_dropout = tiny_cnn(dropout=0.0).train()
    assert torch.equal(no_dropout(x), no_dropout(x))


def test_cnn_gradients_reach_every_parameter():
    model = tiny_cnn()
    loss = F.cross_entropy(model(images(16)), torch.arange(16) % 10)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---- config validation ----


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: VAEConfig(width=0), "width"),
        (lambda: VAEConfig(depth=-1), "depth"),
        (lambda: VAEConfig(latent_dim=0), "latent_dim"),
        (lambda: VAEConfig(embed_dim=2.5), "embed_dim"),
        (lambda: VAEConfig(num_classes=0), "num_classes"),
        (lambda: VAEConfig(conditional="yes"), "conditional"),
        (lambda: VAEConfig(decoder_width=0), "decoder_width"),
        (lambda: VAEConfig(decoder_depth=1.5), "decoder_depth"),
        (lambda: CNNConfig(width=0), "width"),
        (lambda: CNNConfig(depth=0), "depth"),
        (lambda: CNNConfig(dropout=1.0), "dropout"),
        (lambda: CNNConfig(dropout=-0.1), "dropout"),
        (lambda: BetaSchedule(kind="exponential"), "beta_schedule"),
        (lambda: BetaSchedule(start=-0.1), "beta_start"),
        (lambda: BetaSchedule(end=-1.0), "beta_end"),
        (lambda: BetaSchedule(warmup=0.0), "beta_warmup"),
        (lambda: BetaSchedule(warmup=1.5), "beta_warmup"),
        (lambda: BetaSchedule(cycles=0), "beta_cycles"),
    ],
)
def test_invalid_configs_raise_config_error_naming_the_key(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert key in message and "\n" not in message


def test_unknown_beta_schedule_lists_the_allowed_kinds():
    with pytest.raises(ConfigError) as info:
        BetaSchedule(kind="exponential")
    assert all(kind in str(info.value) for kind in BETA_SCHEDULES)


def test_default_configs_are_valid():
    VAEConfig(), CNNConfig(), BetaSchedule()
    assert BetaSchedule() == BetaSchedule(kind="linear", start=0.1, end=1.0, warmup=0.5, cycles=4)


# ---- beta schedules ----


def test_constant_schedule_is_end_throughout():
    schedule = BetaSchedule(kind="constant", start=0.1, end=0.7)
    assert [schedule(e, 10) for e in range(10)] == [0.7] * 10


@pytest.mark.parametrize("total", [10, 7, 1])
def test_linear_schedule_warms_up_then_holds(total):
    schedule = BetaSchedule(kind="linear", start=0.1, end=1.0, warmup=0.5)
    values = [schedule(e, total) for e in range(total + 3)]
    assert values[0] == 0.1
    warmup_epochs = 0.5 * total
    for epoch, value in enumerate(values):
        if epoch >= warmup_epochs:
            assert value == pytest.approx(1.0), epoch  # reached at the end of warm-up and held after
        else:
            assert value == pytest.approx(0.1 + 0.9 * epoch / warmup_epochs), epoch
    assert values == sorted(values)


def test_linear_schedule_matches_the_original():
    # The original: 0.1 -> 1.0 over the first half of training.
    values = [BetaSchedule()(e, 10) for e in range(10)]
    assert values == pytest.approx([0.1, 0.28, 0.46, 0.64, 0.82, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_linear_schedule_with_full_warmup_ramps_all_training():
    values = [BetaSchedule(kind="linear", start=0.0, end=1.0, warmup=1.0)(e, 4) for e in range(5)]
    assert values == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_cyclical_schedule_restarts_every_cycle():
    schedule = BetaSchedule(kind="cyclical", start=0.0, end=2.0, warmup=0.5, cycles=4)
    values = [schedule(e, 20) for e in range(20)]
    one_cycle = [0.0, 0.8, 1.6, 2.0, 2.0]  # 5 epochs per cycle, ramping over the first 2.5
    assert values == pytest.approx(one_cycle * 4)


def test_cyclical_schedule_with_uneven_cycles_still_restarts_at_start():
    schedule = BetaSchedule(kind="cyclical", start=0.1, end=1.0, warmup=0.5, cycles=4)
    values = [schedule(e, 10) for e in range(10)]
    assert values == pytest.approx([0.1, 0.7, 1.0] * 3 + [0.1])


def test_one_cycle_is_the_linear_schedule():
    cyclical = BetaSchedule(kind="cyclical", cycles=1, warmup=0.3)
    linear = BetaSchedule(kind="linear", warmup=0.3)
    assert [cyclical(e, 12) for e in range(12)] == [linear(e, 12) for e in range(12)]


def test_schedule_rejects_bad_epochs():
    with pytest.raises(ConfigError, match="total_epochs"):
        BetaSchedule()(0, 0)
    with pytest.raises(ConfigError, match="epoch"):
        BetaSchedule()(-1, 10)
