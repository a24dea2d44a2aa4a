"""Grading: metric functions on hand-made inputs with known answers, determinism, the rubrics."""

import itertools
import math

import pytest
import torch
from torch import nn

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.training import scoring
from fashion_tune.training.config import resolve_config
from fashion_tune.training.loop import build_model, load_splits
from fashion_tune.evaluation import grading
from fashion_tune.evaluation import interpolation
from fashion_tune.evaluation import judging
from fashion_tune.evaluation import rubric

TINY_VAE = {"width": 8, "depth": 1, "latent_dim": 8, "embed_dim": 8}
TINY_CNN = {"width": 8, "depth": 1}


def untrained(kind, **config):
    torch.manual_seed(0)
    return build_model(kind, resolve_config(kind, config)).eval()


@pytest.fixture(scope="module")
def test_subset():
    """500 real test images, 50 per class, in class-major order."""
    splits = load_splits(resolve_config("cnn", {"subset": 10, "val_subset": 10}))
    pick = judging.per_class_subset(splits.test_y, 50)
    return splits.test_x[pick], splits.test_y[pick]


# --- judge scores ------------------------------------------------------------------------


def test_judge_scores_on_known_probabilities():
    probs = torch.tensor([[0.97, 0.03], [0.40, 0.60], [0.20, 0.80], [0.50, 0.50]])
    probs = torch.cat([probs, torch.zeros(4, 8)], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    scores = judging.judge_scores(probs, labels)
    # image 2 is wrong (0.60 for class 1); image 4 is a tie that argmax gives to class 0: wrong
    assert scores["accuracy"] == pytest.approx(2 / 4)
    assert scores["mean_confidence"] == pytest.approx((0.97 + 0.40 + 0.80 + 0.50) / 4)
    assert scores["high_confidence"] == pytest.approx(1 / 4)
    assert scores["quality_score"] == pytest.approx((0.97 + 0.80) / 4)
    assert scores["per_class"][CLASSES[0]]["accuracy"] == pytest.approx(0.5)


class FixedPredictions(nn.Module):
    """A stand-in CNN that predicts the class written in pixel (0, 0) of each image (value = class / 10)."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_classes": 10})()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        predicted = (x[:, 0, 0, 0] * 10).round().long()
        return nn.functional.one_hot(predicted, 10).float() * 10

    def predict(self, x, tta=None):
        """FashionCNN's scoring interface: (logits, logits without TTA, features); no TTA here."""
        logits = self(x)
        return logits, logits, x.flatten(1)


def test_cnn_scores_count_the_confusion_matrix():
    truth = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 9])
    predicted = torch.tensor([0, 0, 1, 1, 1, 2, 9, 2, 2, 9])
    x = torch.zeros(10, 1, 28, 28)
    x[:, 0, 0, 0] = predicted / 10
    scores = scoring.cnn_scores(FixedPredictions(), x, truth, batch_size=3)
    assert scores["accuracy"] == pytest.approx(8 / 10)
    confusion = torch.tensor(scores["confusion_matrix"])
    assert confusion.sum() == 10 and confusion[0, 1] == 1 and confusion[2, 9] == 1 and confusion[2, 2] == 3
    assert scores["per_class_accuracy"]["T-shirt/top"] == pytest.approx(2 / 3)
    assert scores["per_class_accuracy"]["Pullover"] == pytest.approx(3 / 4)


# --- diversity and Frechet distance ------------------------------------------------------


