"""Which per-epoch checkpoints of a trial are kept: the best N by the sweep's metric, and the ones a resume needs.

Ray's own `CheckpointConfig(num_to_keep=N, checkpoint_score_attribute=...)` deletes a trial's
previous checkpoint as soon as a newer one registers, if it is not in the best N. Tune's
experiment snapshot on disk (written every ten seconds or more, and copied to storage in the
background) may still name that checkpoint as the trial's latest; after a hard kill the restore
then fails with "does not exist" on every retry and every later resume.

So Ray keeps every checkpoint (`num_to_keep=None`) and the sweep prunes them itself, with one
rule that holds whatever the timing: a checkpoint is deleted only if it is not among the best N,
and it is *older* than the checkpoint the snapshot on storage names as the trial's latest. A
snapshot only ever moves forward, so no restore can ask for a checkpoint older than that one;
the newest checkpoint of every trial is always kept too.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pyarrow.fs

from fashion_tune.store.experiment import RESULT_FILE, read_lines
from fashion_tune.search.ray_compat import UNKNOWN, experiment_snapshot, restore_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
LIVE = ("PENDING", "RUNNING", "PAUSED")


def checkpoint_index(name: str | None) -> int | None:
    """7 for `checkpoint_000007`; None for anything else."""
    if not name or not name.startswith(CHECKPOINT_PREFIX):
        return None
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if digits.isdigit() else None


def snapshot_on_storage(fs, experiment_path: str, only: set[str] | None = None
                        ) -> dict[str, tuple[str, int, str]] | None:
    """`snapshot_and_borrowed`'s snapshot alone."""
    found = snapshot_and_borrowed(fs, experiment_path, only)
    return None if found is None else found[0]


def snapshot_and_borrowed(fs, experiment_path: str, only: set[str] | None = None
                          ) -> tuple[dict[str, tuple[str, int, str]], set[str]] | None:
    """trial id -> (status, index of its latest checkpoint, directory) in the newest experiment snapshot on storage.

    The file `Tuner.restore` would read, as it is on storage now (never Tune's in-memory trials,
    which run ahead of it); a trial's latest checkpoint is the one restore would use (-1: none).
    None when there is none or it cannot be read (being written): nothing is pruned then. Read at
    every Tune snapshot, so it parses only that one file, and decodes the checkpoint manager
    (about 0.5 ms a trial) only of the trials in `only` (default: all) and of the live ones.

    Also returns the checkpoints live trials restore from in *another* trial's folder, as
    "trial_folder/checkpoint_name": a PBT clone continues from the checkpoint of the trial it
    cloned, so that checkpoint is kept whatever its own trial's rule says. Such a trial's own
    folder gets index -1 (nothing of it is older than what it restores from).
    """
    trials = experiment_snapshot(fs, experiment_path)
    if trials is None:
        return None
    snapshot, borrowed = {}, set()
    for trial, metadata in trials:
        wanted = only is None or trial["trial_id"] in only
        if not wanted and trial.get("status") not in LIVE:
            continue  # only a live trial can borrow a checkpoint
        restored = restore_checkpoint(metadata)
        if restored is UNKNOWN:
            return None
        directory = trial.get("relative_logdir") or ""
        folder, _, name = (restored or "").rpartition("/")
        index = checkpoint_index(name)
        if restored and directory and folder.rsplit("/", 1)[-1] != directory:
            if trial.get("status") in LIVE:
                borrowed.add(f"{folder.rsplit('/', 1)[-1]}/{name}")
            index = None
        if wanted:
            snapshot[trial["trial_id"]] = (trial.get("status", ""), -1 if index is None else index, directory)
    return snapshot, borrowed


def best_checkpoints(rows: list[dict[str, Any]], metric: str, mode: str, keep: int) -> set[str]:
    """Names of the `keep` checkpoints with the best finite `metric` (earliest first among ties, as
    `analysis.best_trial` picks), one report per epoch (the last one, after a re-run)."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_epoch[row.get("epoch", row.get("training_iteration"))] = row
    scored = []
    for row in by_epoch.values():
        value, name = row.get(metric), row.get("checkpoint_dir_name")
        if name and not row.get("diverged") and isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((value if mode == "min" else -value, row.get("epoch") or 0, name))
    return {name for _, _, name in sorted(scored)[:keep]}


def prune_trial(fs, trial_path: str, metric: str, mode: str, keep: int, snapshot_index: int,
                settled: bool = False, borrowed: set[str] = frozenset()) -> list[str]:
    """Delete the trial's checkpoints that are neither best-N nor at/after `snapshot_index`; returns their names.

    `settled`: the sweep has stopped and its final snapshot names `snapshot_index` as the trial's
    latest. A checkpoint after it was written by a run a hard kill cut off and the trial redid, so
    it goes too (unless best-N): the snapshot's latest is the trial's latest. `borrowed`: checkpoints
    other trials restore from ("trial_folder/checkpoint_name", see `snapshot_and_borrowed`), kept.
    """
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path))
    except (OSError, pyarrow.lib.ArrowException):
        return []
    existing = sorted((checkpoint_index(i.base_name), i.base_name) for i in infos
                      if i.type == pyarrow.fs.FileType.Directory and checkpoint_index(i.base_name) is not None)
    if not existing:
        return []
    protected = best_checkpoints(read_lines(fs, f"{trial_path}/{RESULT_FILE}"), metric, mode, keep)
    folder = trial_path.rstrip("/").rsplit("/", 1)[-1]
    protected |= {name for _, name in existing if f"{folder}/{name}" in borrowed}
    if settled and snapshot_index >= 0:
        protected.add(f"{CHECKPOINT_PREFIX}{snapshot_index:06d}")
    else:
        protected.add(existing[-1][1])  # the newest, whatever the metric says
    deleted = []
    for index, name in existing:
        if name in protected or (index >= snapshot_index and not (settled and snapshot_index >= 0)):
            continue
        try:
            fs.delete_dir(f"{trial_path}/{name}")
            deleted.append(name)
        except (OSError, pyarrow.lib.ArrowException) as exc:
            logger.warning("could not delete %s/%s: %s", trial_path, name, exc)
    return deleted


def prune_experiment(fs, experiment_path: str, trial_paths: dict[str, str], metric: str, mode: str,
                     keep: int) -> set[str]:
    """Prune every trial in `trial_paths` (id -> path) against the snapshot on storage.

    Returns the ids of trials that are finished for good: ended both for Tune now and in the
    snapshot on storage, so nothing of theirs will change again.
    """
    found = snapshot_and_borrowed(fs, experiment_path, only=set(trial_paths))
    if found is None:
        return set()
    snapshot, borrowed = found
    settled = set()
    for trial_id, path in trial_paths.items():
        if trial_id not in snapshot:
            continue
        status, index, _ = snapshot[trial_id]
        prune_trial(fs, path, metric, mode, keep, index, borrowed=borrowed)
        if status not in LIVE:
            settled.add(trial_id)
    return settled


def prune_finished_experiment(fs, experiment_path: str, metric: str, mode: str, keep: int) -> int:
    """After a sweep stops: prune every trial the snapshot on storage knows; returns the checkpoints deleted."""
    snapshot, borrowed = snapshot_and_borrowed(fs, experiment_path) or ({}, set())
    return sum(len(prune_trial(fs, f"{experiment_path}/{directory}", metric, mode, keep, index,
                               settled=status not in LIVE, borrowed=borrowed))
               for status, index, directory in snapshot.values() if directory)
