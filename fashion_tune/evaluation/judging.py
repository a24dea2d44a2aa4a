"""The judge's view of a set of images: its scores, their diversity, and their Frechet distance to real data.

A judge is any classifier with `features(x)` (penultimate activations) and `classifier` (the last
layer): the independent judge (`fashion_tune.models.judge.JudgeMLP`) or the promoted CNN
(`FashionCNN`). Its softmax scores class fidelity and its features are the space for feature
diversity and the Frechet distance (the role Inception features play in FID). Definitions are in
`fashion_tune.evaluation.grading`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.data.splits import stratified_indices
from fashion_tune.models.sampling import evaluating

SEED = 0  # the split of the test set into halves A and B
HIGH_CONFIDENCE = 0.95
FD_MAX = 5_000  # samples per side of a Frechet distance (half the test set)
BATCH = 1_000


@torch.no_grad()
def judge_outputs(judge: nn.Module, images: Tensor, batch_size: int = BATCH) -> tuple[Tensor, Tensor]:
    """Softmax probabilities (N, classes) and penultimate features (N, D) of images, on the CPU.

    The probabilities are the judge's predictions as scoring makes them (`predict`: with flip TTA if a
    CNN's config says so); the features are those of the images alone.
    """
    device = next(judge.parameters()).device
    probs, feats = [], []
    with evaluating(judge):
        for i in range(0, len(images), batch_size):
            logits, _, h = judge.predict(images[i : i + batch_size].to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            feats.append(h.float().cpu())
    return torch.cat(probs), torch.cat(feats)


def judge_scores(probs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy, mean confidence, share above 0.95 and quality score (confidence x correct) of judged images."""
    labels = labels.long().cpu()
    confidence = probs.gather(1, labels[:, None]).squeeze(1).double()
    correct = (probs.argmax(1) == labels).double()
    quality = confidence * correct
    per_class = {
        CLASSES[c]: {"accuracy": correct[labels == c].mean().item(), "quality_score": quality[labels == c].mean().item()}
        for c in labels.unique().tolist()
    }
    return {
        "count": len(labels),
        "accuracy": correct.mean().item(),
        "mean_confidence": confidence.mean().item(),
        "high_confidence": (confidence > HIGH_CONFIDENCE).double().mean().item(),
        "quality_score": quality.mean().item(),
        "per_class": per_class,
    }


# --- diversity and Frechet distance ------------------------------------------------------


def mean_pairwise_distance(x: Tensor, chunk: int = 1_024) -> float:
    """Exact mean L2 distance over all pairs i < j of the rows of x (flattened), in float64."""
    x = x.flatten(1).double()
    n = len(x)
    if n < 2:
        return math.nan
    total = 0.0
    for i in range(0, n, chunk):
        d = torch.cdist(x[i : i + chunk], x, compute_mode="use_mm_for_euclid_dist")
        total += d.sum().item()
    return total / (n * (n - 1))  # each pair counted twice, the zero diagonal once


def within_class_diversity(x: Tensor, labels: Tensor) -> float:
    """Mean pairwise L2 distance between items of the same class, averaged over the classes present."""
    labels = labels.cpu()
    return sum(mean_pairwise_distance(x[labels == c]) for c in labels.unique().tolist()) / len(labels.unique())


def _sqrt_psd(m: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b (float64, eigendecompositions only).

    tr((S1 S2)^(1/2)) is computed as the trace of (S1^(1/2) S2 S1^(1/2))^(1/2), which is
    symmetric positive semi-definite, so no general matrix square root is needed.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return max(value.item(), 0.0)


def per_class_subset(labels: Tensor, per_class: int) -> Tensor:
    """Indices of the first `per_class` items of each class (ascending)."""
    labels = labels.cpu()
    picks = [(labels == c).nonzero().squeeze(1)[:per_class] for c in labels.unique().tolist()]
    return torch.cat(picks).sort().values


def test_halves(labels: Tensor, seed: int = SEED) -> tuple[Tensor, Tensor]:
    """Disjoint stratified halves (A, B) of the test set, as index tensors."""
    a = stratified_indices(labels, len(labels) // 2, seed)
    in_a = torch.zeros(len(labels), dtype=torch.bool)
    in_a[a] = True
    return a, (~in_a).nonzero().squeeze(1)


@dataclass
class RealReference:
    """Judge outputs on the whole test set, and its halves for the Frechet floor."""

    labels: Tensor
    probs: Tensor
    features: Tensor
    half_a: Tensor
    half_b: Tensor


def real_reference(judge: nn.Module, test_x: Tensor, test_y: Tensor, seed: int = SEED) -> RealReference:
    probs, feats = judge_outputs(judge, test_x)
    a, b = test_halves(test_y, seed)
    return RealReference(test_y.cpu(), probs, feats, a, b)


def fd_against_real(features: Tensor, labels: Tensor, real: RealReference) -> dict[str, float]:
    """FD of generated features to test half A, beside the floor FD(half B, A) at the same sample size.

    fd_relative = (fd - floor) / trace of half A's feature covariance.

    Both sides use n = min(generated, |B|, FD_MAX) items, stratified by class, so the estimator's
    small-sample bias is the same for the two numbers and their ratio is meaningful.
    """
    reference = real.features[real.half_a][:FD_MAX]
    n = min(len(features), len(real.half_b), FD_MAX)
    classes = len(labels.unique())
    generated = features[per_class_subset(labels, n // classes)]
    floor_idx = real.half_b[stratified_indices(real.labels[real.half_b], len(generated), SEED)]
    fd, floor = frechet_distance(generated, reference), frechet_distance(real.features[floor_idx], reference)
    spread = torch.cov(reference.double().T).trace().item()
    return {"fd": fd, "fd_floor": floor, "fd_ratio": fd / floor if floor > 0 else math.inf,
            "fd_relative": (fd - floor) / spread if spread > 0 else math.inf, "fd_samples": len(generated)}
