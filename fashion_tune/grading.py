"""Grading the promoted models on the test set: metric functions, the original's fields, and the rubric.

Every function here is deterministic: randomness comes from seeded generators, so the same
models, data and seed give the same numbers. Images are pixel probabilities in [0, 1],
shaped (N, 1, 28, 28); the judge is the promoted CNN, whose softmax scores class fidelity
and whose penultimate features (`FashionCNN.features`) are the space for feature diversity
and the Frechet distance (the role Inception features play in FID).

Metric definitions (also written into report.md):

- judge scores of generated images, each requested to be class c:
  confidence = judge softmax probability of c; correct = (judge argmax == c);
  accuracy = mean(correct); mean_confidence = mean(confidence);
  high_confidence = share with confidence > 0.95;
  quality_score = mean(confidence x correct) (the original's "confidence x accuracy").
- diversity = mean pairwise L2 distance between images of the same class, averaged over
  classes; in pixels (784-d, values in [0, 1]) and in judge feature space.
- Frechet distance (FD) between Gaussians fitted to judge features:
  |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The test set is split (stratified, seeded)
  into halves A and B; generated images are compared with A, and B with A at the same sample
  size is the real-data floor. fd_ratio = FD / floor (1 = indistinguishable from real data at
  this sample size; it grows with the sample size, as the floor shrinks). fd_relative =
  (FD - floor) / tr(S_A), the excess distance as a share of the real features' total variance:
  scale-free and nearly independent of the sample size, so the rubric uses it.
- test ELBO: recon + kl in nats per image (Bernoulli likelihood, one z draw per image with a
  fixed seed); recon_mse = per-pixel MSE of the reconstruction from the posterior mean.
- interpolation: paths between two classes (z and class embedding both move linearly, 8
  frames); smoothness = mean MSE between consecutive frames (the original's definition,
  lower is smoother); evenness = largest step / mean step along a path (1 = even steps).

Grades: the VAE rubric (`VAE_RUBRIC`) looks at raw samples only (guidance can max out the
judge): class_fidelity, fd_relative and diversity_ratio each get a letter from fixed
thresholds and the grade is the worst letter. The CNN is graded on test accuracy
(`CNN_RUBRIC`). The original project's fields and grade are reproduced by `original_fields`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_tune.data import stratified_indices
from fashion_tune.datafiles import CLASSES
from fashion_tune.models import ConditionalVAE, FashionCNN, count_parameters
from fashion_tune.sampling import CANDIDATES, class_labels, evaluating, guided_sample, raw_sample

SEED = 0
PER_CLASS = 1_000  # raw samples per class
GUIDED_PER_CLASS = 20  # guided samples per class (each costs CANDIDATES decodes)
HIGH_CONFIDENCE = 0.95
INTERPOLATION_STEPS = 8  # frames per path, as the original's smoothness test
PATHS_PER_PAIR = 1  # random paths per ordered class pair (90 pairs)
FD_MAX = 5_000  # samples per side of a Frechet distance (half the test set)
ORIGINAL_DIVERSITY_PER_CLASS = 100  # raw samples per class pooled for the original's all-class diversity
BATCH = 1_000


# --- judge scores ------------------------------------------------------------------------


@torch.no_grad()
def judge_outputs(judge: FashionCNN, images: Tensor, batch_size: int = BATCH) -> tuple[Tensor, Tensor]:
    """Softmax probabilities (N, classes) and penultimate features (N, D) of images, on the CPU."""
    device = next(judge.parameters()).device
    probs, feats = [], []
    with evaluating(judge):
        for i in range(0, len(images), batch_size):
            h = judge.features(images[i : i + batch_size].to(device))
            probs.append(torch.softmax(judge.classifier(h).float(), dim=1).cpu())
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


def real_reference(judge: FashionCNN, test_x: Tensor, test_y: Tensor, seed: int = SEED) -> RealReference:
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


# --- the VAE on real test images ---------------------------------------------------------


@torch.no_grad()
def vae_test_scores(
    vae: ConditionalVAE, x: Tensor, y: Tensor, seed: int = SEED, reconstruction: bool = True, batch_size: int = BATCH
) -> dict[str, float]:
    """Test ELBO parts (nats per image, one seeded z draw per image) and reconstruction errors.

    neg_elbo = recon + kl; recon_mse is the per-pixel MSE of the reconstruction from the
    posterior mean; recon_ssim is the mean global (single-window) SSIM of the same
    reconstructions, the original's simplified SSIM. reconstruction=False skips the last two
    (a third of the cost), for comparing validation ELBOs.
    """
    device = next(vae.parameters()).device
    labels_for = (lambda t: t.to(device)) if vae.config.conditional else (lambda t: None)
    sums = {"recon": 0.0, "kl": 0.0, "mse": 0.0, "ssim": 0.0}
    with evaluating(vae), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), labels_for(y[i : i + batch_size])
            terms = vae.loss_terms(xb, yb, beta=1.0)
            n = len(xb)
            sums["recon"] += terms["recon"].item() * n
            sums["kl"] += terms["kl"].item() * n
            if reconstruction:
                recon = vae.reconstruct(xb, yb)
                sums["mse"] += F.mse_loss(recon, xb, reduction="none").flatten(1).mean(1).double().sum().item()
                sums["ssim"] += global_ssim(recon, xb).sum().item()
    n = len(x)
    recon, kl = sums["recon"] / n, sums["kl"] / n
    scores = {"neg_elbo": recon + kl, "recon": recon, "kl": kl}
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


# --- interpolation -----------------------------------------------------------------------


@contextlib.contextmanager
def _embedding_mix(vae: ConditionalVAE, target: Tensor, weight: Tensor) -> Iterator[None]:
    """While active, the label embedding of row i is lerp(embed(label_i), embed(target_i), weight_i)."""

    def mix(module, inputs, output):
        return torch.lerp(output, F.embedding(target.to(output.device), module.weight), weight.to(output.device)[:, None])

    handle = vae.embedding.register_forward_hook(mix)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def interpolation_paths(
    vae: ConditionalVAE, pairs: list[tuple[int, int]], steps: int = INTERPOLATION_STEPS, generator: torch.Generator | None = None
) -> Tensor:
    """Images (P, steps, 1, 28, 28) along class-to-class paths: z_a -> z_b and embed(a) -> embed(b) linearly."""
    device = next(vae.parameters()).device
    noise_device = generator.device if generator is not None else torch.device("cpu")
    ends = torch.randn(len(pairs), 2, vae.config.latent_dim, generator=generator, device=noise_device).cpu()
    t = torch.linspace(0, 1, steps)
    z = torch.lerp(ends[:, :1], ends[:, 1:], t[None, :, None]).flatten(0, 1)  # (P*steps, latent)
    source = torch.tensor([a for a, _ in pairs]).repeat_interleave(steps)
    target = torch.tensor([b for _, b in pairs]).repeat_interleave(steps)
    weight = t.repeat(len(pairs))
    with evaluating(vae):
        if vae.config.conditional:
            with _embedding_mix(vae, target, weight):
                logits = vae.decode(z.to(device), source.to(device))
        else:
            logits = vae.decode(z.to(device))
    return torch.sigmoid(logits).cpu().view(len(pairs), steps, 1, 28, 28)


def interpolation_scores(paths: Tensor) -> dict[str, float]:
    """smoothness: mean MSE between consecutive frames (lower is smoother); evenness: max / mean step L2."""
    steps = paths[:, 1:] - paths[:, :-1]
    mse = steps.double().pow(2).flatten(2).mean(2)  # (P, steps-1)
    l2 = steps.double().flatten(2).norm(dim=2)
    evenness = (l2.max(1).values / l2.mean(1).clamp_min(1e-12)).mean()
    return {"smoothness": mse.mean().item(), "evenness": evenness.item(), "paths": len(paths)}


def all_class_pairs(num_classes: int = len(CLASSES), paths_per_pair: int = PATHS_PER_PAIR) -> list[tuple[int, int]]:
    return [pair for pair in itertools.permutations(range(num_classes), 2) for _ in range(paths_per_pair)]


# --- the original project's fields -------------------------------------------------------

ORIGINAL_GRADES = ((0.8, "A - EXCELLENT"), (0.6, "B - GOOD"), (0.4, "C - FAIR"), (-math.inf, "D - NEEDS IMPROVEMENT"))


def original_fields(raw_images: Tensor, recon_mse: float, recon_ssim: float, smoothness: float) -> dict[str, Any]:
    """The original report's fields for raw samples, computed as its evaluator (src/test_vae_comprehensive.py) did.

    - diversity: mean pairwise pixel L2 distance over raw samples pooled across ALL classes
      (not within a class).
    - avg_quality: mean over images of the per-image standard deviation of pixel values
      (a contrast measure: the judge plays no part in it).
    The rest follows from these in `original_scores`.
    """
    diversity = mean_pairwise_distance(raw_images)
    avg_quality = raw_images.flatten(1).double().std(1).mean().item()
    return original_scores(diversity, avg_quality, smoothness, recon_mse, recon_ssim)


def original_scores(diversity: float, avg_quality: float, smoothness: float, recon_mse: float, recon_ssim: float) -> dict[str, Any]:
    """The original's combined scores and grade from its five measurements.

    - generation_score = diversity x avg_quality (9.0447 x 0.2910 = 2.632 in the original report).
    - interpolation_quality = 1 - interpolation_smoothness (mean MSE between consecutive frames).
    - reconstruction_quality = (1 - recon_mse) x recon_ssim.
    - overall_score = (reconstruction_quality + generation_score + interpolation_quality) / 3; the
      original's 1.2065 implies a reconstruction_quality of about -0.01.
    - grade: A >= 0.8, B >= 0.6, C >= 0.4, else D, on overall_score.

    generation_score is unbounded (uniform noise scores about 11.4 x 0.29 = 3.3), so this grade
    rewards noisy, high-contrast images; it is reproduced for comparison, never used to promote.
    """
    generation_score = diversity * avg_quality
    interpolation_quality = 1.0 - smoothness
    reconstruction_quality = (1.0 - recon_mse) * recon_ssim
    overall = (reconstruction_quality + generation_score + interpolation_quality) / 3
    return {
        "diversity": diversity,
        "avg_quality": avg_quality,
        "generation_score": generation_score,
        "interpolation_smoothness": smoothness,
        "interpolation_quality": interpolation_quality,
        "reconstruction_quality": reconstruction_quality,
        "overall_score": overall,
        "grade": next(label for bound, label in ORIGINAL_GRADES if overall >= bound),
    }


# --- the rubric --------------------------------------------------------------------------

GRADE_LABELS = {"A": "A - EXCELLENT", "B": "B - GOOD", "C": "C - FAIR", "D": "D - POOR", "F": "F - FAILING"}

# criterion -> (direction, thresholds for A, B, C, D); below D is F. Guided sampling can max
# out judge confidence, so only unguided samples are graded. Calibrated with a CNN judge at
# 0.886 test accuracy: real test images blurred by a 3x3 box filter scored class_fidelity 0.83,
# fd_relative 0.23, diversity_ratio 0.83 (grade C); with a 5x5 blur 0.58, 0.55, 0.73 (D);
# class-mean images 0.68, 0.71, 0.00 (F); uniform noise 0.11, 1.20, 0.44 (F). Every report
# recomputes the blurred rows with its own judge (`reference_points`).
VAE_RUBRIC: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    # raw-sample judge accuracy / the judge's accuracy on real test images
    "class_fidelity": ("min", (0.95, 0.85, 0.70, 0.50)),
    # (FD(raw samples, test half A) - real floor) / total variance of real features
    "fd_relative": ("max", (0.10, 0.25, 0.50, 0.80)),
    # raw within-class feature diversity / real (test) within-class feature diversity
    "diversity_ratio": ("min", (0.90, 0.75, 0.60, 0.40)),
}
CNN_RUBRIC: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "test_accuracy": ("min", (0.93, 0.90, 0.85, 0.80)),
}


def rubric_values(scores: dict[str, Any], real: dict[str, Any]) -> dict[str, float]:
    """The VAE rubric's criteria for a set of images, from its scores and the real test images' scores."""
    return {
        "class_fidelity": scores["accuracy"] / max(real["accuracy"], 1e-12),
        "fd_relative": scores["fd_relative"],
        "diversity_ratio": scores["diversity_features"] / max(real["diversity_features"], 1e-12),
    }


def box_blur(images: Tensor, size: int) -> Tensor:
    """Each pixel replaced by the mean of its size x size neighbourhood (edges replicated)."""
    pad = size // 2
    return F.avg_pool2d(F.pad(images, (pad, pad, pad, pad), mode="replicate"), size, stride=1)


REFERENCE_BLURS = (3, 5)


def reference_points(judge: FashionCNN, test_x: Tensor, real: RealReference, real_scores: dict[str, Any]) -> dict[str, Any]:
    """The rubric applied to real test images (half B) as they are and blurred, with this judge.

    These anchor the grade: blurring real images by 3x3 is roughly what a good VAE's softness
    costs, so a VAE graded above the 3x3 row is doing better than blurred real data.
    """
    points = {}
    variants = {"real test images (half B)": lambda x: x} | {f"real test images, {k}x{k} blur": (lambda x, k=k: box_blur(x, k))
                                                            for k in REFERENCE_BLURS}
    labels = real.labels[real.half_b]
    for name, transform in variants.items():
        probs, feats = judge_outputs(judge, transform(test_x.cpu()[real.half_b]))
        scores = judge_scores(probs, labels)
        scores["diversity_features"] = within_class_diversity(feats, labels)
        scores.update(fd_against_real(feats, labels, real))
        values = rubric_values(scores, real_scores)
        points[name] = {"values": values, "grade": apply_rubric(values, VAE_RUBRIC)["grade"]}
    return points


def letter(value: float, direction: str, thresholds: tuple[float, ...]) -> str:
    """The first grade whose threshold `value` meets (>= for "min" criteria, <= for "max"); F otherwise."""
    for grade, bound in zip("ABCD", thresholds):
        if math.isfinite(value) and (value >= bound if direction == "min" else value <= bound):
            return grade
    return "F"


def apply_rubric(values: dict[str, float], rubric: dict[str, tuple[str, tuple[float, ...]]]) -> dict[str, Any]:
    """Grade each criterion; the overall grade is the worst of them (a model is as good as its weakest side)."""
    grades = {name: letter(values[name], direction, bounds) for name, (direction, bounds) in rubric.items()}
    worst = max(grades.values())  # "A" < "B" < ... < "F"
    return {"grade": GRADE_LABELS[worst], "criteria": {name: {"value": values[name], "grade": g} for name, g in grades.items()}}


def rubric_table(rubric: dict[str, tuple[str, tuple[float, ...]]]) -> list[tuple[str, str, list[str]]]:
    """(criterion, direction, [A, B, C, D] thresholds as text) for the report."""
    sign = {"min": ">=", "max": "<="}
    return [(name, direction, [f"{sign[direction]} {b:g}" for b in bounds]) for name, (direction, bounds) in rubric.items()]


# --- whole-model grading -----------------------------------------------------------------


@torch.no_grad()
def cnn_test_scores(cnn: FashionCNN, x: Tensor, y: Tensor, batch_size: int = BATCH) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix (rows = true class)."""
    device = next(cnn.parameters()).device
    num_classes = cnn.config.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss = 0.0
    with evaluating(cnn):
        for i in range(0, len(x), batch_size):
            logits = cnn(x[i : i + batch_size].to(device)).float().cpu()
            yb = y[i : i + batch_size].cpu()
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2).view(num_classes, -1)
    per_class = confusion.diag().double() / confusion.sum(1).clamp_min(1).double()
    return {
        "accuracy": confusion.diag().sum().item() / len(x),
        "loss": loss / len(x),
        "per_class_accuracy": {CLASSES[c]: per_class[c].item() for c in range(num_classes)},
        "confusion_matrix": confusion.tolist(),
    }


