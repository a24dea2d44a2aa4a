"""Letter grades: the VAE and CNN rubrics, the reference points that anchor them, and the original
project's own fields and grade (reproduced for comparison only)."""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fashion_tune.evaluation.judging import (RealReference, fd_against_real, judge_outputs, judge_scores,
                                             mean_pairwise_distance, within_class_diversity)

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


def reference_points(judge: nn.Module, test_x: Tensor, real: RealReference, real_scores: dict[str, Any]) -> dict[str, Any]:
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
