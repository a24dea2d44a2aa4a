"""The graded report: pictures (PNG), report.json and report.md in `best_models/`.

`evaluate` loads the promoted models, grades them on the test set (`fashion_tune.evaluation.grading`),
draws the pictures (`fashion_tune.reports.pictures`) and writes the report (`fashion_tune.reports.markdown`).
Every file is written to a temporary name and renamed into place, so a report is never half-written.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from fashion_tune.util.errors import ConfigError, FashionTuneError
from fashion_tune.util.files import read_json_object, write_json, write_text
from fashion_tune.util.provenance import code_version
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.data.splits import Splits, make_splits
from fashion_tune.models.sampling import CANDIDATES
from fashion_tune.training.device import cpu_description, pick_device
from fashion_tune.training.kinds import get_kind
from fashion_tune.store.promoted import (DEFAULT_MODELS_DIR, JUDGE, MANIFEST_FILE, MODEL_FILE, is_promoted, judge_home,
                                         load_judge, load_promoted, model_source, promote_hint, train_judge_hint)
from fashion_tune.evaluation import grading
from fashion_tune.evaluation.likelihood import IWAE_SAMPLES, iwae_scores
from fashion_tune.reports.markdown import render_markdown
from fashion_tune.reports.pictures import PICTURES, confusion_figure, vae_pictures


# Test images (stratified, the first of each class) for the likelihood bound: 1,000 images x k =
# 1,000 decodes take minutes on a CPU (make demo passes fewer); --iwae-images 10000 for the whole test set on a GPU.
IWAE_IMAGES = 1_000

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """A promoted model as the report names it: its experiment by name and checkpoint inside it (old manifests'
    absolute paths read the same way), the code the sweep trained it with, and its weights' SHA-256."""
    keys = ("trial_id", "epoch", "promoted_at", "validation_metric", "test_metric", "made_from")
    return {**model_source(manifest), **{key: manifest.get(key) for key in keys},
            "sha256": manifest.get("files", {}).get(MODEL_FILE)}


def _judge_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("architecture", "seed", "parameters", "test_accuracy", "trained_at", "command")
    identity = {**{key: manifest.get(key) for key in keys}, "trained_on": manifest.get("training", {}).get("what"),
                "sha256": manifest.get("files", {}).get(MODEL_FILE)}
    if manifest.get("location"):  # not beside the graded models: the shipped judge
        identity["location"] = manifest["location"]
    return identity