def test_mean_pairwise_distance_matches_a_brute_force_loop():
    x = torch.rand(37, 5, generator=torch.Generator().manual_seed(1)).double()
    brute = sum((a - b).norm().item() for a, b in itertools.combinations(x, 2)) / math.comb(37, 2)
    assert judging.mean_pairwise_distance(x, chunk=8) == pytest.approx(brute, rel=1e-9)
    labels = torch.tensor([0] * 20 + [1] * 17)
    per_class = (judging.mean_pairwise_distance(x[:20]) + judging.mean_pairwise_distance(x[20:])) / 2
    assert judging.within_class_diversity(x, labels) == pytest.approx(per_class)
    assert judging.mean_pairwise_distance(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_is_zero_to_itself_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(16, 16, generator=g)
    x = torch.randn(4000, 16, generator=g) @ mixing  # correlated features
    assert judging.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shifts = [0.25, 0.5, 1.0, 2.0]
    distances = [judging.frechet_distance(x, x + s) for s in shifts]
    # Same covariance: the distance is exactly |mean shift|^2 = 16 s^2.
    assert distances == pytest.approx([16 * s * s for s in shifts], rel=1e-6)
    assert distances == sorted(distances)


def test_frechet_distance_matches_the_closed_form_for_scaled_gaussians():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20000, 8, generator=g), 2 * torch.randn(20000, 8, generator=g)
    # N(0, I) vs N(0, 4I): tr(I + 4I - 2 * 2I) = 8, up to sampling noise.
    assert judging.frechet_distance(a, b) == pytest.approx(8.0, rel=0.05)


# --- interpolation -----------------------------------------------------------------------


def test_interpolation_scores_of_even_and_jumpy_paths():
    start, end = torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)
    even = torch.stack([torch.lerp(start, end, t) for t in torch.linspace(0, 1, 5)], dim=1)  # (1, 5, 1, 28, 28)
    scores = interpolation.interpolation_scores(even)
    assert scores["smoothness"] == pytest.approx(0.25**2)  # every pixel moves 0.25 per step
    assert scores["evenness"] == pytest.approx(1.0)
    jumpy = torch.stack([start, start, start, start, end], dim=1)
    assert interpolation.interpolation_scores(jumpy)["evenness"] == pytest.approx(4.0)


def test_interpolation_paths_start_and_end_at_the_two_classes():
    vae = untrained("vae", **TINY_VAE)
    generator = torch.Generator().manual_seed(3)
    paths = interpolation.interpolation_paths(vae, [(0, 3), (7, 5)], steps=6, generator=generator)
    assert paths.shape == (2, 6, 1, 28, 28)
    ends = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(3))  # the same draw
    with torch.no_grad():
        first = torch.sigmoid(vae.decode(ends[:, 0], torch.tensor([0, 7])))
        last = torch.sigmoid(vae.decode(ends[:, 1], torch.tensor([3, 5])))
    torch.testing.assert_close(paths[:, 0], first)
    torch.testing.assert_close(paths[:, -1], last)
    # The label-mixing hook is gone afterwards: decoding is plain again.
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(vae.decode(ends[:, 0], torch.tensor([0, 7]))), first)


# --- whole-model grading -----------------------------------------------------------------


def test_grading_on_fixed_inputs_gives_the_same_numbers_twice(test_subset):
    x, y = test_subset
    vae, judge = untrained("vae", **TINY_VAE), untrained("cnn", **TINY_CNN)
    settings = {"per_class": 10, "guided_per_class": 3, "candidates": 4}
    first, pictures = grading.grade_vae(vae, judge, x, y, seed=5, **settings)
    second, _ = grading.grade_vae(vae, judge, x, y, seed=5, **settings)
    assert first == second
    assert grading.grade_cnn(judge, x, y) == grading.grade_cnn(judge, x, y)
    # The seed is really used: another seed gives other samples and other numbers.
    other, _ = grading.grade_vae(vae, judge, x, y, seed=6, **settings)
    assert other["samples"]["raw"]["diversity_pixels"] != first["samples"]["raw"]["diversity_pixels"]
    assert other["test"] != first["test"]  # the ELBO's z draw is seeded too
    assert pictures.showcase.shape == (10, 10, 1, 28, 28) and pictures.guided.shape == (10, 3, 1, 28, 28)
    t = first["test"]
    assert t["neg_elbo"] == pytest.approx(t["recon"] + t["kl"])
    o = first["original"]
    assert o["generation_score"] == pytest.approx(o["diversity"] * o["avg_quality"])


