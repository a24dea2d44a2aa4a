"""Promotion: the best trial of a sweep becomes the champion in `best_models/<kind>/`.

`promote_best_trial` picks the trial with the best validation metric (the sweep's own, via
`fashion_tune.reports.analysis.best_trial`; the test set plays no part in the choice), reloads its
checkpoint, re-scores it on the full validation split (with training's own metrics, from
`fashion_tune.training.scoring`) and on the test set, and compares it with the current champion on the
same validation images. The challenger replaces the champion
only if its validation metric is strictly better (or with `force`); the replaced champion is
kept in `best_models/<kind>/history/<time>/`.

`best_models/<kind>/` holds:

- model.pt       weights-only checkpoint (kind, config, model state_dict, epoch, metrics);
                 `torch.load(..., weights_only=True)` and `train.load_model` read it
- config.yaml    the model's full training config
- metrics.json   validation (re-scored on the whole validation split) and test metrics
- manifest.json  where it came from: the experiment's name, the trial id, the checkpoint's path inside
                 the experiment (no path of the machine that trained it), epoch, promotion time,
                 the commit the sweep trained it with (`made_from`) and the one that promoted it
                 (`code`), data checksums, and the SHA-256 of model.pt
- history/       replaced champions, one directory each

Writes are atomic: the new directory is assembled next to the old one (`.tmp-<kind>-*`) and
swapped in with two renames, during which Ctrl-C is held back. A crash between the renames
leaves `.old-<kind>-*`, which the next promote or load puts back.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import (file_sha256, format_number, fsync_dir, is_uri, jsonable, make_temp_dir,
                                     read_json_object, write_json, write_synced)
from fashion_tune.util.provenance import code_version
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.data.splits import make_splits
from fashion_tune.training.checkpoint import save_checkpoint
from fashion_tune.training.kinds import get_kind
from fashion_tune.training.loop import load_model
from fashion_tune.store.experiment import Experiment
from fashion_tune.store.promoted import (CONFIG_FILE, DEFAULT_MODELS_DIR, HISTORY_DIR, MANIFEST_FILE, METRICS_FILE, MODEL_FILE,
                                         is_promoted, model_source, models_lock, recover)
from fashion_tune.store.reading import best_trial, read_sweep_info

LABELS = {"neg_elbo": "val neg. ELBO (nats)", "recon": "val recon (nats)", "kl": "val KL (nats)",
          "accuracy": "val accuracy", "loss": "val loss", "accuracy_no_tta": "val accuracy without TTA"}


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


def evaluation_splits(config: dict[str, Any], data_dir=None, training: bool = False):
    """The full validation split a config's run held out (val_size, split_seed) and the full test set;
    with `training`, also the training images the run trained on (else a token 10, to spare memory)."""
    data = load_fashion_mnist(data_dir)
    subset = config["subset"] if training else 10
    splits = make_splits(data, val_size=config["val_size"], split_seed=config["split_seed"], subset=subset,
                         subset_seed=config["seed"])
    return splits, data


def validation_scores(kind: str, model, x, y) -> dict[str, float]:
    """The validation numbers champion and challenger are compared on: training's own (`Kind.validate`),
    under promotion's names (neg_elbo, recon, kl; accuracy, loss)."""
    k = get_kind(kind)
    metrics = k.validate(model, x, y)
    return {name: metrics[metric] for name, metric in k.promoted_validation}


def test_scores(kind: str, model, x, y) -> dict[str, Any]:
    """Test-set numbers recorded at promotion (the judge-based VAE grading is `fashion-tune evaluate`)."""
    return get_kind(kind).test(model, x, y)


def is_better(kind: str, challenger: dict[str, float], champion: dict[str, float]) -> bool:
    """Strictly better on the primary validation metric; a tie keeps the champion."""
    k = get_kind(kind)
    a, b = challenger[k.promote_metric], champion[k.promote_metric]
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if k.mode == "min" else a > b


# --- atomic directory replacement ----------------------------------------------------------


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


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """Copy a file or a tree by hard links when possible (same file system, no extra space), else by copying."""
    if Path(source).is_dir():
        shutil.copytree(source, destination, copy_function=_link_or_copy)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


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


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- promotion -----------------------------------------------------------------------------


