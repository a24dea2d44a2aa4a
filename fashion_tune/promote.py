"""Promotion: the best trial of a sweep becomes the champion in `best_models/<kind>/`.

`promote_best_trial` picks the trial with the best validation metric (the sweep's own, via
`fashion_tune.analysis.best_trial`; the test set plays no part in the choice), reloads its
checkpoint, re-scores it on the full validation split and on the test set, and compares it
with the current champion on the same validation images. The challenger replaces the champion
only if its validation metric is strictly better (or with `force`); the replaced champion is
kept in `best_models/<kind>/history/<time>/`.

`best_models/<kind>/` holds:

- model.pt       weights-only checkpoint (kind, config, model state_dict, epoch, metrics);
                 `torch.load(..., weights_only=True)` and `train.load_model` read it
- config.yaml    the model's full training config
- metrics.json   validation (re-scored on the whole validation split) and test metrics
- manifest.json  where it came from: experiment, trial id, checkpoint, epoch, promotion time,
                 git commit, data checksums, and the SHA-256 of model.pt
- history/       replaced champions, one directory each

Writes are atomic: the new directory is assembled next to the old one (`.tmp-<kind>-*`) and
swapped in with two renames, during which Ctrl-C is held back. A crash between the renames
leaves `.old-<kind>-*`, which the next promote or load puts back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from fashion_tune.checkpoint import save_checkpoint
from fashion_tune.cluster import is_uri
from fashion_tune.config import MONITOR
from fashion_tune.data import make_splits
from fashion_tune.datafiles import load_fashion_mnist
from fashion_tune.errors import CheckpointError, FashionTuneError
from fashion_tune.grading import cnn_test_scores, vae_test_scores

DEFAULT_MODELS_DIR = Path("best_models")
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
HISTORY_DIR = "history"

# The metric champion and challenger are compared on (re-scored on the validation split), with
# the name training reports it under; the direction is MONITOR's.
PRIMARY = {"vae": ("neg_elbo", MONITOR["vae"][1]), "cnn": ("accuracy", MONITOR["cnn"][1])}
LABELS = {"neg_elbo": "val neg. ELBO (nats)", "recon": "val recon (nats)", "kl": "val KL (nats)",
          "accuracy": "val accuracy", "loss": "val loss"}


@dataclass
class Promotion:
    """What `promote_best_trial` decided and why."""

    kind: str
    promoted: bool
    reason: str
    destination: Path
    trial_id: str
    challenger: dict[str, Any]  # {"validation": {...}, "test": {...}}
    champion: dict[str, Any] | None = None  # {"validation": {...}, "manifest": {...}} when there was one
    history: Path | None = None  # where the replaced champion went
    notes: list[str] = field(default_factory=list)


# --- scoring -------------------------------------------------------------------------------


def evaluation_splits(config: dict[str, Any], data_dir=None):
    """The full validation split a config's run held out (val_size, split_seed) and the full test set."""
    data = load_fashion_mnist(data_dir)
    # Only validation and test are used; a 10-image training subset keeps the 50k training images out of memory.
    splits = make_splits(data, val_size=config["val_size"], split_seed=config["split_seed"], subset=10)
    return splits, data


def validation_scores(kind: str, model, x, y) -> dict[str, float]:
    """The validation numbers champion and challenger are compared on (deterministic)."""
    if kind == "cnn":
        scores = cnn_test_scores(model, x, y)
        return {"accuracy": scores["accuracy"], "loss": scores["loss"]}
    scores = vae_test_scores(model, x, y, reconstruction=False)
    return {key: scores[key] for key in ("neg_elbo", "recon", "kl")}


def test_scores(kind: str, model, x, y) -> dict[str, Any]:
    """Test-set numbers recorded at promotion (the judge-based VAE grading is `fashion-tune evaluate`)."""
    return cnn_test_scores(model, x, y) if kind == "cnn" else vae_test_scores(model, x, y)


def is_better(kind: str, challenger: dict[str, float], champion: dict[str, float]) -> bool:
    """Strictly better on the primary validation metric; a tie keeps the champion."""
    name, mode = PRIMARY[kind]
    a, b = challenger[name], champion[name]
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if mode == "min" else a > b


# --- reading the promoted models -----------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FashionTuneError(f"{path} is missing; the promoted model is incomplete, promote again with --force") from None
    except (OSError, ValueError) as exc:
        raise FashionTuneError(f"{path} is unreadable ({type(exc).__name__}); promote again with --force") from None
    if not isinstance(data, dict):
        raise FashionTuneError(f"{path} does not hold a JSON object; promote again with --force")
    return data