def grade_cnn(cnn: FashionCNN, test_x: Tensor, test_y: Tensor) -> dict[str, Any]:
    """The CNN's test-set section of the report, with its letter grade."""
    scores = cnn_test_scores(cnn, test_x, test_y)
    return {
        "test": scores,
        "parameters": count_parameters(cnn),
        "rubric": apply_rubric({"test_accuracy": scores["accuracy"]}, CNN_RUBRIC),
    }


@dataclass
class VAEPictures:
    """Images the report draws, produced while grading so they match the numbers."""

    showcase: Tensor  # (10, 10, 1, 28, 28): first 10 raw samples of every class
    originals: Tensor  # (10, 1, 28, 28): first test image of every class
    reconstructions: Tensor
    generated: Tensor  # (10, 1, 28, 28): the last raw sample of every class
    interpolations: Tensor  # (5, steps, 1, 28, 28) along the original's showcase pairs
    interpolation_pairs: list[tuple[int, int]]
    guided: Tensor  # (10, 3, 1, 28, 28): the original's "3 samples per item" demo
    guided_confidence: Tensor  # (10, 3)


SHOWCASE_PAIRS = [(0, 3), (1, 9), (2, 4), (5, 7), (6, 0)]  # the original's interpolation showcase


def vae_grading_steps(classes: int = len(CLASSES)) -> int:
    """How many times grade_vae calls its progress callback."""
    return 2 * classes + 11