def comparison_table(kind: str, challenger: dict[str, Any], champion: dict[str, Any] | None) -> list[str]:
    """Rows of `metric  champion  challenger` for the validation metrics and the test headline."""
    rows = [("", "champion", "challenger")]
    for name, value in challenger["validation"].items():
        rows.append((LABELS.get(name, f"val {name}"), format_number(champion["validation"][name]) if champion else "-", format_number(value)))
    test_name = get_kind(kind).promote_metric
    recorded = (champion or {}).get("recorded_test", {}).get(test_name)
    rows.append((f"test {LABELS[test_name][4:]}", format_number(recorded) + (" (recorded)" if recorded is not None else ""),
                 format_number(challenger["test"][test_name])))
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
    experiment_dir = Experiment.open(experiment_dir).location  # a path (resolved) or URI; a bare NAME found in storage
    # Checks the directory, picks by validation (within the cost limits), finds the checkpoint.
    if read_sweep_info(experiment_dir).get("replay"):
        raise FashionTuneError(f"{experiment_dir} is a replay sweep: its trials replayed recorded curves and trained no "
                               "model; promote a sweep that trained (fashion-tune sweep cnn|vae)")
    pick = best_trial(experiment_dir, limits=limits)
    if kind is not None and pick.kind != kind:
        raise FashionTuneError(f"{experiment_dir} is a {pick.kind} sweep, not {kind}; pass --kind {pick.kind} or another experiment")
    kind = pick.kind
    models_dir = Path(models_dir)
    target = models_dir / kind

    model, state = load_model(pick.checkpoint, kind=kind)
    config = dict(state["config"])
    finish = get_kind(kind).finish
    splits, data = evaluation_splits(config, data_dir, training=finish is not None)
    echo(f"challenger: trial {pick.trial_id} of {experiment_dir} (epoch {state['epoch']}, "
         f"{pick.metric} {format_number(pick.value)} in the sweep); scoring on {len(splits.val_y):,} validation "
         f"and {len(splits.test_y):,} test images")
    validation = validation_scores(kind, model, splits.val_x, splits.val_y)
    finished = None
    if finish is not None:
        finished, validation = finish(model, splits, validation, lambda m: validation_scores(kind, m, splits.val_x, splits.val_y),
                                      echo=echo)
        state = {**state, "model": model.state_dict()}
        echo(finished["summary"])
    challenger = {"validation": validation, "test": test_scores(kind, model, splits.test_x, splits.test_y)}

    models_dir.mkdir(parents=True, exist_ok=True)
    with models_lock(models_dir):
        notes = [restored] if (restored := recover(models_dir, kind)) else []
        champion = _score_champion(target, kind, config, splits, force, notes)
        promoted, reason = _decide(kind, pick, state, challenger, champion, force, experiment_dir)
        _print_comparison(kind, challenger, champion, len(splits.val_y), notes, echo)
        result = Promotion(kind, promoted, reason, target, str(pick.trial_id), challenger, champion, notes=notes)
        if not promoted:
            echo(reason)
            return result
        manifest = _manifest(kind, experiment_dir, pick, state, challenger, champion, force, splits, data, config)
        if finished is not None:
            manifest["finish"] = finished
        result.history = _install(models_dir, target, kind, state, challenger, manifest)
    echo(f"{reason}; promoted trial {pick.trial_id} to {target}" + (f" (previous champion kept in {result.history})" if result.history else ""))
    judge = get_kind(kind).judge
    if judge is not None and not is_promoted(models_dir, judge):
        msg = (f"{kind.upper()} grading is waiting for a judge: there is no promoted {judge.upper()} in {models_dir / judge}; "
               f"promote a {judge.upper()} sweep (`fashion-tune promote EXPERIMENT_DIR --kind {judge}`) before `fashion-tune evaluate`")
        notes.append(msg)
        echo(f"note: {msg}")
    return result


def _score_champion(target: Path, kind: str, config: dict[str, Any], splits, force: bool,
                    notes: list[str]) -> dict[str, Any] | None:
    """The current champion scored on the challenger's validation images; None if there is none (or, with
    force, if it is unreadable)."""
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
            "manifest": read_json_object(target / MANIFEST_FILE),
            "recorded_test": read_json_object(target / METRICS_FILE).get("test", {})}


