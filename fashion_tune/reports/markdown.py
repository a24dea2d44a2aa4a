"""report.md: the graded report as Markdown, from report.json's content."""

from __future__ import annotations

from typing import Any, Sequence

from fashion_tune.util.files import format_number as _f
from fashion_tune.util.provenance import describe_code
from fashion_tune.evaluation.rubric import CNN_RUBRIC, VAE_RUBRIC, rubric_table
from fashion_tune.reports.pictures import PICTURES


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(cell) if not isinstance(cell, str) else cell for cell in row) + " |" for row in rows]
    return lines + [""]


def _provenance(model: dict[str, Any]) -> str:
    made = f", trained with code {describe_code(model['made_from'])}" if model.get("made_from") else ""
    return (f"trial `{model.get('trial_id')}` of the sweep `{model.get('experiment')}`, epoch {model.get('epoch')}, "
            f"promoted {model.get('promoted_at')}{made}")


def judges_of(vae: dict[str, Any]) -> dict[str, Any]:
    """report.json's `vae.judges`; a report from before the independent judge had only the promoted CNN (`judge`)."""
    return vae.get("judges") or {"headline": "promoted_cnn", "independent": None, "promoted_cnn": vae.get("judge") or {}}


def headline_judge_name(vae: dict[str, Any]) -> str:
    """Who scored the VAE section's headline numbers, in words."""
    if judges_of(vae)["headline"] == "independent":
        return "the independent judge"
    return "the promoted CNN (no independent judge; it picked the guided samples)"


def _judge_line(vae: dict[str, Any]) -> str:
    judges = judges_of(vae)
    guide = f"Guide: the promoted CNN ({_provenance(judges['promoted_cnn'])}) picks each guided sample."
    independent = judges.get("independent")
    if not independent:
        return (f"{guide} No independent judge was shipped (`fashion-tune train-judge`), so the samples are scored "
                f"by the guide itself: its guided scores are high by construction.")
    return (f"{guide} **Scored by the independent judge** ({independent.get('architecture')}; seed "
            f"{independent.get('seed')}, {independent.get('parameters'):,} parameters, test accuracy "
            f"{_f(independent.get('test_accuracy'))}; trained on {independent.get('trained_on')}"
            + (f"; the one shipped in `{independent['location']}`, none being beside these models" if independent.get("location") else "")
            + "), which picked nothing; the guide's own scores follow as secondary figures.")


METRIC_DEFINITIONS = """\
- **Judge scores** (judge = the classifier named beside the numbers: the **independent judge**, a
  second network of another architecture and seed trained on the training split only, which picked
  nothing; or the **promoted CNN**, which picked the guided samples; each generated image was
  requested as class c):
  confidence = judge softmax probability of c; correct = (judge's top class == c);
  accuracy = mean(correct); mean confidence = mean(confidence); > 0.95 = share of images with
  confidence > 0.95; **quality score = mean(confidence x correct)** (the original's "confidence x accuracy").
  The "real test" column scores real test images the same way: what a perfect generator would get.
- **Raw** samples decode one z ~ p(z|y) per image, from the VAE's prior (the standard normal, or the
  mixture of Gaussians per class that promotion fits to the training images' posteriors, where it
  raised the validation ELBO: the VAE section says which). **Guided** samples keep, for each image, the
  candidate (of `candidates` decoded latents) the promoted CNN is most confident about (the original's
  "generate 100 candidates, select best"). Guidance raises the promoted CNN's scores by construction,
  so the independent judge's are the headline, and the grade uses raw samples only (scored by the
  promoted CNN, the kind of judge the rubric was set with); the guided
  column shows what guidance buys in the eyes of a classifier that did not pick, and what it costs
  in diversity.
- **Diversity** = mean pairwise L2 distance between images of the same class, averaged over the
  classes; in pixels (784 values in [0, 1]) and in the judge's penultimate feature space.
- **Frechet distance (FD)** between Gaussians fitted to judge features,
  |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (FID with the judge in place of Inception). The
  test set is split into stratified halves A and B; samples are compared with A, and the
  **floor** is FD(B, A) at the same number of images. FD ratio = FD / floor (1 = as close to
  the test set as real images are; it grows with the number of images as the floor shrinks).
  **Relative FD** = (FD - floor) / tr(S_A), the excess over real data as a share of the real
  features' total variance: scale-free and nearly independent of the number of images.
- **Likelihood bound (the number to compare with papers)**: the test images binarized once (each
  pixel 1 with probability its grey level, seed 0), and the importance-weighted bound
  log p(x|y) >= IWAE_k = log (1/k) sum_i p(x|z_i,y) p(z_i|y) / q(z_i|x,y) with k importance samples
  (Burda et al. 2016); reported as -IWAE_k, an upper bound on the negative log-likelihood in nats,
  +- its standard error over images. The VAE is class-conditional, so the bound is on log p(x|y);
  -log p(x) <= -IWAE_k + log 10 follows from the uniform class prior. Literature anchors on
  dynamically binarized Fashion-MNIST (k = 5,000): VAE with a Gaussian prior 228.7 nats,
  Exemplar VAE 223.3 (both unconditional).
- **Test ELBO on grey levels**: negative ELBO = recon + KL in nats per image with grey levels as
  Bernoulli targets (one z draw per image, fixed seed), on all test images. This is the training
  objective, a cross-entropy rather than a log-likelihood: its floor BCE(x, x) is about 188 nats.
  **recon MSE** is the per-pixel mean squared error
  of reconstructions from the posterior mean.
- **Interpolation**: paths from class a to class b (z_a -> z_b and embed(a) -> embed(b) linearly,
  8 frames) for all 90 ordered class pairs; **smoothness** = mean MSE between consecutive frames
  (the original's definition; lower = smoother); **evenness** = largest step / mean step along a
  path (1 = evenly spaced, large = a jump).
"""

