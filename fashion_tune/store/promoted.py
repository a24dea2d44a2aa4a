"""The promoted models in `best_models/<kind>/`: their files, the lock every reader and writer
takes, recovery from a cut-off promotion, and loading them; and the independent judge that
`fashion-tune train-judge` ships beside them in `best_models/judge/` (same files, no metrics.json).

`fashion_tune.promotion.promote` (and `.judge`) write this directory; `evaluate`, `sample` and `predict` read it here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from fashion_tune.util.errors import CheckpointError, FashionTuneError
from fashion_tune.util.files import file_sha256
from fashion_tune.training.checkpoint import load_checkpoint
from fashion_tune.training.judge import judge_from_config
from fashion_tune.training.loop import load_model
from fashion_tune.store.names import DEFAULT_MODELS_DIR, MODELS_ENV

# The checkout the package runs from (an editable install or PYTHONPATH): its shipped best_models/.
CHECKOUT = Path(__file__).resolve().parents[2]  # fashion_tune/store/promoted.py -> the checkout
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
HISTORY_DIR = "history"
JUDGE = "judge"  # best_models/judge/: the independent judge (not a promoted kind: no sweep, no champion)
LOCK_FILE = ".lock"


def is_promoted(models_dir: str | Path, kind: str) -> bool:
    """Whether `models_dir` holds a promoted model of `kind`."""
    return (Path(models_dir) / kind / MODEL_FILE).is_file()


def find_models_dir(given: str | Path | None, kinds: tuple[str, ...]) -> Path:
    """The promoted models to read: --models-dir, else $FASHION_TUNE_MODELS, else the first of ./best_models
    and the checkout's shipped best_models/ that holds a model of one of `kinds`.

    A directory given by --models-dir is used as it is (the errors of its readers name it); one
    the variable names must hold a model, since a variable set long ago is easy to forget. When
    neither is set and no place holds a model, the error lists every place looked in.
    """
    what = " or ".join(kinds)
    if given:
        return Path(given)
    if os.environ.get(MODELS_ENV):
        chosen = Path(os.environ[MODELS_ENV])
        if not any(is_promoted(chosen, kind) for kind in kinds):
            raise FashionTuneError(f"no promoted {what} in {chosen} (the directory ${MODELS_ENV} names); promote one there, "
                                   f"pass --models-dir DIR, or unset {MODELS_ENV} to use ./best_models or the shipped models")
        return chosen
    places = [DEFAULT_MODELS_DIR]
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / DEFAULT_MODELS_DIR).resolve() != DEFAULT_MODELS_DIR.resolve():
        places.append(CHECKOUT / DEFAULT_MODELS_DIR)
    for place in places:
        if any(is_promoted(place, kind) for kind in kinds):
            return place
    looked = " and ".join(str(place.resolve()) for place in places)
    raise FashionTuneError(f"no promoted {what} found: looked in {looked}; pass --models-dir DIR or set "
                           f"{MODELS_ENV}=DIR to use other models, or {promote_hint(kinds[0])}")


def _read_required_json(path: Path, fix: str = "promote again with --force") -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FashionTuneError(f"{path} is missing; the model is incomplete, {fix}") from None
    except (OSError, ValueError) as exc:
        raise FashionTuneError(f"{path} is unreadable ({type(exc).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise FashionTuneError(f"{path} does not hold a JSON object; {fix}")
    return data


def model_source(manifest: dict[str, Any]) -> dict[str, Any]:
    """Where a promoted model came from, as manifests record it now: `experiment` (the sweep's name),
    `checkpoint` (the checkpoint's path inside the experiment, `trial_<id>/checkpoint_<n>`) and `storage`
    (the URI of a bucket's sweeps; None for a local disk, whose paths mean nothing elsewhere).

    Manifests from before held absolute paths (`experiment` the directory, `checkpoint` inside it);
    they read the same way."""
    experiment = str(manifest.get("experiment") or "")
    checkpoint = str(manifest.get("checkpoint") or "")
    if "storage" in manifest:  # written with relative paths
        return {"experiment": experiment or None, "checkpoint": checkpoint or None, "storage": manifest["storage"]}
    name = experiment.rstrip("/").rsplit("/", 1)[-1] or None
    inside = checkpoint[len(experiment.rstrip("/")) + 1:] if experiment and checkpoint.startswith(experiment.rstrip("/") + "/") else checkpoint
    storage = experiment.rstrip("/").rsplit("/", 1)[0] if "://" in experiment and "/" in experiment.split("://", 1)[1] else None
    return {"experiment": name, "checkpoint": inside or None, "storage": storage}


def promote_hint(kind: str) -> str:
    return f"run `fashion-tune promote EXPERIMENT_DIR --kind {kind}` first"


def load_promoted(kind: str, models_dir: str | Path = DEFAULT_MODELS_DIR, device: str | torch.device = "cpu"):
    """The promoted model of `kind` (eval mode), its manifest and its metrics; one-line errors otherwise.

    The model file is checked against the SHA-256 in its manifest, so a truncated or replaced
    file is reported instead of silently graded.
    """
    target = Path(models_dir) / kind
    # Under the lock: no promotion swaps the directory while its files are read together.
    with models_lock(Path(models_dir)):
        recover(Path(models_dir), kind)
        if not (target / MODEL_FILE).is_file():
            raise FashionTuneError(f"no promoted {kind} in {target} ({MODEL_FILE} missing); {promote_hint(kind)}")
        manifest = _read_required_json(target / MANIFEST_FILE)
        _check_sha256(target, manifest, "promote again with --force")
        model, state = load_model(target / MODEL_FILE, kind=kind, device=device)
        metrics = _read_required_json(target / METRICS_FILE)
    return model, manifest, metrics


def _check_sha256(target: Path, manifest: dict[str, Any], fix: str) -> None:
    expected = manifest.get("files", {}).get(MODEL_FILE)
    if expected and file_sha256(target / MODEL_FILE) != expected:
        raise CheckpointError(f"{target / MODEL_FILE} does not match the SHA-256 in {MANIFEST_FILE}: it was changed "
                              f"or corrupted; {fix}")


def train_judge_hint(models_dir: str | Path) -> str:
    return f"`fashion-tune train-judge --models-dir {models_dir}` ships one (a few minutes on a CPU)"


def judge_home(models_dir: str | Path) -> Path | None:
    """The models directory whose judge/ scores the VAE in `models_dir`: its own, else the judge shipped in the
    fashion-tune checkout's best_models/ (trained on the training split alone, it suits any VAE), else None."""
    for place in (Path(models_dir), CHECKOUT / DEFAULT_MODELS_DIR):
        if (place / JUDGE / MODEL_FILE).is_file():
            return place
    return None


def load_judge(models_dir: str | Path = DEFAULT_MODELS_DIR, device: str | torch.device = "cpu"):
    """The independent judge shipped in `models_dir/judge/` (eval mode) and its manifest; None, None when
    none is shipped; one-line errors for a damaged one."""
    target = Path(models_dir) / JUDGE
    fix = f"train it again: {train_judge_hint(models_dir)}"
    with models_lock(Path(models_dir)):
        recover(Path(models_dir), JUDGE)
        if not (target / MODEL_FILE).is_file():
            return None, None
        manifest = _read_required_json(target / MANIFEST_FILE, fix)
        _check_sha256(target, manifest, fix)
        state = load_checkpoint(target / MODEL_FILE, kind=JUDGE)
        model = judge_from_config(state["config"])
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{target / MODEL_FILE}: weights do not fit the judge its config describes "
                                  f"({str(exc).splitlines()[0][:100]}); {fix}") from None
    return model.to(device).eval(), manifest


@contextlib.contextmanager
def models_lock(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `models_dir/.lock` (fcntl.flock) for the block.

    Every reader and writer of the promoted models takes it: recovery, the comparison with the
    champion and the swap then see one consistent directory, and a `.tmp-*` or `.old-*` seen
    under the lock belongs to a process that died (the kernel drops a dead process's lock). Only
    an existing directory is locked: reading nothing must not create it.
    """
    if not models_dir.is_dir():
        yield
        return
    with open(models_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover(models_dir: Path, kind: str) -> str | None:
    """Finish or undo a promotion that was cut off; returns what it did, or None.

    Call it holding `models_lock`: then no live promotion owns the directories it removes."""
    target = models_dir / kind
    if not models_dir.is_dir():
        return None
    did = None
    for old in sorted(models_dir.glob(f".old-{kind}-*")):
        if not target.exists():
            os.rename(old, target)  # cut off between the two renames: the old champion goes back
            did = f"restored the champion from {old.name} after an interrupted promotion"
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in models_dir.glob(f".tmp-{kind}-*"):
        shutil.rmtree(tmp, ignore_errors=True)  # an incomplete new champion
    return did
