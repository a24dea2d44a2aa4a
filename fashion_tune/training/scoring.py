"""What a model scores on a set of images: the one place validation and test numbers are computed.

Training validates every epoch with `validation_metrics`, promotion re-scores champion and
challenger with the same functions, and grading reports test numbers with them, so a number
means the same everywhere. Scores are deterministic: the VAE's one z draw per image comes from
a fixed seed (and its binarized images from another), whatever the run's own seed, so every
trial and every champion is measured with the same noise. They run in fp32 and in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.models import ConditionalVAE, FashionCNN
from fashion_tune.models.sampling import evaluating, raw_sample

EVAL_BATCH = 1_000
# The CNNs score faster in smaller batches on a CPU (fp32, default layout: 1.0-1.6 CPU ms per image at 100-250,
# 1.9-2.0 at 1,000, `benchmarks/resnet_shapes.py`); validation is a large part of a CNN's epoch there.
CNN_EVAL_BATCH = 250
NOISE_SEED = 0  # the z draws of the ELBO
SAMPLE_SEED = 1  # the z draws of val_sample_acc's raw samples
BINARIZE_SEED = 2024  # the fixed binarization of validation images


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


@torch.no_grad()
def cnn_scores(cnn: FashionCNN, x: Tensor, y: Tensor, batch_size: int = CNN_EVAL_BATCH,
               tta: bool | None = None) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix (rows = true class), of the
    predictions as the CNN makes them (with flip TTA when its config says so, or `tta`); and
    `accuracy_no_tta`, the accuracy of the images alone (the same number without TTA, at no extra cost)."""
    device = next(cnn.parameters()).device
    num_classes = cnn.config.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss, plain_correct = 0.0, 0
    with evaluating(cnn):
        for i in range(0, len(x), batch_size):
            logits, plain, _ = (t.float().cpu() for t in cnn.predict(x[i : i + batch_size].to(device), tta))
            yb = y[i : i + batch_size].cpu()
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2).view(num_classes, -1)
            plain_correct += (plain.argmax(1) == yb).sum().item()
    per_class = confusion.diag().double() / confusion.sum(1).clamp_min(1).double()
    return {
        "accuracy": confusion.diag().sum().item() / len(x),
        "accuracy_no_tta": plain_correct / len(x),
        "loss": loss / len(x),
        "per_class_accuracy": {CLASSES[c]: per_class[c].item() for c in range(num_classes)},
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def elbo_scores(vae: ConditionalVAE, x: Tensor, y: Tensor, seed: int = NOISE_SEED, binarized: bool = False,
                reconstruction: bool = False, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """ELBO parts in nats per image (one seeded z draw per image): neg_elbo = recon + kl, recon, kl.

    Grey levels are the Bernoulli targets: a cross-entropy, not a log-likelihood (its floor BCE(x, x)
    is about 188 nats). binarized=True adds neg_elbo_bin, the negative ELBO of a fixed binarization of
    the images: an upper bound on -log p(x|y), comparable with published numbers. reconstruction=True
    adds recon_mse (per-pixel MSE of the reconstruction from the posterior mean) and recon_ssim (its mean
    global SSIM, the original's simplified SSIM). Each pass seeds its own noise and leaves the caller's
    RNG untouched, so a resumed training run matches an uninterrupted one.
    """
    device = next(vae.parameters()).device
    labels_for = (lambda t: t.to(device)) if vae.config.conditional else (lambda t: None)
    n, sums = len(x), {"recon": 0.0, "kl": 0.0, "mse": 0.0, "ssim": 0.0, "neg_elbo_bin": 0.0}
    with evaluating(vae), torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        for i in range(0, n, batch_size):
            xb, yb = x[i : i + batch_size].to(device), labels_for(y[i : i + batch_size])
            terms = vae.loss_terms(xb, yb, beta=1.0)
            sums["recon"] += terms["recon"].item() * len(xb)
            sums["kl"] += terms["kl"].item() * len(xb)
            if reconstruction:
                recon = vae.reconstruct(xb, yb)
                sums["mse"] += F.mse_loss(recon, xb, reduction="none").flatten(1).mean(1).double().sum().item()
                sums["ssim"] += global_ssim(recon, xb).sum().item()
        if binarized:
            torch.manual_seed(seed + 1)
            binarizer = torch.Generator(device=x.device).manual_seed(BINARIZE_SEED)
            for i in range(0, n, batch_size):
                xb = torch.bernoulli(x[i : i + batch_size], generator=binarizer).to(device)
                sums["neg_elbo_bin"] += vae.loss_terms(xb, labels_for(y[i : i + batch_size]), 1.0)["neg_elbo"].item() * len(xb)
    recon, kl = sums["recon"] / n, sums["kl"] / n
    scores = {"neg_elbo": recon + kl, "recon": recon, "kl": kl}
    if binarized:
        scores["neg_elbo_bin"] = sums["neg_elbo_bin"] / n
    if reconstruction:
        scores.update(recon_mse=sums["mse"] / n, recon_ssim=sums["ssim"] / n)
    return scores


def global_ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM over the whole image as one window (the original's simplified SSIM), float64."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    mu_a, mu_b = a.mean(1), b.mean(1)
    var_a, var_b = a.var(1, unbiased=False), b.var(1, unbiased=False)
    cov = ((a - mu_a[:, None]) * (b - mu_b[:, None])).mean(1)
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


# --- what training reports every epoch ---------------------------------------------------------


def vae_validation(vae: ConditionalVAE, x: Tensor, y: Tensor, beta: float = 1.0) -> dict[str, float]:
    """The VAE's validation metrics: ELBO on grey levels and on binarized images; val_loss is beta-weighted."""
    s = elbo_scores(vae, x, y, binarized=True)
    return {"val_neg_elbo": s["neg_elbo"], "val_neg_elbo_bin": s["neg_elbo_bin"], "val_recon": s["recon"],
            "val_kl": s["kl"], "val_loss": s["recon"] + beta * s["kl"], "beta": beta}


def cnn_validation(cnn: FashionCNN, x: Tensor, y: Tensor, beta: float = 1.0) -> dict[str, float]:
    """The CNN's validation metrics: cross-entropy and accuracy (with flip TTA when the CNN uses it), and the
    accuracy without TTA (beta is unused: the signature is shared)."""
    s = cnn_scores(cnn, x, y)
    return {"val_loss": s["loss"], "val_acc": s["accuracy"], "val_acc_no_tta": s["accuracy_no_tta"]}


def vae_test(vae: ConditionalVAE, x: Tensor, y: Tensor) -> dict[str, float]:
    """The VAE's test numbers recorded at promotion (the judge-based grading is `fashion-tune evaluate`)."""
    return elbo_scores(vae, x, y, reconstruction=True)


@torch.no_grad()
def sample_accuracy(vae: ConditionalVAE, judge: torch.nn.Module, images: int) -> float:
    """The share of the VAE's raw samples (images // classes of each class, from fixed z draws) that `judge`
    classifies as the class they were drawn for: val_sample_acc, a measure of samples the ELBO does not give."""
    classes = vae.config.num_classes
    labels = torch.arange(classes).repeat_interleave(max(1, images // classes))
    samples = raw_sample(vae, labels, torch.Generator().manual_seed(SAMPLE_SEED))
    device = next(judge.parameters()).device
    hits = 0
    for i in range(0, len(labels), EVAL_BATCH):
        logits = judge(samples[i : i + EVAL_BATCH].to(device).float())
        hits += (logits.argmax(1).cpu() == labels[i : i + EVAL_BATCH]).sum().item()
    return hits / len(labels)