def _source(experiment_dir: Path | str, pick) -> dict[str, Any]:
    """The picked checkpoint as a manifest records it: the experiment's name, the checkpoint's path inside
    the experiment, and the storage where that is a URI (see `store.promoted.model_source`)."""
    location = str(experiment_dir).rstrip("/")
    found = pick.source or str(Path(pick.checkpoint).resolve())
    inside = found[len(location) + 1:] if found.startswith(location + "/") else Path(found).name
    remote = is_uri(location)
    return {"experiment": location.rsplit("/", 1)[-1], "checkpoint": inside,
            "storage": location.rsplit("/", 1)[0] if remote else None}


def _same_checkpoint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["experiment"], a["checkpoint"]) == (b["experiment"], b["checkpoint"])


def _made_from(experiment_dir: Path | str) -> dict[str, Any] | None:
    """The code the sweep trained with, as its sweep.json recorded it (None for sweeps from before that
    record); commits it was resumed with, where they differ, under `resumed_with`."""
    info = Experiment(experiment_dir).read_info() or {}
    code = info.get("code")
    if not code:
        return None
    resumed = [c for c in info.get("resumed_code", []) if c and c.get("git_commit") != code.get("git_commit")]
    return {**code, "resumed_with": resumed} if resumed else dict(code)


def _decide(kind: str, pick, state, challenger, champion, force: bool, experiment_dir) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why."""
    k = get_kind(kind)
    name, mode = k.promote_metric, k.mode
    if champion is None:
        return True, "no champion to beat"
    if is_better(kind, challenger["validation"], champion["validation"]):
        return True, (f"challenger is better: {LABELS[name]} {format_number(challenger['validation'][name])} "
                      f"{'<' if mode == 'min' else '>'} {format_number(champion['validation'][name])}")
    if force:
        return True, f"--force: replacing the champion although its {LABELS[name]} is as good or better"
    if _same_checkpoint(model_source(champion["manifest"]), _source(experiment_dir, pick)):
        return False, f"champion kept: trial {pick.trial_id} (epoch {state['epoch']}) already is the champion"
    return False, (f"champion kept: challenger's {LABELS[name]} {format_number(challenger['validation'][name])} "
                   f"is not better than {format_number(champion['validation'][name])}; pass --force to replace it")


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
    k = get_kind(kind)
    name = k.promote_metric
    return {
        "kind": kind,
        **_source(experiment_dir, pick),  # experiment (its name), checkpoint (inside it), storage (a URI's)
        "trial_id": str(pick.trial_id),
        "epoch": state["epoch"],
        "sweep_metric": {"name": pick.metric, "mode": pick.mode, "value": pick.value, "epoch": pick.epoch},
        "validation_metric": {"name": k.monitor, "mode": k.mode, "value": challenger["validation"][name],
                              "images": len(splits.val_y), "val_size": config["val_size"], "split_seed": config["split_seed"]},
        "test_metric": {"name": k.monitor.replace("val_", "test_"), "value": challenger["test"][name],
                        "images": len(splits.test_y)},
        "promoted_at": _now().isoformat(timespec="seconds"),
        "forced": bool(force and champion is not None and not is_better(kind, challenger["validation"], champion["validation"])),
        "replaced": _summary(champion["manifest"]) if champion else None,
        "made_from": _made_from(experiment_dir),  # the code the sweep trained it with
        "code": code_version(),  # the code that promoted it (and fitted the VAE's prior)
        "data": {"source": str(data.source), "sha256": dict(data.sha256)},
        "files": {},
    }


def _install(models_dir: Path, target: Path, kind: str, state, challenger, manifest) -> Path | None:
    """Assemble the new champion next to the old one and swap it in; returns where the old one went."""
    stamp = _now().strftime("%Y%m%d-%H%M%S")
    tmp = make_temp_dir(prefix=f".tmp-{kind}-", suffix=f"-{stamp}", dir=models_dir)
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
    name = get_kind(kind).promote_metric
    weights = {
        "kind": kind,
        "config": dict(state["config"]),
        "model": {k: v.detach().cpu().clone() for k, v in state["model"].items()},
        "epoch": int(state["epoch"]),
        "metrics": jsonable({"validation": scores["validation"], "test_" + name: scores["test"][name]}),
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
        _link_or_copy(item, entry / item.name)
    return entry


def _summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    if not manifest:
        return None
    return {"experiment": model_source(manifest)["experiment"],
            **{key: manifest.get(key) for key in ("trial_id", "epoch", "promoted_at", "validation_metric")}}
