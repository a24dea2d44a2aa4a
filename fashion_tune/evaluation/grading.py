"""Grading the promoted models on the test set: metric functions, the original's fields, and the rubric.

The pieces live in their own modules: `fashion_tune.training.scoring` (test ELBO and CNN accuracy),
`fashion_tune.evaluation.judging` (judge scores, diversity, Frechet distance), `fashion_tune.evaluation.interpolation`
and `fashion_tune.evaluation.rubric` (letter grades and the original's fields); this module runs them all on
the promoted models. Everything is deterministic: randomness comes from seeded generators, so
the same models, data and seed give the same numbers. Images are pixel probabilities in [0, 1],
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

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.models import ConditionalVAE, FashionCNN, count_parameters
from fashion_tune.models.sampling import CANDIDATES, class_labels, evaluating, guided_sample, raw_sample
from fashion_tune.training.scoring import cnn_scores, elbo_scores
from fashion_tune.evaluation.interpolation import INTERPOLATION_STEPS, all_class_pairs, interpolation_paths, interpolation_scores
from fashion_tune.evaluation.judging import (FD_MAX, RealReference, fd_against_real, judge_outputs, judge_scores,
                                             per_class_subset, real_reference, within_class_diversity)
from fashion_tune.evaluation.rubric import (CNN_RUBRIC, VAE_RUBRIC, apply_rubric, original_fields, reference_points,
                                            rubric_values)

SEED = 0
PER_CLASS = 1_000  # raw samples per class
GUIDED_PER_CLASS = 20  # guided samples per class (each costs CANDIDATES decodes)
ORIGINAL_DIVERSITY_PER_CLASS = 100  # raw samples per class pooled for the original's all-class diversity
SHOWCASE_PAIRS = [(0, 3), (1, 9), (2, 4), (5, 7), (6, 0)]  # the original's interpolation showcase


def grade_cnn(cnn: FashionCNN, test_x: Tensor, test_y: Tensor) -> dict[str, Any]:
    """The CNN's test-set section of the report, with its letter grade."""
    scores = cnn_scores(cnn, test_x, test_y)
    return {
        "test": scores,
        "parameters": count_parameters(cnn),
        "tta": cnn.config.tta,  # test accuracy with flip test-time augmentation; test.accuracy_no_tta without
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


def vae_grading_steps(classes: int = len(CLASSES), judges: int = 1) -> int:
    """How many times grade_vae calls its progress callback, with `judges` classifiers scoring the samples."""
    return 2 * classes + 4 + 7 * judges


@dataclass
class _Samples:
    """One set of images to score, and the class each was asked to be (or is, for real images)."""

    images: Tensor
    labels: Tensor
    test_index: Tensor | None = None  # real images: where they are in the test set


HEADLINE_JUDGES = {"independent": "the independent judge", "promoted_cnn": "the promoted CNN"}


def grade_vae(
    vae: ConditionalVAE,
    guide: FashionCNN,
    test_x: Tensor,
    test_y: Tensor,
    per_class: int = PER_CLASS,
    guided_per_class: int = GUIDED_PER_CLASS,
    candidates: int = CANDIDATES,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
    judge: nn.Module | None = None,
) -> tuple[dict[str, Any], VAEPictures]:
    """Grade the VAE on the test set and on its samples; see the module docstring.

    `guide` (the promoted CNN) picks the guided samples. `judge`, the independent judge (a network
    that picked nothing), scores real, raw and guided images for the headline numbers; the guide's
    own scores are kept beside them under "promoted_cnn". Without `judge` the guide's scores are the
    headline, and "headline_judge" says so. The letter grade (raw samples only, which the guide did
    not pick) always uses the promoted CNN, the kind of judge the rubric's thresholds were set with;
    the independent judge's grade is kept as "independent_rubric", for contrast.
    `progress(stage)` is called as each of `vae_grading_steps(classes, judges)` steps finishes, for a progress bar.
    """
    tick = progress or (lambda stage: None)
    if per_class < 10:
        raise ValueError(f"per_class={per_class} must be at least 10 (the showcase shows 10 per class)")
    if guided_per_class < 3:
        raise ValueError(f"guided_per_class={guided_per_class} must be at least 3 (the demo shows 3 per class)")
    test = elbo_scores(vae, test_x, test_y, seed, reconstruction=True)
    tick("test ELBO")
    sets = _sample_sets(vae, guide, test_x, test_y, per_class, guided_per_class, candidates, seed, tick)
    headline, net = ("independent", judge) if judge is not None else ("promoted_cnn", guide)
    real, samples = _judged(net, sets, test_x, test_y, seed, tick)
    samples["guided"]["candidates"] = candidates
    guide_real, by_guide = (real, samples) if judge is None else _judged(guide, sets, test_x, test_y, seed, tick)
    by_guide["guided"]["candidates"] = candidates
    classes = vae.config.num_classes
    interp = interpolation_scores(interpolation_paths(vae, all_class_pairs(classes), generator=torch.Generator().manual_seed(seed + 2)))
    tick("interpolation")
    raw = sets["raw"]
    pooled = raw.images[per_class_subset(raw.labels, ORIGINAL_DIVERSITY_PER_CLASS)]
    references = reference_points(guide, test_x, guide_real, by_guide["real"])
    tick("reference points")
    metrics = {
        "headline_judge": headline,
        "test": test,
        "samples": samples,
        "interpolation": interp,
        "original": original_fields(pooled, test["recon_mse"], test["recon_ssim"], interp["smoothness"]),
        **_rubrics(by_guide),
        "rubric_judge": "promoted_cnn",
        "reference_points": references,
        "settings": {"seed": seed, "per_class": per_class, "guided_per_class": guided_per_class, "candidates": candidates,
                     "interpolation_steps": INTERPOLATION_STEPS, "fd_max_samples": FD_MAX,
                     "original_diversity_per_class": ORIGINAL_DIVERSITY_PER_CLASS},
        "parameters": count_parameters(vae),
        "prior": prior_description(vae),
    }
    if judge is not None:  # the guide's own scores, secondary: it picked the guided samples
        metrics["promoted_cnn"] = {"samples": by_guide, **_rubrics(by_guide)}
        metrics["independent_rubric"] = _rubrics(samples)["rubric"]
    pictures = _pictures(vae, guide, test_x, test_y, raw.images, per_class, candidates, seed)
    tick("pictures")
    return metrics, pictures


def _rubrics(samples: dict[str, Any]) -> dict[str, Any]:
    """The grade (raw samples) and, for contrast only, the same rubric applied to the guided samples."""
    return {"rubric": apply_rubric(rubric_values(samples["raw"], samples["real"]), VAE_RUBRIC),
            "guided_rubric": apply_rubric(rubric_values(samples["guided"], samples["real"]), VAE_RUBRIC)}


def prior_description(vae: ConditionalVAE) -> str:
    """What the report says of the VAE's prior p(z|y)."""
    if vae.prior_is_standard:
        return "standard normal"
    per = " per class" if vae.config.conditional else ""
    shape = "a Gaussian" if vae.prior_components == 1 else f"a mixture of {vae.prior_components} Gaussians"
    return f"{shape}{per}, fitted at promotion"


def _sample_sets(vae: ConditionalVAE, guide: FashionCNN, test_x: Tensor, test_y: Tensor, per_class: int,
                 guided_per_class: int, candidates: int, seed: int, tick: Callable[[str], None]) -> dict[str, _Samples]:
    """Real test images, raw samples and guided samples (picked by `guide`), per_class (guided_per_class) of each class."""
    classes = vae.config.num_classes
    # One class at a time, so the progress bar moves; class-major order as class_labels().
    raw_labels, guided_labels = class_labels(per_class, classes), class_labels(guided_per_class, classes)
    raw_gen = torch.Generator().manual_seed(seed)
    raw = torch.cat([raw_sample(vae, raw_labels[raw_labels == c], raw_gen) for c in _ticking(range(classes), tick, "raw samples")])
    guided_gen = torch.Generator().manual_seed(seed + 1)
    guided = torch.cat([guided_sample(vae, guide, guided_labels[guided_labels == c], candidates, guided_gen)[0]
                        for c in _ticking(range(classes), tick, "guided samples")])
    pick = per_class_subset(test_y.cpu(), per_class)
    return {"real": _Samples(test_x.cpu()[pick], test_y.cpu()[pick], pick), "raw": _Samples(raw, raw_labels),
            "guided": _Samples(guided, guided_labels)}


def _judged(judge: nn.Module, sets: dict[str, _Samples], test_x: Tensor, test_y: Tensor, seed: int,
            tick: Callable[[str], None]) -> tuple[RealReference, dict[str, Any]]:
    """One classifier's view of every set: its scores and diversity, and the Frechet distance of the generated
    ones to real test images in its feature space."""
    real = real_reference(judge, test_x, test_y, seed)
    tick("judge on test set")
    pick = sets["real"].test_index
    outputs = {"real": (real.probs[pick], real.features[pick])}
    outputs |= {name: judge_outputs(judge, sets[name].images) for name in ("raw", "guided")}
    tick("judge on samples")
    samples: dict[str, Any] = {}
    for name, (probs, features) in outputs.items():
        samples[name] = judge_scores(probs, sets[name].labels)
        samples[name]["diversity_pixels"] = within_class_diversity(sets[name].images, sets[name].labels)
        samples[name]["diversity_features"] = within_class_diversity(features, sets[name].labels)
        tick(f"diversity {name}")
    for name in ("raw", "guided"):
        samples[name].update(fd_against_real(outputs[name][1], sets[name].labels, real))
        tick(f"Frechet {name}")
    return real, samples


def _pictures(vae: ConditionalVAE, guide: FashionCNN, test_x: Tensor, test_y: Tensor, raw: Tensor, per_class: int,
              candidates: int, seed: int) -> VAEPictures:
    """The report's pictures, from the graded raw samples and a few more seeded draws."""
    classes = vae.config.num_classes
    first_test = torch.stack([(test_y.cpu() == c).nonzero()[0, 0] for c in range(classes)])
    originals = test_x.cpu()[first_test]
    with evaluating(vae):
        device = next(vae.parameters()).device
        recon_labels = torch.arange(classes).to(device) if vae.config.conditional else None
        reconstructions = vae.reconstruct(originals.to(device), recon_labels).cpu()
    demo_gen = torch.Generator().manual_seed(seed + 3)
    demo, demo_conf = guided_sample(vae, guide, class_labels(3, classes), candidates, demo_gen)
    return VAEPictures(
        showcase=raw.view(classes, per_class, 1, 28, 28)[:, :10],
        originals=originals,
        reconstructions=reconstructions,
        generated=raw.view(classes, per_class, 1, 28, 28)[:, -1],
        interpolations=interpolation_paths(vae, SHOWCASE_PAIRS, steps=10, generator=torch.Generator().manual_seed(seed + 4)),
        interpolation_pairs=SHOWCASE_PAIRS,
        guided=demo.view(classes, 3, 1, 28, 28),
        guided_confidence=demo_conf.view(classes, 3),
    )


def _ticking(items, tick: Callable[[str], None], stage: str):
    for item in items:
        yield item
        tick(stage)
