"""Class-conditional residual beta-VAE for 28x28 grayscale images with a Bernoulli decoder.

The encoder sees the image plus (when conditional) its label painted as a learned 28x28 channel;
the decoder sees z concatenated with the label embedding. Resolutions go 28 -> 14 -> 7 and back,
with `depth` residual blocks at each of the three resolutions on both sides (the decoder may have
its own width and depth: `decoder_width`, `decoder_depth`).

The prior p(z | y) is a mixture of K full-covariance Gaussians per class (one row for an
unconditional VAE): weights softmax(prior_logits[y]), means prior_loc[y, k], scale_tril
prior_scale_tril[y, k]. It is the standard normal (K = 1) while the model trains; promotion fits
it to the training images' posteriors with the encoder and decoder fixed (`fashion_tune.models.prior`).
Sampling, the KL term and the likelihood bound all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fashion_tune.util.errors import ConfigError

IMAGE_SIZE = 28
# exp(-30) and exp(20) bound the posterior variance away from 0 and inf, so the KL stays finite.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
MIXTURE_KL_SAMPLES = 16  # z ~ q per image for the KL against a mixture prior (no closed form)


@dataclass
class VAEConfig:
    """Shape of a ConditionalVAE; the defaults give about 3.48M parameters."""

    latent_dim: int = 32  # size of z
    num_classes: int = 10
    conditional: bool = True  # encoder, decoder and prior see the class label
    width: int = 32  # channels at 28x28; 2x at 14x14, 4x at 7x7
    depth: int = 3  # residual blocks per resolution, in the encoder and again in the decoder
    embed_dim: int = 32  # size of the class embedding
    # A wider or deeper decoder than the encoder draws finer detail from the same z:
    decoder_width: int | None = None  # the decoder's channels at 28x28 (2x at 14x14, 4x at 7x7); null: width's
    decoder_depth: int | None = None  # the decoder's residual blocks per resolution; null: depth's

    def __post_init__(self) -> None:
        for name in ("latent_dim", "num_classes", "width", "depth", "embed_dim", "decoder_width", "decoder_depth"):
            value = getattr(self, name)
            if value is None and name.startswith("decoder_"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"VAE {name}={value!r} must be a positive integer"
                                  + (" or null (the encoder's)" if name.startswith("decoder_") else ""))
        if not isinstance(self.conditional, bool):
            raise ConfigError(f"VAE conditional={self.conditional!r} must be true or false")


class ResidualBlock(nn.Module):
    """Pre-activation residual block: two 3x3 convs with BatchNorm and SiLU, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_stage(channels: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(depth)])