def promote_hint(kind: str) -> str:
    return f"run `fashion-tune promote EXPERIMENT_DIR --kind {kind}` first"


def load_promoted(kind: str, models_dir: str | Path = DEFAULT_MODELS_DIR, device: str | torch.device = "cpu"):
    """The promoted model of `kind` (eval mode), its manifest and its metrics; one-line errors otherwise.

    The model file is checked against the SHA-256 in its manifest, so a truncated or replaced
    file is reported instead of silently graded.
    """
    from fashion_tune.train import load_model

    target = Path(models_dir) / kind
    # Under the lock: no promotion swaps the directory while its files are read together.
    with models_lock(Path(models_dir)):
        recover(Path(models_dir), kind)
        if not (target / MODEL_FILE).is_file():
            raise FashionTuneError(f"no promoted {kind} in {target} ({MODEL_FILE} missing); {promote_hint(kind)}")
        manifest = read_json(target / MANIFEST_FILE)
        expected = manifest.get("files", {}).get(MODEL_FILE)
        if expected and file_sha256(target / MODEL_FILE) != expected:
            raise CheckpointError(f"{target / MODEL_FILE} does not match the SHA-256 in {MANIFEST_FILE}: it was changed "
                                  f"or corrupted; promote again with --force")
        model, state = load_model(target / MODEL_FILE, kind=kind, device=device)
        metrics = read_json(target / METRICS_FILE)
    return model, manifest, metrics


# --- atomic directory replacement ----------------------------------------------------------


LOCK_FILE = ".lock"


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


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, then raise it; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _link_or_copy(source: Path, destination: Path) -> None:
    """Copy a tree by hard links when possible (same file system, no extra space), else by copying."""
    def copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=copy)


def swap_in(new: Path, target: Path) -> None:
    """Replace directory `target` with `new` by renames; at every instant one complete version exists on disk."""
    if not target.exists():
        os.rename(new, target)
        fsync_dir(target.parent)
        return
    old = target.with_name(f".old-{target.name}-{new.name.removeprefix(f'.tmp-{target.name}-')}")
    with interrupts_deferred():
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