ORIGINAL_DEFINITIONS = [
    ("diversity", "mean pairwise pixel L2 distance over raw samples pooled across all classes (100 per class)"),
    ("avg_quality", "mean per-image standard deviation of pixel values (contrast; the judge plays no part)"),
    ("generation_score", "diversity x avg_quality"),
    ("interpolation_smoothness", "mean MSE between consecutive interpolation frames (lower = smoother)"),
    ("interpolation_quality", "1 - interpolation_smoothness"),
    ("reconstruction_quality", "(1 - recon MSE) x mean global SSIM of test reconstructions"),
    ("overall_score", "(reconstruction_quality + generation_score + interpolation_quality) / 3"),
    ("grade", "A >= 0.8, B >= 0.6, C >= 0.4, else D, on overall_score"),
]
ORIGINAL_VALUES = {"diversity": 9.0447, "avg_quality": 0.2910, "generation_score": 2.6316,
                   "interpolation_smoothness": 0.0020, "interpolation_quality": 0.9980, "overall_score": 1.2065,
                   "grade": "A - EXCELLENT"}


def _likelihood_cell(likelihood: dict[str, Any] | None) -> str:
    if not likelihood:
        return "not measured"
    return (f"{_f(likelihood['nll_bound'], 2)} +- {_f(likelihood['nll_bound_stderr'], 2)} nats "
            f"(-log p(x) <= {_f(likelihood['nll_bound_unconditional'], 2)}; k = {likelihood['k']:,}, "
            f"{likelihood['images']:,} images)")


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: headline table, details, formulas, rubric and linked pictures."""
    out = ["# fashion-tune report", "",
           f"Made {report['generated_at']} by `{report['command']}` "
           f"({report['environment']['device']}, torch {report['environment']['torch']}, {report['elapsed_s']} s); "
           f"code {describe_code(report['code'])}. "
           f"Test set: {report['data']['test_images']:,} images, never used to choose a model.", ""]
    cnn, vae = report.get("cnn"), report.get("vae")
    out += ["## Headline", ""] + _headline(cnn, vae)
    if cnn:
        out += _cnn_section(cnn)
    if vae:
        out += _vae_section(vae) + _vae_grade(vae) + _vae_original_and_pictures(vae)
    out += ["## Metric definitions", "", METRIC_DEFINITIONS]
    return "\n".join(out)


def _headline(cnn: dict[str, Any] | None, vae: dict[str, Any] | None) -> list[str]:
    rows = []
    if cnn:
        rows.append(("CNN test accuracy", _f(cnn["test"]["accuracy"]), cnn["rubric"]["grade"]))
    if vae:
        s, by = vae["samples"], _by_judge(vae)
        rows += [
            (f"VAE class accuracy, raw -> guided ({by})", f"{_f(s['raw']['accuracy'])} -> {_f(s['guided']['accuracy'])} (real test {_f(s['real']['accuracy'])})", ""),
            (f"VAE mean confidence, raw -> guided ({by})", f"{_f(s['raw']['mean_confidence'])} -> {_f(s['guided']['mean_confidence'])}", ""),
        ]
        if "promoted_cnn" in vae:
            g = vae["promoted_cnn"]["samples"]
            rows.append(("VAE class accuracy, raw -> guided (secondary: by the promoted CNN, which picked the guided samples)",
                         f"{_f(g['raw']['accuracy'])} -> {_f(g['guided']['accuracy'])} (real test {_f(g['real']['accuracy'])})", ""))
        rows += [
            (f"VAE feature diversity, raw -> guided ({by}'s features)", f"{_f(s['raw']['diversity_features'])} -> {_f(s['guided']['diversity_features'])} (real test {_f(s['real']['diversity_features'])})", ""),
            (f"VAE Frechet distance (raw) vs real floor ({by}'s features)", f"{_f(s['raw']['fd'])} vs {_f(s['raw']['fd_floor'])} (relative {_f(s['raw']['fd_relative'], 3)}; {s['raw']['fd_samples']:,} images a side)", ""),
            ("VAE test -log p(x|y) bound, binarized (IWAE)", _likelihood_cell(vae.get("likelihood")), ""),
            ("VAE test negative ELBO on grey levels (cross-entropy, not a likelihood)", _f(vae["test"]["neg_elbo"], 2), ""),
            (f"VAE grade (rubric below; {_grade_judge(vae)})", "", vae["rubric"]["grade"]),
        ]
    return _table(["", "value", "grade"], rows)


def _grade_judge(vae: dict[str, Any]) -> str:
    """Who the letter grade comes from: the promoted CNN whenever report.json says so (or has no independent judge)."""
    if vae.get("rubric_judge") == "promoted_cnn" or judges_of(vae)["headline"] != "independent":
        return "by the promoted CNN"
    return "by the independent judge"  # a report from before the grade was pinned to the promoted CNN


def _by_judge(vae: dict[str, Any]) -> str:
    return "independent judge" if judges_of(vae)["headline"] == "independent" else "promoted CNN, no independent judge"


def _cnn_section(cnn: dict[str, Any]) -> list[str]:
    out = ["## CNN (the judge)", "", f"Model: {_provenance(cnn['model'])}; {cnn['parameters']:,} parameters.", "",
           f"Test accuracy **{_f(cnn['test']['accuracy'])}**, cross-entropy {_f(cnn['test']['loss'])}"
           + (f", with flip test-time augmentation (without it: {_f(cnn['test']['accuracy_no_tta'])})."
              if cnn.get("tta") and "accuracy_no_tta" in cnn["test"] else "."), ""]
    out += _table(["class", "test accuracy"], list(cnn["test"]["per_class_accuracy"].items()))
    out += [f"![CNN confusion matrix]({PICTURES['cnn_confusion']})", ""]
    return out + ["Grade: test accuracy " + ", ".join(f"{g} {t}" for g, t in zip("ABCD", rubric_table(CNN_RUBRIC)[0][2]))
                  + ", else F.", ""]


_SAMPLE_ROWS = [("accuracy", "judge accuracy"), ("mean_confidence", "mean confidence"), ("high_confidence", "confidence > 0.95"),
                ("quality_score", "quality score (confidence x correct)"), ("diversity_pixels", "diversity, pixels"),
                ("diversity_features", "diversity, judge features"), ("fd", "Frechet distance to test half A"),
                ("fd_floor", "real floor: FD(test half B, A)"), ("fd_ratio", "FD / floor"),
                ("fd_relative", "relative FD: (FD - floor) / tr(S_A)"), ("fd_samples", "images in each FD")]


def _vae_section(vae: dict[str, Any]) -> list[str]:
    s, settings, t = vae["samples"], vae["settings"], vae["test"]
    prior = f" Prior p(z|y): {vae['prior']}." if "prior" in vae else ""
    out = ["## VAE", "", f"Model: {_provenance(vae['model'])}; {vae['parameters']:,} parameters.{prior}", "",
           _judge_line(vae), "",
           f"Samples: {settings['per_class']:,} raw and {settings['guided_per_class']:,} guided (best of "
           f"{settings['candidates']} by the promoted CNN) per class, seed {settings['seed']}.", "",
           f"Scored by {headline_judge_name(vae)}:", ""]
    out += _samples_table(s)
    if "promoted_cnn" in vae:
        out += ["Secondary: the same images scored by the promoted CNN, which picked the guided samples (its guided "
                "column is high by construction):", ""]
        out += _samples_table(vae["promoted_cnn"]["samples"])
    return out + _table(["test set", "value"], [
        ("negative ELBO on grey levels (nats/image; not a likelihood)", t["neg_elbo"]),
        ("reconstruction term (nats/image)", t["recon"]), ("KL term (nats/image)", t["kl"]),
        ("reconstruction MSE per pixel", t["recon_mse"]), ("reconstruction SSIM (global)", t["recon_ssim"]),
        ("interpolation smoothness (mean step MSE)", vae["interpolation"]["smoothness"]),
        ("interpolation evenness (max / mean step)", vae["interpolation"]["evenness"])])


def _samples_table(s: dict[str, Any]) -> list[str]:
    return _table(["", "real test", "raw samples", "guided samples"],
                  [(label, s["real"].get(k), s["raw"].get(k), s["guided"].get(k)) for k, label in _SAMPLE_ROWS])


_CRITERIA = {"class_fidelity": "raw-sample judge accuracy / judge accuracy on real test images",
             "fd_relative": "(FD(raw samples, test half A) - real floor) / total variance of real features",
             "diversity_ratio": "raw within-class feature diversity / real within-class feature diversity"}


def _vae_grade(vae: dict[str, Any]) -> list[str]:
    pinned = "independent_rubric" in vae
    why = (" The rubric's thresholds were set with a convolutional judge, and the independent judge (another "
           "architecture) hardly tells raw samples from real ones in its features, so its letters are shown for "
           "contrast only." if pinned else "")
    out = ["### Grade", "", f"Scored {_grade_judge(vae)}.{why} Each criterion gets the first letter whose "
           "threshold it meets; the overall grade is the worst of them. Only unguided samples count: guided sampling "
           "can push the guide's confidence to 1 without the model getting better.", ""]
    criteria = vae["rubric"]["criteria"]
    out += _table(["criterion", "definition", "value", "grade", "A", "B", "C", "D"],
                  [(name, _CRITERIA[name], criteria[name]["value"], criteria[name]["grade"], *bounds)
                   for name, _, bounds in rubric_table(VAE_RUBRIC)])
    if pinned:
        contrast = f" (the independent judge's, for contrast: {vae['independent_rubric']['grade']})"
    elif "promoted_cnn" in vae:
        contrast = f" (by the promoted CNN, secondary: {vae['promoted_cnn']['rubric']['grade']})"
    else:
        contrast = ""
    out += [f"**Grade: {vae['rubric']['grade']}**{contrast}", ""]
    out += ["Reference points: the same judge and rubric applied to real test images, as they are and "
            "blurred (a good VAE's samples are about as soft as a 3x3 blur), and to the guided samples "
            "(which the grade ignores).", ""]
    names = list(criteria)
    points = {"raw samples (graded)": {"values": {n: criteria[n]["value"] for n in names}, "grade": vae["rubric"]["grade"]},
              f"guided samples (best of {vae['settings']['candidates']})": {
                  "values": {n: vae["guided_rubric"]["criteria"][n]["value"] for n in names},
                  "grade": vae["guided_rubric"]["grade"]},
              **vae["reference_points"]}
    return out + _table(["images", *names, "grade"], [(label, *[p["values"][n] for n in names], p["grade"])
                                                      for label, p in points.items()])


_CAPTIONS = {"vae_showcase": "10 raw samples per class", "vae_reconstruction": "original -> reconstruction -> generated",
             "vae_interpolations": "class-to-class interpolations", "vae_guided_demo": "3 guided samples per item"}


def _vae_original_and_pictures(vae: dict[str, Any]) -> list[str]:
    o = vae["original"]
    out = ["### The original project's fields", "",
           "Computed as the original evaluator did. Its grade rewards contrast and spread, not "
           "recognisable items (uniform noise scores A), so it is shown for comparison only.", ""]
    out += _table(["field", "how it is computed", "this model", "original report"],
                  [(name, how, o[name], ORIGINAL_VALUES.get(name, "-")) for name, how in ORIGINAL_DEFINITIONS])
    out += ["### Pictures", ""]
    for key, name in vae.get("pictures", {}).items():
        out += [f"![{_CAPTIONS[key]}]({name})", ""]
    return out
