"""The graded report: pictures (PNG), report.json and report.md in `best_models/`.

`evaluate` loads the promoted models, grades them on the test set (`fashion_tune.grading`),
draws the pictures and writes the report. Every file is written to a temporary name and
renamed into place, so a report is never half-written.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import secrets
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from fashion_tune import grading
from fashion_tune.data import make_splits
from fashion_tune.datafiles import CLASSES, load_fashion_mnist
from fashion_tune.errors import ConfigError, FashionTuneError
from fashion_tune.likelihood import IWAE_SAMPLES, iwae_scores
from fashion_tune.promote import DEFAULT_MODELS_DIR, MODEL_FILE, code_version, jsonable, load_promoted, promote_hint
from fashion_tune.sampling import CANDIDATES

# Test images (stratified, the first of each class) for the likelihood bound: 1,000 images x k =
# 1,000 decodes take minutes on a CPU; pass --iwae-images 10000 for the whole test set on a GPU.
IWAE_IMAGES = 1_000

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PICTURES = {
    "cnn_confusion": "cnn_confusion_matrix.png",
    "vae_showcase": "vae_showcase.png",
    "vae_reconstruction": "vae_reconstruction.png",
    "vae_interpolations": "vae_interpolations.png",
    "vae_guided_demo": "vae_3_samples_per_item.png",
}


# --- files -------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    plt = _plt()
    try:
        return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


# --- pictures ----------------------------------------------------------------------------


def image_grid(
    images: Tensor,
    path: str | Path,
    title: str,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Draw images (R, C, 1, 28, 28) in [0, 1] as one R x C grid PNG, with optional labels and per-image captions."""
    plt = _plt()
    rows, cols = images.shape[:2]
    pad, cell = 2, 28
    gap = 12 if captions is not None else 0  # room under each image for its caption
    height, width = rows * (cell + pad + gap) + pad, cols * (cell + pad) + pad
    canvas = torch.ones(height, width)  # white frame; items keep Fashion-MNIST's white-on-black
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (cell + pad + gap), pad + c * (cell + pad)
            canvas[top : top + cell, left : left + cell] = images[r, c, 0].clamp(0, 1)
    fig, ax = plt.subplots(figsize=(width / 32 + (1.6 if row_labels else 0.3), height / 32 + 0.8))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    centres_y = [pad + r * (cell + pad + gap) + cell / 2 for r in range(rows)]
    centres_x = [pad + c * (cell + pad) + cell / 2 for c in range(cols)]
    ax.set_yticks(centres_y if row_labels else [])
    ax.set_yticklabels(list(row_labels) if row_labels else [])
    ax.set_xticks(centres_x if col_labels else [])
    ax.set_xticklabels(list(col_labels) if col_labels else [], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if captions is not None:
        for r in range(rows):
            for c in range(cols):
                ax.text(centres_x[c], pad + r * (cell + pad + gap) + cell + gap / 2, captions[r][c],
                        ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, Path(path))


def confusion_figure(confusion: list[list[int]], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows = true class, columns = predicted) with counts in the cells."""
    plt = _plt()
    matrix = torch.tensor(confusion, dtype=torch.float64)
    share = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(confusion)
    ax.set_xticks(range(n))
    ax.set_xticklabels(CLASSES[:n], rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(CLASSES[:n])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title)
    return save_figure(fig, Path(path))


def vae_pictures(pictures: grading.VAEPictures, directory: Path, candidates: int) -> dict[str, str]:
    """The four VAE pictures of the report; returns {name: file name}."""
    names = [CLASSES[i] for i in range(len(pictures.showcase))]
    image_grid(pictures.showcase, directory / PICTURES["vae_showcase"],
               "Class-conditional samples (raw, no guidance): a row per class", row_labels=names)
    comparison = torch.stack([pictures.originals, pictures.reconstructions, pictures.generated])
    image_grid(comparison, directory / PICTURES["vae_reconstruction"],
               "Original (test) -> reconstruction -> generated (raw)",
               row_labels=["original", "reconstruction", "generated"], col_labels=names)
    steps = pictures.interpolations.shape[1]
    image_grid(pictures.interpolations, directory / PICTURES["vae_interpolations"],
               "Class-to-class interpolation (z and class embedding move together)",
               row_labels=[f"{CLASSES[a]} -> {CLASSES[b]}" for a, b in pictures.interpolation_pairs],
               col_labels=[f"{t:.2f}" for t in torch.linspace(0, 1, steps).tolist()])
    captions = [[f"p={p:.3f}" for p in row] for row in pictures.guided_confidence.tolist()]
    image_grid(pictures.guided, directory / PICTURES["vae_guided_demo"],
               f"3 samples per item, each the best of {candidates} candidates (p = judge confidence)",
               row_labels=names, captions=captions)
    return {key: PICTURES[key] for key in ("vae_showcase", "vae_reconstruction", "vae_interpolations", "vae_guided_demo")}


def sample_picture(
    item_class: str | int,
    n: int,
    candidates: int = CANDIDATES,
    out: str | Path | None = None,
    seed: int | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    device: str = "auto",
) -> tuple[Path, list[float] | None, int]:
    """Draw n items of one class from the promoted VAE (best of `candidates` by the promoted CNN) into a PNG.

    Returns the PNG's path, the judge's confidence in each image (None without a promoted CNN,
    allowed only for candidates=1) and the seed, which reproduces the picture.
    """
    from fashion_tune.datafiles import class_index
    from fashion_tune.device import pick_device
    from fashion_tune.sampling import guided_sample, raw_sample

    index = class_index(item_class)
    slug = re.sub(r"[^a-z0-9]+", "-", CLASSES[index].lower()).strip("-")
    out = Path(out) if out is not None else Path(f"sample-{slug}.png")
    if out.suffix.lower() != ".png":
        raise FashionTuneError(f"--out {out}: the picture is a PNG; give a file name ending in .png")
    models_dir, device = Path(models_dir), pick_device(device)
    vae, _, _ = load_promoted("vae", models_dir, device)
    judge = None
    if _present(models_dir, "cnn"):
        judge, _, _ = load_promoted("cnn", models_dir, device)
    elif candidates > 1:
        raise FashionTuneError(f"guided sampling needs the promoted CNN as its judge, and {models_dir / 'cnn'} holds none; "
                               f"{promote_hint('cnn')}, or pass --candidates 1 for plain samples")
    seed = secrets.randbelow(2**31) if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    labels = torch.full((n,), index)
    if judge is not None:
        images, confidence = guided_sample(vae, judge, labels, candidates, generator)
        confidences = confidence.tolist()
    else:
        images, confidences = raw_sample(vae, labels, generator), None
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    grid = torch.ones(rows * cols, 1, 28, 28)  # cells past n stay white, i.e. invisible
    grid[:n] = images
    captions = None
    if confidences is not None:
        cells = [f"p={c:.3f}" for c in confidences] + [""] * (rows * cols - n)
        captions = [cells[r * cols : (r + 1) * cols] for r in range(rows)]
    how = f"each the best of {candidates} candidates" if candidates > 1 else "plain samples"
    image_grid(grid.view(rows, cols, 1, 28, 28), out, f"{CLASSES[index]}: {how} (seed {seed})", captions=captions)
    return out, confidences, seed


# --- evaluation --------------------------------------------------------------------------


def _model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("experiment", "trial_id", "epoch", "promoted_at", "validation_metric", "test_metric")
    return {**{key: manifest.get(key) for key in keys}, "sha256": manifest.get("files", {}).get(MODEL_FILE)}


def _present(models_dir: Path, kind: str) -> bool:
    return (models_dir / kind / MODEL_FILE).is_file()


def evaluate(
    kind: str = "all",
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    per_class: int = grading.PER_CLASS,
    guided_per_class: int = grading.GUIDED_PER_CLASS,
    candidates: int = CANDIDATES,
    seed: int = grading.SEED,
    iwae_images: int = IWAE_IMAGES,
    iwae_k: int = IWAE_SAMPLES,
    data_dir=None,
    device: str = "auto",
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Grade the promoted models of `kind` ("cnn", "vae" or "all") and write the report; returns report.json's content.

    Everything that can fail (missing or corrupt promoted files, a VAE without a judge) is
    checked before the first file is written, so an error leaves the previous report alone.
    """
    from tqdm.auto import tqdm

    from fashion_tune.device import pick_device

    models_dir = Path(models_dir)
    if kind not in ("cnn", "vae", "all"):
        raise ConfigError(f"unknown kind {kind!r}; choose one of: cnn, vae, all")
    if per_class < 10 or guided_per_class < 3 or candidates < 1:
        raise ConfigError(f"--per-class {per_class}, --guided-per-class {guided_per_class}, --candidates {candidates}: "
                          f"the pictures need at least 10 raw and 3 guided samples per class, and 1 candidate")
    if iwae_images < 10 or iwae_k < 1:
        raise ConfigError(f"--iwae-images {iwae_images}, --iwae-k {iwae_k}: the likelihood bound needs at least 10 images "
                          f"(one per class) and 1 importance sample")
    device = pick_device(device)
    want_cnn = kind in ("cnn", "all")
    want_vae = kind == "vae" or (kind == "all" and _present(models_dir, "vae"))
    skipped = []
    if kind == "all" and not _present(models_dir, "cnn") and not _present(models_dir, "vae"):
        raise FashionTuneError(f"nothing to grade: no promoted models in {models_dir}; {promote_hint('cnn')}, then the vae")
    if kind == "all" and not _present(models_dir, "vae"):
        skipped.append(f"no promoted VAE in {models_dir / 'vae'}: the VAE section is skipped")
    if kind == "vae" and not _present(models_dir, "vae"):
        raise FashionTuneError(f"no promoted vae in {models_dir / 'vae'}; {promote_hint('vae')}")
    if want_vae and not _present(models_dir, "cnn"):
        raise FashionTuneError(f"VAE grading is waiting for a judge: there is no promoted CNN in {models_dir / 'cnn'}; "
                               f"{promote_hint('cnn')}")
    cnn, cnn_manifest, _ = load_promoted("cnn", models_dir, device) if (want_cnn or want_vae) else (None, None, None)
    vae, vae_manifest, _ = load_promoted("vae", models_dir, device) if want_vae else (None, None, None)
    for line in skipped:
        echo(f"note: {line}")

    data = load_fashion_mnist(data_dir)
    test = make_splits(data, subset=10, val_subset=10)  # only the test split is used
    started = time.perf_counter()
    report: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"fashion-tune evaluate --kind {kind}",
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "machine": platform.machine(), "cpus": os.cpu_count()},
        "code": code_version(),
        "data": {"source": str(data.source), "sha256": dict(data.sha256), "test_images": len(test.test_y)},
    }
    if want_cnn:
        echo(f"grading the CNN on {len(test.test_y):,} test images")
        report["cnn"] = {"model": _model_identity(cnn_manifest), **grading.grade_cnn(cnn, test.test_x, test.test_y)}
    if want_vae:
        echo(f"grading the VAE: test ELBO, {per_class:,} raw and {guided_per_class:,} guided samples per class "
             f"(best of {candidates}), judged by the promoted CNN")
        bar = tqdm(total=grading.vae_grading_steps(vae.config.num_classes), desc="grading vae", unit="step",
                   disable=None if progress is None else not progress, dynamic_ncols=True)

        def tick(stage: str) -> None:
            bar.set_postfix_str(stage, refresh=False)
            bar.update()

        try:
            metrics, vae_pics = grading.grade_vae(vae, cnn, test.test_x, test.test_y, per_class=per_class,
                                                  guided_per_class=guided_per_class, candidates=candidates,
                                                  seed=seed, progress=tick)
        finally:
            bar.close()
        pick = grading.per_class_subset(test.test_y, max(1, iwae_images // vae.config.num_classes))
        echo(f"likelihood bound: IWAE with k={iwae_k:,} on {len(pick):,} binarized test images")
        metrics["likelihood"] = iwae_scores(vae, test.test_x[pick], test.test_y[pick], k=iwae_k, seed=seed)
        report["vae"] = {"model": _model_identity(vae_manifest), "judge": _model_identity(cnn_manifest), **metrics}
    report["elapsed_s"] = round(time.perf_counter() - started, 1)

    # All numbers are in; only now are files written.
    models_dir.mkdir(parents=True, exist_ok=True)
    if want_cnn:
        confusion_figure(report["cnn"]["test"]["confusion_matrix"], models_dir / PICTURES["cnn_confusion"],
                         f"CNN on the test set: accuracy {report['cnn']['test']['accuracy']:.4f}")
        report["cnn"]["pictures"] = {"cnn_confusion": PICTURES["cnn_confusion"]}
    if want_vae:
        report["vae"]["pictures"] = vae_pictures(vae_pics, models_dir, candidates)
    kept, dropped = _keep_current_sections(models_dir, report, {"cnn": cnn_manifest, "vae": vae_manifest})
    for section in kept:
        echo(f"kept the {section} section of the previous report (the same promoted models)")
    for section in dropped:
        echo(f"note: dropped the {section} section of the previous report: its promoted models changed; "
             f"run `fashion-tune evaluate --kind {section}` to grade them")
    write_text(models_dir / REPORT_JSON, json.dumps(jsonable(report), indent=2) + "\n")
    write_text(models_dir / REPORT_MD, render_markdown(report))
    return report


def _keep_current_sections(models_dir: Path, report: dict[str, Any], manifests: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Carry over sections of the previous report.json whose models (and judge) are still the promoted ones.

    Returns the kinds kept and the kinds dropped because their models changed.
    """
    try:
        previous = json.loads((models_dir / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return [], []
    kept, dropped = [], []
    for kind in ("cnn", "vae"):
        if kind in report or kind not in previous or not _present(models_dir, kind):
            continue
        current = manifests.get(kind) or _read_manifest(models_dir, kind)
        same = previous[kind].get("model", {}).get("sha256") == current.get("files", {}).get(MODEL_FILE)
        if kind == "vae":
            judge = manifests.get("cnn") or _read_manifest(models_dir, "cnn")
            same = same and previous[kind].get("judge", {}).get("sha256") == judge.get("files", {}).get(MODEL_FILE)
        if same:
            report[kind] = previous[kind]
            kept.append(kind)
        else:
            dropped.append(kind)
    return kept, dropped


def _read_manifest(models_dir: Path, kind: str) -> dict[str, Any]:
    try:
        return json.loads((models_dir / kind / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


# --- report.md ---------------------------------------------------------------------------


def _f(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(cell) if not isinstance(cell, str) else cell for cell in row) + " |" for row in rows]
    return lines + [""]


def _provenance(model: dict[str, Any]) -> str:
    return (f"trial `{model.get('trial_id')}` of `{model.get('experiment')}`, epoch {model.get('epoch')}, "
            f"promoted {model.get('promoted_at')}")


METRIC_DEFINITIONS = """\
- **Judge scores** (judge = the promoted CNN; each generated image was requested as class c):
  confidence = judge softmax probability of c; correct = (judge's top class == c);
  accuracy = mean(correct); mean confidence = mean(confidence); > 0.95 = share of images with
  confidence > 0.95; **quality score = mean(confidence x correct)** (the original's "confidence x accuracy").
  The "real test" column scores real test images the same way: what a perfect generator would get.
- **Raw** samples decode one z ~ N(0, I) per image. **Guided** samples keep, for each image, the
  candidate (of `candidates` decoded latents) the judge is most confident about (the original's
  "generate 100 candidates, select best"). Guidance raises judge scores by construction, so the
  grade uses raw samples only; the guided column shows what it costs in diversity.
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
  log p(x|y) >= IWAE_k = log (1/k) sum_i p(x|z_i,y) p(z_i) / q(z_i|x,y) with k importance samples
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
           f"code {(report['code'].get('git_commit') or 'unknown')[:12]}"
           f"{' (modified)' if report['code'].get('dirty') else ''}. "
           f"Test set: {report['data']['test_images']:,} images, never used to choose a model.", ""]
    cnn, vae = report.get("cnn"), report.get("vae")
    out += ["## Headline", ""]
    rows = []
    if cnn:
        rows.append(("CNN test accuracy", _f(cnn["test"]["accuracy"]), cnn["rubric"]["grade"]))
    if vae:
        s = vae["samples"]
        rows += [
            ("VAE judge accuracy, raw -> guided", f"{_f(s['raw']['accuracy'])} -> {_f(s['guided']['accuracy'])} (real test {_f(s['real']['accuracy'])})", ""),
            ("VAE mean confidence, raw -> guided", f"{_f(s['raw']['mean_confidence'])} -> {_f(s['guided']['mean_confidence'])}", ""),
            ("VAE feature diversity, raw -> guided", f"{_f(s['raw']['diversity_features'])} -> {_f(s['guided']['diversity_features'])} (real test {_f(s['real']['diversity_features'])})", ""),
            ("VAE Frechet distance (raw) vs real floor", f"{_f(s['raw']['fd'])} vs {_f(s['raw']['fd_floor'])} (relative {_f(s['raw']['fd_relative'], 3)}; {s['raw']['fd_samples']:,} images a side)", ""),
            ("VAE test -log p(x|y) bound, binarized (IWAE)", _likelihood_cell(vae.get("likelihood")), ""),
            ("VAE test negative ELBO on grey levels (cross-entropy, not a likelihood)", _f(vae["test"]["neg_elbo"], 2), ""),
            ("VAE grade (rubric below)", "", vae["rubric"]["grade"]),
        ]
    out += _table(["", "value", "grade"], rows)

    if cnn:
        out += ["## CNN (the judge)", "", f"Model: {_provenance(cnn['model'])}; {cnn['parameters']:,} parameters.", "",
                f"Test accuracy **{_f(cnn['test']['accuracy'])}**, cross-entropy {_f(cnn['test']['loss'])}.", ""]
        out += _table(["class", "test accuracy"], list(cnn["test"]["per_class_accuracy"].items()))
        out += [f"![CNN confusion matrix]({PICTURES['cnn_confusion']})", ""]
        out += ["Grade: test accuracy " + ", ".join(f"{g} {t}" for g, t in zip("ABCD", grading.rubric_table(grading.CNN_RUBRIC)[0][2]))
                + ", else F.", ""]
    if vae:
        s = vae["samples"]
        settings = vae["settings"]
        out += ["## VAE", "", f"Model: {_provenance(vae['model'])}; {vae['parameters']:,} parameters. "
                f"Judge: the promoted CNN ({_provenance(vae['judge'])}).", "",
                f"Samples: {settings['per_class']:,} raw and {settings['guided_per_class']:,} guided (best of "
                f"{settings['candidates']}) per class, seed {settings['seed']}.", ""]
        keys = [("accuracy", "judge accuracy"), ("mean_confidence", "mean confidence"), ("high_confidence", "confidence > 0.95"),
                ("quality_score", "quality score (confidence x correct)"), ("diversity_pixels", "diversity, pixels"),
                ("diversity_features", "diversity, judge features"), ("fd", "Frechet distance to test half A"),
                ("fd_floor", "real floor: FD(test half B, A)"), ("fd_ratio", "FD / floor"),
                ("fd_relative", "relative FD: (FD - floor) / tr(S_A)"), ("fd_samples", "images in each FD")]
        out += _table(["", "real test", "raw samples", "guided samples"],
                      [(label, s["real"].get(k), s["raw"].get(k), s["guided"].get(k)) for k, label in keys])
        t = vae["test"]
        out += _table(["test set", "value"], [("negative ELBO on grey levels (nats/image; not a likelihood)", t["neg_elbo"]), ("reconstruction term (nats/image)", t["recon"]),
                                               ("KL term (nats/image)", t["kl"]), ("reconstruction MSE per pixel", t["recon_mse"]),
                                               ("reconstruction SSIM (global)", t["recon_ssim"]),
                                               ("interpolation smoothness (mean step MSE)", vae["interpolation"]["smoothness"]),
                                               ("interpolation evenness (max / mean step)", vae["interpolation"]["evenness"])])
        out += ["### Grade", "", "Each criterion gets the first letter whose threshold it meets; the overall grade is the "
                "worst of them. Only unguided samples count: guided sampling can push judge confidence to 1 without the "
                "model getting better.", ""]
        criteria = vae["rubric"]["criteria"]
        meaning = {"class_fidelity": "raw-sample judge accuracy / judge accuracy on real test images",
                   "fd_relative": "(FD(raw samples, test half A) - real floor) / total variance of real features",
                   "diversity_ratio": "raw within-class feature diversity / real within-class feature diversity"}
        out += _table(["criterion", "definition", "value", "grade", "A", "B", "C", "D"],
                      [(name, meaning[name], criteria[name]["value"], criteria[name]["grade"], *bounds)
                       for name, _, bounds in grading.rubric_table(grading.VAE_RUBRIC)])
        out += [f"**Grade: {vae['rubric']['grade']}**", ""]
        out += ["Reference points: the same judge and rubric applied to real test images, as they are and "
                "blurred (a good VAE's samples are about as soft as a 3x3 blur), and to the guided samples "
                "(which the grade ignores).", ""]
        names = list(criteria)
        points = {"raw samples (graded)": {"values": {n: criteria[n]["value"] for n in names}, "grade": vae["rubric"]["grade"]},
                  f"guided samples (best of {settings['candidates']})": {
                      "values": {n: vae["guided_rubric"]["criteria"][n]["value"] for n in names},
                      "grade": vae["guided_rubric"]["grade"]},
                  **vae["reference_points"]}
        out += _table(["images", *names, "grade"], [(label, *[p["values"][n] for n in names], p["grade"])
                                                    for label, p in points.items()])
        o = vae["original"]
        out += ["### The original project's fields", "",
                "Computed as the original evaluator did. Its grade rewards contrast and spread, not "
                "recognisable items (uniform noise scores A), so it is shown for comparison only.", ""]
        out += _table(["field", "how it is computed", "this model", "original report"],
                      [(name, how, o[name], ORIGINAL_VALUES.get(name, "-")) for name, how in ORIGINAL_DEFINITIONS])
        out += ["### Pictures", ""]
        captions = {"vae_showcase": "10 raw samples per class", "vae_reconstruction": "original -> reconstruction -> generated",
                    "vae_interpolations": "class-to-class interpolations", "vae_guided_demo": "3 guided samples per item"}
        for key, name in vae.get("pictures", {}).items():
            out += [f"![{captions[key]}]({name})", ""]
    out += ["## Metric definitions", "", METRIC_DEFINITIONS]
    return "\n".join(out)
