"""The sweep's Optuna study on disk: one journal file per experiment, read by analyze and the dashboard.

Each sweep's searcher writes its study to an Optuna journal (`JournalStorage` over
`JournalFileBackend`: an append-only log that several processes may read and write, unlike SQLite
under concurrent writers). The journal lives in the experiment directory as `optuna.journal` when
that directory is local (or on NFS); for a URI experiment (s3://...) the driver keeps it in a local
cache, `~/.cache/fashion-tune/journals/<name>-<hash>/optuna.journal`, and the experiment store
copies it to the URI with the rest. `sweep.json` records the study's name and the journal's path
(`searcher.study_record`); a resumed sweep unpickles a searcher that still points at the same journal, so the
study continues where it stopped.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import is_uri

JOURNAL_FILE = "optuna.journal"
SWEEP_INFO = "sweep.json"  # as analysis.SWEEP_INFO; not imported, analysis imports much more
TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute naming the Ray Tune trial an Optuna trial stands for


def journal_location(experiment_dir: str | os.PathLike, name: str | None = None) -> Path:
    """Where a sweep's journal lives: `<experiment_dir>/optuna.journal`, or a local cache for a URI.

    The cache folder is `<name>-<8 hex digits of the URI>`, so two buckets' sweeps of one name stay apart.
    """
    location = str(experiment_dir)
    if not is_uri(location):
        return Path(location.removeprefix("file://")) / JOURNAL_FILE
    name = name or location.rstrip("/").rsplit("/", 1)[-1]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:8]
    return cache / "fashion-tune" / "journals" / f"{name}-{digest}" / JOURNAL_FILE


def new_study_name(name: str) -> str:
    """A study name no other sweep has: the experiment's name and a short random suffix."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def journal_storage(path: str | os.PathLike):
    """Optuna's journal storage on `path` (created, with its folder, if missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def check_journal(info: dict[str, Any], location: str) -> None:
    """Refuse to resume a sweep whose journal is gone: its searcher would continue a study it cannot read."""
    journal = info.get("journal")
    if journal and not Path(journal).is_file():
        raise FashionTuneError(f"{journal}, the Optuna journal of {location}, is missing; a sweep resumes with the "
                               "journal it started with: put it back there (a copy of the experiment's "
                               f"{JOURNAL_FILE}) and resume again")


def _sweep_info(experiment_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((experiment_dir / SWEEP_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class Journal(NamedTuple):
    """Where an experiment's study is read: the journal file, the study's name (None where sweep.json does
    not say), and the URI it was downloaded from when `path` is a copy (None when it is the sweep's own)."""

    path: Path
    study_name: str | None
    copied_from: str | None = None


def find_journal(experiment_dir: str | os.PathLike) -> Journal:
    """The journal of an experiment (see `Journal`).

    A local directory's own `optuna.journal` comes first (a copied experiment reads its copy). For a
    URI, the journal the sweep writes on this machine (live) where it is here, else a copy of the
    bucket's `<uri>/optuna.journal` (as of the sweep's last snapshot) in a temporary folder.
    """
    location = str(experiment_dir)
    if is_uri(location):
        return _uri_journal(location)
    directory = Path(location.removeprefix("file://"))
    info = _sweep_info(directory)
    own = directory / JOURNAL_FILE
    recorded = Path(info["journal"]) if info.get("journal") else own
    return Journal(own if own.is_file() else recorded, info.get("study_name"))


def _uri_journal(location: str) -> Journal:
    from fashion_tune.store.experiment import Experiment  # pyarrow and pandas: only for a URI

    store = Experiment(location)
    info = store.read_info() or {}
    for path in (info.get("journal"), journal_location(location, info.get("name"))):
        if path and Path(path).is_file():
            return Journal(Path(path), info.get("study_name"))
    copy = Path(tempfile.mkdtemp(prefix="fashion-tune-journal-")) / JOURNAL_FILE
    atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
    refresh_copy(store.location, copy)
    return Journal(copy, info.get("study_name"), store.location)


def refresh_copy(location: str, copy: Path) -> bool:
    """Replace `copy` with the URI experiment's `optuna.journal` as the bucket holds it now (atomically:
    a reader sees the old copy or the new one); False where the bucket has no journal."""
    from fashion_tune.store.experiment import Experiment

    part = copy.with_name(copy.name + ".part")
    if not Experiment(location).download(JOURNAL_FILE, part):
        return False
    os.replace(part, copy)
    return True


def study_name_in(journal: Path, name: str | None) -> str:
    """`name` if the journal holds that study, else its only study; a one-line error otherwise."""
    import optuna

    names = optuna.get_all_study_names(journal_storage(journal))
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise FashionTuneError(f"{journal} holds no study {name!r} (it holds {', '.join(names) or 'none'}); "
                               "is it the journal of this experiment?")
    return name


def open_study(experiment_dir: str | os.PathLike):
    """The experiment's Optuna study, read from its journal; None where it has no journal.

    The study is live: trials a running sweep appends show up on the next read (for a URI read away
    from the sweep's machine, the study as of the bucket's copy when it was opened).
    """
    import optuna

    journal, name, _ = find_journal(experiment_dir)
    if not journal.is_file():
        return None
    return optuna.load_study(study_name=study_name_in(journal, name), storage=journal_storage(journal))


def importance_study(study):
    """The single-objective study importances are computed over, in memory: COMPLETE trials with a finite
    value (a diverged one is told inf) and PRUNED ones at their last intermediate value (their budget)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory": it is a working copy
    copy = optuna.create_study(directions=study.directions)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if trial.state == TrialState.PRUNED:
            last = max(trial.intermediate_values, default=None)
            value = trial.intermediate_values[last] if last is not None else math.nan
        else:
            value = trial.value
        if math.isfinite(value):
            copy.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                     value=value, user_attrs=trial.user_attrs))
    return copy