class ConditionalVAE(nn.Module):
    """Residual convolutional VAE, optionally conditioned on the class label in encoder and decoder."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        w, d = config.width, config.depth
        dw = w if config.decoder_width is None else config.decoder_width
        dd = d if config.decoder_depth is None else config.decoder_depth
        self.bottom_shape = (4 * dw, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
        flat = 4 * w * (IMAGE_SIZE // 4) ** 2
        extra = config.embed_dim if config.conditional else 0

        if config.conditional:
            self.embedding = nn.Embedding(config.num_classes, config.embed_dim)
            self.label_channel = nn.Linear(config.embed_dim, IMAGE_SIZE * IMAGE_SIZE)

        self.encoder = nn.Sequential(
            nn.Conv2d(2 if config.conditional else 1, w, 3, padding=1),
            residual_stage(w, d),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),  # 28 -> 14
            residual_stage(2 * w, d),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1),  # 14 -> 7
            residual_stage(4 * w, d),
            nn.BatchNorm2d(4 * w),
            nn.SiLU(),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(flat, config.latent_dim)
        self.to_logvar = nn.Linear(flat, config.latent_dim)

        self.from_latent = nn.Linear(config.latent_dim + extra, 4 * dw * (IMAGE_SIZE // 4) ** 2)
        self.decoder = nn.Sequential(
            residual_stage(4 * dw, dd),
            nn.ConvTranspose2d(4 * dw, 2 * dw, 4, stride=2, padding=1),  # 7 -> 14
            residual_stage(2 * dw, dd),
            nn.ConvTranspose2d(2 * dw, dw, 4, stride=2, padding=1),  # 14 -> 28
            residual_stage(dw, dd),
            nn.BatchNorm2d(dw),
            nn.SiLU(),
            nn.Conv2d(dw, 1, 3, padding=1),
        )

        rows, dim = (config.num_classes if config.conditional else 1), config.latent_dim
        self.register_buffer("prior_logits", torch.zeros(rows, 1))  # log mixture weights, (rows, K)
        self.register_buffer("prior_loc", torch.zeros(rows, 1, dim))
        self.register_buffer("prior_scale_tril", _identities(rows, 1, dim))
        self.register_load_state_dict_pre_hook(_prior_as_saved)
        self.register_load_state_dict_post_hook(self._note_prior)
        self._note_prior()

    def _embed(self, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("this VAE is conditional (conditional=True): pass a label per image")
        return self.embedding(labels)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_dim)."""
        if self.config.conditional:
            channel = self.label_channel(self._embed(labels)).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
            x = torch.cat([x, channel], dim=1)
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits (B, 1, 28, 28) for latents z."""
        if self.config.conditional:
            z = torch.cat([z, self._embed(labels)], dim=1)
        h = self.from_latent(z).view(-1, *self.bottom_shape)
        return self.decoder(h)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of a reconstruction through a sampled z, with the posterior's mu and logvar."""
        mu, logvar = self.encode(x, labels)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z, labels), mu, logvar

    # --- the prior p(z | y) -------------------------------------------------------------------

    @property
    def prior_components(self) -> int:
        """Gaussians per row of the prior: 1 for the standard normal and a moment-matched fit."""
        return self.prior_loc.shape[1]

    def set_prior(self, loc: torch.Tensor, scale_tril: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Make p(z | y) = sum_k softmax(logits[y])_k N(loc[y, k], L L^T), L = scale_tril[y, k]; shapes
        (rows, K, D), (rows, K, D, D) and (rows, K) (equal weights if None). One Gaussian per row may
        also come as (rows, D) and (rows, D, D)."""
        if loc.dim() == 2:
            loc, scale_tril = loc.unsqueeze(1), scale_tril.unsqueeze(1)
        rows, components, dim = loc.shape
        if (rows, dim) != tuple(self.prior_loc.shape[::2]) or scale_tril.shape != (rows, components, dim, dim):
            raise ValueError(f"a prior for this VAE needs loc ({self.prior_loc.shape[0]}, K, {dim}) and scale_tril "
                             f"(rows, K, D, D); got {tuple(loc.shape)} and {tuple(scale_tril.shape)}")
        logits = torch.zeros(rows, components) if logits is None else logits
        device = self.prior_loc.device
        # Assigned, not copied: the number of components may change.
        self.prior_loc = loc.detach().float().to(device)
        self.prior_scale_tril = scale_tril.detach().float().to(device)
        self.prior_logits = logits.detach().float().log_softmax(-1).to(device)
        self._note_prior()

    def _note_prior(self, *args) -> None:
        # Cached, so training steps need no device sync to know the prior is N(0, I).
        self.prior_is_standard = (self.prior_components == 1 and not self.prior_loc.any().item()
                                  and torch.equal(self.prior_scale_tril, _identities(*self.prior_loc.shape, device=self.prior_loc.device)))

    def _prior_rows(self, labels: torch.Tensor | None, count: int) -> torch.Tensor:
        if self.config.conditional:
            return labels.to(self.prior_loc.device)
        return torch.zeros(count, dtype=torch.long, device=self.prior_loc.device)

    def prior_latents(self, noise: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 1.0,
                      pick: torch.Tensor | None = None) -> torch.Tensor:
        """Draws from p(z | y) made from standard-normal noise (B, D): loc + temperature * L noise, with
        the mixture component chosen by `pick`, uniform numbers in [0, 1) (B,) that a prior of more
        than one component needs (`prior_picks`)."""
        if self.prior_is_standard:
            return temperature * noise
        rows = self._prior_rows(labels, len(noise))
        noise = noise.to(self.prior_loc.device)
        if self.prior_components == 1:
            component = torch.zeros_like(rows)
        elif pick is None:
            raise ValueError(f"this VAE's prior is a mixture of {self.prior_components} Gaussians: pass `pick` to choose the component")
        else:
            cumulative = self.prior_logits[rows].exp().cumsum(-1)
            component = torch.searchsorted(cumulative, pick.to(cumulative)[:, None]).squeeze(1).clamp_max(self.prior_components - 1)
        loc, tril = self.prior_loc[rows, component], self.prior_scale_tril[rows, component]
        return loc + temperature * (tril @ noise.unsqueeze(-1)).squeeze(-1)

    def prior_picks(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The uniform numbers `prior_latents` chooses mixture components with (None for one Gaussian)."""
        if self.prior_components == 1:
            return None
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(count, generator=generator, device=device)

    def prior_log_prob(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(z | y) in nats for latents z (B, D)."""
        const = 0.5 * self.config.latent_dim * math.log(2 * math.pi)
        if self.prior_is_standard:
            return -0.5 * z.pow(2).sum(-1) - const
        rows = self._prior_rows(labels, len(z))
        inverse, log_det = self._prior_inverse(), self._prior_log_det()
        white_loc = (inverse @ self.prior_loc.unsqueeze(-1)).squeeze(-1)  # L^-1 m per row and component
        out = torch.empty(len(z), dtype=z.dtype, device=z.device)
        for row in rows.unique().tolist():  # one row (class) at a time
            mine = rows == row
            # L_k^-1 (z - m_k) for every z and component in one matrix product: (n, K, D).
            white = (z[mine].to(inverse) @ inverse[row].flatten(0, 1).T).view(-1, *white_loc.shape[1:]) - white_loc[row]
            log_joint = self.prior_logits[row] - 0.5 * (white.pow(2).sum(-1) + log_det[row]) - const
            out[mine] = torch.logsumexp(log_joint, -1).to(z.dtype)
        return out

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z | x, y) || p(z | y)) per image, for the diagonal posterior N(mu, exp(logvar)): exact for
        a Gaussian prior, for a mixture the mean of log q(z) - log p(z) over MIXTURE_KL_SAMPLES z ~ q."""
        if self.prior_is_standard:
            return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        if self.prior_components > 1:
            return self._sampled_kl(mu, logvar, labels)
        rows = self._prior_rows(labels, len(mu))
        inverse = self._prior_inverse()[rows, 0]
        # With Sigma_p = L L^T: tr(Sigma_p^-1 Sigma_q) = |L^-1 diag(std_q)|_F^2, plus the Mahalanobis
        # term |L^-1 (mu_q - mu_p)|^2 and log det Sigma_p - log det Sigma_q.
        trace = (inverse.pow(2) * logvar.exp().unsqueeze(1)).sum((1, 2))
        mahalanobis = (inverse @ (mu - self.prior_loc[rows, 0]).unsqueeze(-1)).squeeze(-1).pow(2).sum(1)
        return 0.5 * (trace + mahalanobis - mu.shape[1] + self._prior_log_det()[rows, 0] - logvar.sum(1))

    def _sampled_kl(self, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        noise = torch.randn(MIXTURE_KL_SAMPLES, *mu.shape, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * noise  # (S, B, D)
        log_q = -0.5 * (noise.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
        repeated = None if labels is None else labels.repeat(MIXTURE_KL_SAMPLES)
        log_p = self.prior_log_prob(z.flatten(0, 1), repeated).view(MIXTURE_KL_SAMPLES, -1)
        return (log_q - log_p).mean(0)

    def _prior_inverse(self) -> torch.Tensor:
        """L^-1 per row and component (rows, K, D, D)."""
        identity = _identities(*self.prior_loc.shape, device=self.prior_scale_tril.device)
        return torch.linalg.solve_triangular(self.prior_scale_tril, identity, upper=False)

    def _prior_log_det(self) -> torch.Tensor:
        """log det Sigma_p per row and component (rows, K): 2 sum log diag L."""
        return 2 * self.prior_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def loss_terms(self, x: torch.Tensor, labels: torch.Tensor | None, beta: float) -> dict[str, torch.Tensor]:
        """Per-image means in nats: recon, kl, neg_elbo = recon + kl, and the training loss recon + beta*kl."""
        logits, mu, logvar = self(x, labels)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = self.kl(mu, logvar, labels).mean()
        return {"recon": recon, "kl": kl, "neg_elbo": recon + kl, "loss": recon + beta * kl}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel probabilities decoded from the posterior mean."""
        mu, _ = self.encode(x, labels)
        return torch.sigmoid(self.decode(mu, labels))

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Pixel probabilities (N, 1, 28, 28), one image per label: z = loc + temperature * L noise from p(z | y)
        (for a mixture prior, from the component the generator's next uniform number picks).

        An unconditional VAE also takes a plain count; a conditional one needs the labels.
        """
        device = next(self.parameters()).device
        if isinstance(labels, int):
            if self.config.conditional:
                raise ValueError("this VAE is conditional (conditional=True): pass a tensor of labels, not a count")
            count, labels = labels, None
        else:
            labels = torch.as_tensor(labels, dtype=torch.long, device=device)
            count = len(labels)
            if not self.config.conditional:
                labels = None
        # Drawn where the generator lives (CPU by default), so a seed gives the same z on any device.
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(count, self.config.latent_dim, generator=generator, device=noise_device).to(device)
        pick = self.prior_picks(count, generator)
        return torch.sigmoid(self.decode(self.prior_latents(noise, labels, temperature, pick), labels))


def _prior_as_saved(module: ConditionalVAE, state_dict, prefix: str, *args) -> None:
    """Load the prior a state dict holds, with as many components as it has. Checkpoints from before
    the prior was a buffer hold none (theirs is the standard normal); those from before mixtures hold
    one Gaussian per row as (rows, D) and (rows, D, D) and no weights."""
    rows, _, dim = module.prior_loc.shape
    loc = state_dict.setdefault(prefix + "prior_loc", torch.zeros(rows, dim))
    state_dict.setdefault(prefix + "prior_scale_tril", _identities(rows, 1, dim)[:, 0])
    if loc.dim() == 2:
        for name in ("prior_loc", "prior_scale_tril"):
            state_dict[prefix + name] = state_dict[prefix + name].unsqueeze(1)
    components = state_dict[prefix + "prior_loc"].shape[1]
    state_dict.setdefault(prefix + "prior_logits", torch.full((rows, components), -math.log(components)))
    if components != module.prior_components:  # make room for them
        module.prior_logits = torch.zeros(rows, components, device=module.prior_loc.device)
        module.prior_loc = torch.zeros(rows, components, dim, device=module.prior_loc.device)
        module.prior_scale_tril = _identities(rows, components, dim, device=module.prior_loc.device)


def _identities(rows: int, components: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identity matrices (rows, components, dim, dim): the standard normal's scale_tril everywhere."""
    return torch.eye(dim, device=device).repeat(rows, components, 1, 1)