# --- provenance ----------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The git commit of this code and whether tracked files were modified; None values outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "dirty": None}
    return {"git_commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def jsonable(value: Any) -> Any:
    """`value` with Paths, tensors and non-finite floats (as "inf", "nan") made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_synced(path, json.dumps(jsonable(data), indent=2) + "\n")


def write_synced(path: Path, text: str) -> None:
    """Write a file and fsync it, so a rename that publishes it never exposes it half-written after a crash."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory: the names created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- promotion -----------------------------------------------------------------------------


def _best_trial(experiment_dir: Path, limits: dict[str, float] | None = None):
    from fashion_tune.analysis import best_trial

    return best_trial(experiment_dir, limits=limits)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def comparison_table(kind: str, challenger: dict[str, Any], champion: dict[str, Any] | None) -> list[str]:
    """Rows of `metric  champion  challenger` for the validation metrics and the test headline."""
    rows = [("", "champion", "challenger")]
    for name, value in challenger["validation"].items():
        rows.append((LABELS.get(name, f"val {name}"), _format(champion["validation"][name]) if champion else "-", _format(value)))
    test_name = PRIMARY[kind][0]
    recorded = (champion or {}).get("recorded_test", {}).get(test_name)
    rows.append((f"test {LABELS[test_name][4:]}", _format(recorded) + (" (recorded)" if recorded is not None else ""),
                 _format(challenger["test"][test_name])))
    width = max(len(r[0]) for r in rows)
    return [f"  {a:<{width}}  {b:>20}  {c:>12}" for a, b, c in rows]


def promote_best_trial(
    experiment_dir: str | Path,
    kind: str | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    force: bool = False,
    data_dir=None,
    echo: Callable[[str], None] = print,
    limits: dict[str, float] | None = None,
) -> Promotion:
    """Promote the best trial (by validation) of a sweep into `models_dir/<kind>/`; see the module docstring.

    The challenger is scored first; the champion is read, scored and (maybe) replaced under
    `models_lock`, so two promotions at once compare in turn and the later one sees the earlier's
    champion.

    `limits` ({"params": 1e6} and/or {"flops": ...}) picks the best trial whose cost is within them.
    """
    from fashion_tune.train import load_model

    experiment_dir = str(experiment_dir) if is_uri(str(experiment_dir)) else Path(experiment_dir).resolve()
    # Checks the directory, picks by validation (within the cost limits), finds the checkpoint.
    pick = _best_trial(experiment_dir, limits)
    if kind is not None and pick.kind != kind:
        raise FashionTuneError(f"{experiment_dir} is a {pick.kind} sweep, not {kind}; pass --kind {pick.kind} or another experiment")
    kind = pick.kind
    models_dir = Path(models_dir)
    target = models_dir / kind

    model, state = load_model(pick.checkpoint, kind=kind)
    config = dict(state["config"])
    splits, data = evaluation_splits(config, data_dir)
    echo(f"challenger: trial {pick.trial_id} of {experiment_dir} (epoch {state['epoch']}, "
         f"{pick.metric} {_format(pick.value)} in the sweep); scoring on {len(splits.val_y):,} validation "
         f"and {len(splits.test_y):,} test images")
    challenger = {"validation": validation_scores(kind, model, splits.val_x, splits.val_y),
                  "test": test_scores(kind, model, splits.test_x, splits.test_y)}

    models_dir.mkdir(parents=True, exist_ok=True)
    with models_lock(models_dir):
        notes = [restored] if (restored := recover(models_dir, kind)) else []
        champion = _score_champion(target, kind, config, splits, force, notes)
        promoted, reason = _decide(kind, pick, state, challenger, champion, force)
        _print_comparison(kind, challenger, champion, len(splits.val_y), notes, echo)
        result = Promotion(kind, promoted, reason, target, str(pick.trial_id), challenger, champion, notes=notes)
        if not promoted:
            echo(reason)
            return result
        manifest = _manifest(kind, experiment_dir, pick, state, challenger, champion, force, splits, data, config)
        result.history = _install(models_dir, target, kind, state, challenger, manifest)
    echo(f"{reason}; promoted trial {pick.trial_id} to {target}" + (f" (previous champion kept in {result.history})" if result.history else ""))
    if kind == "vae" and not (models_dir / "cnn" / MODEL_FILE).is_file():
        msg = (f"VAE grading is waiting for a judge: there is no promoted CNN in {models_dir / 'cnn'}; "
               f"promote a CNN sweep (`fashion-tune promote EXPERIMENT_DIR --kind cnn`) before `fashion-tune evaluate`")
        notes.append(msg)
        echo(f"note: {msg}")
    return result


def _score_champion(target: Path, kind: str, config: dict[str, Any], splits, force: bool,
                    notes: list[str]) -> dict[str, Any] | None:
    """The current champion scored on the challenger's validation images; None if there is none (or, with
    force, if it is unreadable)."""
    from fashion_tune.train import load_model

    if not (target / MODEL_FILE).exists():
        return None
    try:
        champion_model, champion_state = load_model(target / MODEL_FILE, kind=kind)
    except FashionTuneError as exc:
        if not force:
            raise FashionTuneError(f"the current champion cannot be compared: {exc}; pass --force to replace it "
                                   f"(it is kept under {target / HISTORY_DIR})") from None
        notes.append("the champion was unreadable (--force)")
        return None
    theirs = champion_state["config"]
    if (theirs.get("val_size"), theirs.get("split_seed")) != (config["val_size"], config["split_seed"]):
        notes.append(f"the champion was trained with another validation split (val_size {theirs.get('val_size')}, "
                     f"split_seed {theirs.get('split_seed')}), so it may have trained on some of these validation images")
    return {"validation": validation_scores(kind, champion_model, splits.val_x, splits.val_y),
            "manifest": _read_optional(target / MANIFEST_FILE),
            "recorded_test": _read_optional(target / METRICS_FILE).get("test", {})}


def _decide(kind: str, pick, state, challenger, champion, force: bool) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why."""
    name, mode = PRIMARY[kind]
    if champion is None:
        return True, "no champion to beat"
    if is_better(kind, challenger["validation"], champion["validation"]):
        return True, (f"challenger is better: {LABELS[name]} {_format(challenger['validation'][name])} "
                      f"{'<' if mode == 'min' else '>'} {_format(champion['validation'][name])}")
    if force:
        return True, f"--force: replacing the champion although its {LABELS[name]} is as good or better"
    if champion["manifest"].get("checkpoint") == (pick.source or str(Path(pick.checkpoint).resolve())):
        return False, f"champion kept: trial {pick.trial_id} (epoch {state['epoch']}) already is the champion"
    return False, (f"champion kept: challenger's {LABELS[name]} {_format(challenger['validation'][name])} "
                   f"is not better than {_format(champion['validation'][name])}; pass --force to replace it")


def _print_comparison(kind: str, challenger, champion, images: int, notes: list[str], echo) -> None:
    if champion is not None:
        echo(f"champion vs challenger ({kind}), both scored on the same {images:,} validation images:")
    else:
        echo(f"challenger ({kind}) on {images:,} validation images; there is no champion to compare with:")
    for line in comparison_table(kind, challenger, champion):
        echo(line)
    for note in notes:
        echo(f"note: {note}")


def _manifest(kind: str, experiment_dir: Path | str, pick, state, challenger, champion, force: bool, splits, data,
              config) -> dict[str, Any]:
    """Where the new champion came from (manifest.json; `files` is filled in when it is written)."""
    name, mode = PRIMARY[kind]
    return {
        "kind": kind,
        "experiment": str(experiment_dir),
        "trial_id": str(pick.trial_id),
        "checkpoint": (pick.source or str(Path(pick.checkpoint).resolve())),
        "epoch": state["epoch"],
        "sweep_metric": {"name": pick.metric, "mode": pick.mode, "value": pick.value, "epoch": pick.epoch},
        "validation_metric": {"name": MONITOR[kind][0], "mode": mode, "value": challenger["validation"][name],
                              "images": len(splits.val_y), "val_size": config["val_size"], "split_seed": config["split_seed"]},
        "test_metric": {"name": MONITOR[kind][0].replace("val_", "test_"), "value": challenger["test"][name],
                        "images": len(splits.test_y)},
        "promoted_at": _now().isoformat(timespec="seconds"),
        "forced": bool(force and champion is not None and not is_better(kind, challenger["validation"], champion["validation"])),
        "replaced": _summary(champion["manifest"]) if champion else None,
        "code": code_version(),
        "data": {"source": str(data.source), "sha256": dict(data.sha256)},
        "files": {},
    }


def _install(models_dir: Path, target: Path, kind: str, state, challenger, manifest) -> Path | None:
    """Assemble the new champion next to the old one and swap it in; returns where the old one went."""
    stamp = _now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-", suffix=f"-{stamp}", dir=models_dir))
    history = None
    try:
        write_promoted(tmp, kind, state, challenger, manifest)
        if target.exists():
            history = _keep_history(target, tmp, stamp)
            fsync_dir(tmp / HISTORY_DIR)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / HISTORY_DIR / history.name if history is not None else None


def write_promoted(directory: Path, kind: str, state: dict[str, Any], scores: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write model.pt (weights only), config.yaml, metrics.json and manifest.json into `directory`."""
    weights = {
        "kind": kind,
        "config": dict(state["config"]),
        "model": {k: v.detach().cpu().clone() for k, v in state["model"].items()},
        "epoch": int(state["epoch"]),
        "metrics": jsonable({"validation": scores["validation"], "test_" + PRIMARY[kind][0]: scores["test"][PRIMARY[kind][0]]}),
    }
    save_checkpoint(weights, directory / MODEL_FILE)
    write_synced(directory / CONFIG_FILE, yaml.safe_dump(dict(state["config"]), sort_keys=True))
    write_json(directory / METRICS_FILE, {"kind": kind, **scores, "sweep_history": state.get("history", [])})
    manifest["files"] = {MODEL_FILE: file_sha256(directory / MODEL_FILE)}
    write_json(directory / MANIFEST_FILE, manifest)
    fsync_dir(directory)


def _keep_history(target: Path, new: Path, stamp: str) -> Path:
    """Carry the champion's history into `new`, and add the champion itself under history/<stamp>/."""
    if (target / HISTORY_DIR).is_dir():
        _link_or_copy(target / HISTORY_DIR, new / HISTORY_DIR)
    (new / HISTORY_DIR).mkdir(exist_ok=True)
    entry = new / HISTORY_DIR / stamp
    suffix = 1
    while entry.exists():
        entry = new / HISTORY_DIR / f"{stamp}-{suffix}"
        suffix += 1
    entry.mkdir()
    for item in target.iterdir():
        if item.name == HISTORY_DIR:
            continue
        if item.is_dir():
            _link_or_copy(item, entry / item.name)
        else:
            try:
                os.link(item, entry / item.name)
            except OSError:
                shutil.copy2(item, entry / item.name)
    return entry


def _read_optional(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    if not manifest:
        return None
    return {key: manifest.get(key) for key in ("experiment", "trial_id", "epoch", "promoted_at", "validation_metric")}