def grade_vae(
    vae: ConditionalVAE,
    judge: FashionCNN,
    test_x: Tensor,
    test_y: Tensor,
    per_class: int = PER_CLASS,
    guided_per_class: int = GUIDED_PER_CLASS,
    candidates: int = CANDIDATES,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], VAEPictures]:
    """Grade the VAE on the test set and on its samples, judged by the CNN; see the module docstring.

    `progress(stage)` is called as each of `vae_grading_steps(classes)` steps finishes, for a progress bar.
    """
    tick = progress or (lambda stage: None)
    classes = vae.config.num_classes
    if per_class < 10:
        raise ValueError(f"per_class={per_class} must be at least 10 (the showcase shows 10 per class)")
    if guided_per_class < 3:
        raise ValueError(f"guided_per_class={guided_per_class} must be at least 3 (the demo shows 3 per class)")
    test = vae_test_scores(vae, test_x, test_y, seed)
    tick("test ELBO")
    real = real_reference(judge, test_x, test_y, seed)
    tick("judge on test set")

    # One class at a time, so the progress bar moves; class-major order as class_labels().
    raw_labels, guided_labels = class_labels(per_class, classes), class_labels(guided_per_class, classes)
    raw_gen = torch.Generator().manual_seed(seed)
    raw = torch.cat([raw_sample(vae, raw_labels[raw_labels == c], raw_gen) for c in _ticking(range(classes), tick, "raw samples")])
    guided_gen = torch.Generator().manual_seed(seed + 1)
    guided_parts = [guided_sample(vae, judge, guided_labels[guided_labels == c], candidates, guided_gen)
                    for c in _ticking(range(classes), tick, "guided samples")]
    guided = torch.cat([images for images, _ in guided_parts])

    raw_probs, raw_feats = judge_outputs(judge, raw)
    guided_probs, guided_feats = judge_outputs(judge, guided)
    tick("judge on samples")
    real_pick = per_class_subset(real.labels, per_class)
    sets = {
        "real": (test_x.cpu()[real_pick], real.labels[real_pick], real.probs[real_pick], real.features[real_pick]),
        "raw": (raw, raw_labels, raw_probs, raw_feats),
        "guided": (guided, guided_labels, guided_probs, guided_feats),
    }
    samples: dict[str, Any] = {}
    for name, (images, labels, probs, feats) in sets.items():
        samples[name] = judge_scores(probs, labels)
        samples[name]["diversity_pixels"] = within_class_diversity(images, labels)
        samples[name]["diversity_features"] = within_class_diversity(feats, labels)
        tick(f"diversity {name}")
    for name in ("raw", "guided"):
        _, labels, _, feats = sets[name]
        samples[name].update(fd_against_real(feats, labels, real))
        tick(f"Frechet {name}")
    samples["guided"]["candidates"] = candidates

    interp = interpolation_scores(interpolation_paths(vae, all_class_pairs(classes), generator=torch.Generator().manual_seed(seed + 2)))
    tick("interpolation")
    pooled = raw[per_class_subset(raw_labels, ORIGINAL_DIVERSITY_PER_CLASS)]
    original = original_fields(pooled, test["recon_mse"], test["recon_ssim"], interp["smoothness"])

    references = reference_points(judge, test_x, real, samples["real"])
    tick("reference points")
    metrics = {
        "test": test,
        "samples": samples,
        "interpolation": interp,
        "original": original,
        "rubric": apply_rubric(rubric_values(samples["raw"], samples["real"]), VAE_RUBRIC),
        "guided_rubric": apply_rubric(rubric_values(samples["guided"], samples["real"]), VAE_RUBRIC),  # for contrast only
        "reference_points": references,
        "settings": {"seed": seed, "per_class": per_class, "guided_per_class": guided_per_class, "candidates": candidates,
                     "interpolation_steps": INTERPOLATION_STEPS, "fd_max_samples": FD_MAX,
                     "original_diversity_per_class": ORIGINAL_DIVERSITY_PER_CLASS},
        "parameters": count_parameters(vae),
    }

    first_test = torch.stack([(test_y.cpu() == c).nonzero()[0, 0] for c in range(classes)])
    originals = test_x.cpu()[first_test]
    with evaluating(vae):
        device = next(vae.parameters()).device
        recon_labels = torch.arange(classes).to(device) if vae.config.conditional else None
        reconstructions = vae.reconstruct(originals.to(device), recon_labels).cpu()
    demo_gen = torch.Generator().manual_seed(seed + 3)
    demo, demo_conf = guided_sample(vae, judge, class_labels(3, classes), candidates, demo_gen)
    pictures = VAEPictures(
        showcase=raw.view(classes, per_class, 1, 28, 28)[:, :10],
        originals=originals,
        reconstructions=reconstructions,
        generated=raw.view(classes, per_class, 1, 28, 28)[:, -1],
        interpolations=interpolation_paths(vae, SHOWCASE_PAIRS, steps=10, generator=torch.Generator().manual_seed(seed + 4)),
        interpolation_pairs=SHOWCASE_PAIRS,
        guided=demo.view(classes, 3, 1, 28, 28),
        guided_confidence=demo_conf.view(classes, 3),
    )
    tick("pictures")
    return metrics, pictures


def _ticking(items, tick: Callable[[str], None], stage: str):
    for item in items:
        yield item
        tick(stage)