def test_guided_samples_score_higher_than_raw_in_the_report(test_subset):
    x, y = test_subset
    vae, judge = untrained("vae", **TINY_VAE), untrained("cnn", **TINY_CNN)
    metrics, _ = grading.grade_vae(vae, judge, x, y, per_class=10, guided_per_class=5, candidates=20)
    raw, guided = metrics["samples"]["raw"], metrics["samples"]["guided"]
    assert guided["mean_confidence"] > raw["mean_confidence"]  # even an untrained judge is maximised


# --- the original's fields and the rubric ------------------------------------------------


def test_original_formulas_reproduce_the_original_report():
    # The original's five measurements: generation 9.0447 x 0.2910, smoothness 0.0020; its
    # overall 1.2065 implies reconstruction_quality = 3 x 1.2065 - 2.6316 - 0.9980 = -0.0101.
    scores = rubric.original_scores(9.0447, 0.2910, 0.0020, recon_mse=0.0, recon_ssim=-0.0101)
    assert scores["generation_score"] == pytest.approx(2.6316, abs=5e-4)
    assert scores["interpolation_quality"] == pytest.approx(0.9980)
    assert scores["overall_score"] == pytest.approx(1.2065, abs=5e-4)
    assert scores["grade"] == "A - EXCELLENT"
    assert rubric.original_scores(1.0, 0.5, 0.0, 0.0, 0.5)["grade"] == "B - GOOD"  # (0.5 + 0.5 + 1) / 3
    assert rubric.original_scores(0.1, 0.1, 0.5, 0.5, 0.1)["grade"] == "D - NEEDS IMPROVEMENT"


def test_uniform_noise_earns_an_A_from_the_original_grade_and_fails_ours():
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    original = rubric.original_fields(noise, recon_mse=0.33, recon_ssim=0.0, smoothness=0.16)
    assert original["generation_score"] > 3 and original["grade"] == "A - EXCELLENT"
    # Noise is unrecognisable (chance accuracy) and far from real images: the rubric fails it.
    ours = rubric.apply_rubric({"class_fidelity": 0.1, "fd_relative": 1.2, "diversity_ratio": 2.0}, rubric.VAE_RUBRIC)
    assert ours["grade"] == "F - FAILING"


@pytest.mark.parametrize(
    "values,grade",
    [
        ({"class_fidelity": 0.98, "fd_relative": 0.05, "diversity_ratio": 0.95}, "A - EXCELLENT"),
        ({"class_fidelity": 0.95, "fd_relative": 0.10, "diversity_ratio": 0.90}, "A - EXCELLENT"),  # thresholds are inclusive
        ({"class_fidelity": 0.98, "fd_relative": 0.20, "diversity_ratio": 0.95}, "B - GOOD"),
        ({"class_fidelity": 0.80, "fd_relative": 0.05, "diversity_ratio": 0.95}, "C - FAIR"),
        ({"class_fidelity": 0.98, "fd_relative": 0.05, "diversity_ratio": 0.45}, "D - POOR"),  # collapse drags it down
        ({"class_fidelity": 0.98, "fd_relative": 0.90, "diversity_ratio": 0.95}, "F - FAILING"),
        ({"class_fidelity": math.nan, "fd_relative": 0.05, "diversity_ratio": 0.95}, "F - FAILING"),
        ({"class_fidelity": 0.98, "fd_relative": math.inf, "diversity_ratio": 0.95}, "F - FAILING"),
    ],
)
def test_vae_rubric_maps_known_values_to_known_grades(values, grade):
    result = rubric.apply_rubric(values, rubric.VAE_RUBRIC)
    assert result["grade"] == grade
    assert set(result["criteria"]) == set(values)


@pytest.mark.parametrize("accuracy,grade", [(0.937, "A - EXCELLENT"), (0.93, "A - EXCELLENT"), (0.91, "B - GOOD"),
                                            (0.86, "C - FAIR"), (0.80, "D - POOR"), (0.5, "F - FAILING")])
def test_cnn_rubric_maps_known_accuracies_to_known_grades(accuracy, grade):
    assert rubric.apply_rubric({"test_accuracy": accuracy}, rubric.CNN_RUBRIC)["grade"] == grade