def _judges(cnn_manifest: dict[str, Any], judge_manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Who scored the VAE's samples: report.json's `vae.judges`."""
    return {"headline": "independent" if judge_manifest else "promoted_cnn",
            "independent": _judge_identity(judge_manifest) if judge_manifest else None,
            "promoted_cnn": {**_model_identity(cnn_manifest), "role": "picks the guided samples (the guide)"}}


@dataclass(frozen=True)
class EvaluationSizes:
    """How much `evaluate` samples: the `fashion-tune evaluate` flags of the same names, checked when made
    (each too-small value named with its flag)."""

    per_class: int = grading.PER_CLASS  # raw VAE samples per class
    guided_per_class: int = grading.GUIDED_PER_CLASS  # guided VAE samples per class
    candidates: int = CANDIDATES  # candidates per guided sample
    seed: int = grading.SEED  # of all sampling
    iwae_images: int = IWAE_IMAGES  # binarized test images for the likelihood bound
    iwae_k: int = IWAE_SAMPLES  # importance samples per image in that bound

    def __post_init__(self) -> None:
        minimums = [  # (flag, value, least, why): each wrong flag is named on its own
            ("--per-class", self.per_class, 10, "raw samples per class for the pictures"),
            ("--guided-per-class", self.guided_per_class, 3, "guided samples per class for the pictures"),
            ("--candidates", self.candidates, 1, "candidate per guided sample"),
            ("--iwae-images", self.iwae_images, 10, "test images for the likelihood bound (one per class)"),
            ("--iwae-k", self.iwae_k, 1, "importance sample per image in the likelihood bound"),
        ]
        for flag, value, least, why in minimums:
            if value < least:
                raise ConfigError(f"{flag} {value} is too small: evaluate needs at least {least} {why}; "
                                  f"pass {flag} {least} or more")


def evaluate(
    kind: str = "all",
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    sizes: EvaluationSizes = EvaluationSizes(),
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
    models_dir = Path(models_dir)
    if kind not in ("cnn", "vae", "all"):
        raise ConfigError(f"unknown kind {kind!r}; choose one of: cnn, vae, all")
    per_class, guided_per_class, candidates, seed = sizes.per_class, sizes.guided_per_class, sizes.candidates, sizes.seed
    iwae_images, iwae_k = sizes.iwae_images, sizes.iwae_k
    device = pick_device(device)
    want_cnn, want_vae, skipped = _sections(kind, models_dir)
    cnn, cnn_manifest, _ = load_promoted("cnn", models_dir, device) if (want_cnn or want_vae) else (None, None, None)
    vae, vae_manifest, _ = load_promoted("vae", models_dir, device) if want_vae else (None, None, None)
    home = judge_home(models_dir) if want_vae else None
    judge, judge_manifest = load_judge(home, device) if home is not None else (None, None)
    for line in skipped:
        echo(f"note: {line}")
    if home is not None and home.resolve() != models_dir.resolve():
        judge_manifest = {**judge_manifest, "location": str(home.resolve() / JUDGE)}
        echo(f"note: no independent judge in {models_dir / JUDGE}: the VAE's samples are scored by the one shipped in "
             f"{home / JUDGE}; {train_judge_hint(models_dir)} to ship one beside these models")
    if want_vae and judge is None:
        echo(f"note: no independent judge in {models_dir / JUDGE}: the VAE's samples are scored by the promoted CNN, "
             f"which picked the guided ones (labelled so in the report); {train_judge_hint(models_dir)}")

    data = load_fashion_mnist(data_dir)
    test = make_splits(data, subset=10, val_subset=10)  # only the test split is used
    started = time.perf_counter()
    report: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"fashion-tune evaluate --kind {kind}",
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "machine": platform.machine(), "cpu": cpu_description(), "cpus": os.cpu_count()},
        "code": code_version(),
        "data": {"source": str(data.source), "sha256": dict(data.sha256), "test_images": len(test.test_y)},
    }
    if want_cnn:
        echo(f"grading the CNN on {len(test.test_y):,} test images")
        report["cnn"] = {"model": _model_identity(cnn_manifest), **grading.grade_cnn(cnn, test.test_x, test.test_y)}
    vae_pics = None
    if want_vae:
        judged_by = ("the independent judge (and the promoted CNN, secondary)" if judge is not None
                     else "the promoted CNN (no independent judge)")
        echo(f"grading the VAE: test ELBO, {per_class:,} raw and {guided_per_class:,} guided samples per class "
             f"(best of {candidates} by the promoted CNN), scored by {judged_by}")
        metrics, vae_pics = _grade_vae(vae, cnn, judge, test, progress, per_class=per_class,
                                       guided_per_class=guided_per_class, candidates=candidates, seed=seed)
        pick = grading.per_class_subset(test.test_y, max(1, iwae_images // vae.config.num_classes))
        echo(f"likelihood bound: IWAE with k={iwae_k:,} on {len(pick):,} binarized test images")
        with tqdm(total=len(pick), desc="likelihood bound", unit="image", dynamic_ncols=True,
                  disable=None if progress is None else not progress) as bar:
            metrics["likelihood"] = iwae_scores(vae, test.test_x[pick], test.test_y[pick], k=iwae_k, seed=seed,
                                                progress=bar.update)
        report["vae"] = {"model": _model_identity(vae_manifest), "judges": _judges(cnn_manifest, judge_manifest), **metrics}
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    _write_report(models_dir, report, vae_pics, candidates, {"cnn": cnn_manifest, "vae": vae_manifest}, echo)
    return report


def _sections(kind: str, models_dir: Path) -> tuple[bool, bool, list[str]]:
    """Whether to grade the CNN and the VAE, and notes on what is skipped; one-line errors for what cannot be."""
    has_cnn, has_vae = is_promoted(models_dir, "cnn"), is_promoted(models_dir, "vae")
    want_cnn = kind in ("cnn", "all")
    want_vae = kind == "vae" or (kind == "all" and has_vae)
    skipped = []
    if kind == "all" and not has_cnn and not has_vae:
        raise FashionTuneError(f"nothing to grade: no promoted models in {models_dir}; {promote_hint('cnn')}, then the vae")
    if kind == "all" and not has_vae:
        skipped.append(f"no promoted VAE in {models_dir / 'vae'}: the VAE section is skipped")
    if kind == "vae" and not has_vae:
        raise FashionTuneError(f"no promoted vae in {models_dir / 'vae'}; {promote_hint('vae')}")
    if want_vae and not has_cnn:
        raise FashionTuneError(f"VAE grading is waiting for a judge: there is no promoted CNN in {models_dir / 'cnn'}; "
                               f"{promote_hint('cnn')}")
    return want_cnn, want_vae, skipped


def _grade_vae(vae, cnn, judge, test: Splits, progress: bool | None, **settings) -> tuple[dict[str, Any], grading.VAEPictures]:
    """grading.grade_vae with a progress bar (shown on a terminal unless `progress` says otherwise)."""
    judges = 1 if judge is None else 2
    bar = tqdm(total=grading.vae_grading_steps(vae.config.num_classes, judges), desc="grading vae", unit="step",
               disable=None if progress is None else not progress, dynamic_ncols=True)

    def tick(stage: str) -> None:
        bar.set_postfix_str(stage, refresh=False)
        bar.update()

    try:
        return grading.grade_vae(vae, cnn, test.test_x, test.test_y, progress=tick, judge=judge, **settings)
    finally:
        bar.close()


def _write_report(models_dir: Path, report: dict[str, Any], vae_pics: grading.VAEPictures | None, candidates: int,
                  manifests: dict[str, Any], echo: Callable[[str], None]) -> None:
    """The pictures, report.json and report.md; sections of the previous report that still hold are kept."""
    models_dir.mkdir(parents=True, exist_ok=True)
    if "cnn" in report:
        confusion_figure(report["cnn"]["test"]["confusion_matrix"], models_dir / PICTURES["cnn_confusion"],
                         f"CNN on the test set: accuracy {report['cnn']['test']['accuracy']:.4f}")
        report["cnn"]["pictures"] = {"cnn_confusion": PICTURES["cnn_confusion"]}
    if vae_pics is not None:
        report["vae"]["pictures"] = vae_pictures(vae_pics, models_dir, candidates)
    kept, dropped = _keep_current_sections(models_dir, report, manifests)
    for section in kept:
        echo(f"kept the {section} section of the previous report (the same promoted models)")
    for section in dropped:
        echo(f"note: dropped the {section} section of the previous report: its promoted models changed; "
             f"run `fashion-tune evaluate --kind {section}` to grade them")
    write_json(models_dir / REPORT_JSON, report)
    write_text(models_dir / REPORT_MD, render_markdown(report))


def _keep_current_sections(models_dir: Path, report: dict[str, Any], manifests: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Carry over sections of the previous report.json whose models (and judges) are still the ones shipped.

    Returns the kinds kept and the kinds dropped because their models changed.
    """
    previous = read_json_object(models_dir / REPORT_JSON)
    if not previous:
        return [], []
    kept, dropped = [], []
    for kind in ("cnn", "vae"):
        if kind in report or kind not in previous or not is_promoted(models_dir, kind):
            continue
        if _graded_models(previous[kind]) == _shipped_models(models_dir, kind, manifests):
            report[kind] = previous[kind]
            kept.append(kind)
        else:
            dropped.append(kind)
    return kept, dropped


def _graded_models(section: dict[str, Any]) -> dict[str, Any]:
    """The SHA-256 of every model a report section's numbers depend on (reports from before the
    independent judge name the promoted CNN under `judge`)."""
    shas = {"model": section.get("model", {}).get("sha256")}
    judges = section.get("judges")
    if judges is not None:
        shas["guide"] = (judges.get("promoted_cnn") or {}).get("sha256")
        shas["independent"] = (judges.get("independent") or {}).get("sha256")
    elif "judge" in section:
        shas.update(guide=section["judge"].get("sha256"), independent=None)
    return shas


def _shipped_models(models_dir: Path, kind: str, manifests: dict[str, Any]) -> dict[str, Any]:
    """The same SHA-256s for the models shipped in `models_dir` now."""
    def sha(name: str) -> str | None:
        home = judge_home(models_dir) if name == JUDGE else models_dir
        manifest = manifests.get(name) or (read_json_object(home / name / MANIFEST_FILE) if home else {})
        return manifest.get("files", {}).get(MODEL_FILE)

    shas = {"model": sha(kind)}
    guide = get_kind(kind).judge
    if guide is not None:
        shas.update(guide=sha(guide), independent=sha(JUDGE))
    return shas
