"""sweep.json: what a sweep records as it starts, and the checks that let `--resume` continue it unchanged.

A space's `start_from:` and `warm_start:` are read once, when the sweep starts (`sources.resolve_sources`);
`record_start` stores what they gave in `sources.json` and the space copy names them by absolute
path. `resumed_space` rebuilds the space from the copy and `sources.json` alone: a resume from another
directory, or after the source sweep moved or was deleted, continues unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from fashion_tune.util import yaml_loader
from fashion_tune.util.errors import ConfigError, FashionTuneError
from fashion_tune.util.files import is_uri, json_text
from fashion_tune.util.provenance import code_version
from fashion_tune.spaces.space import REPLAY, SearchSpace, parse_space
from fashion_tune.spaces.strategies import with_sources
from fashion_tune.store.experiment import SOURCES, SPACE_COPY, SWEEP_INFO, Experiment, filesystem
from fashion_tune.store.names import DEFAULT_STORAGE, STORAGE_ENV
from fashion_tune.search import strategies
from fashion_tune.search.request import PreparedSweep, SweepRequest
from fashion_tune.search.study import JOURNAL_FILE, check_journal



def storage_root(storage: str | os.PathLike | None) -> str:
    """Where experiments live: a URI as given (s3://, gs://, ...), or an absolute local path (Ray needs one).

    Without `storage`: $FASHION_TUNE_STORAGE, else ./ray_results.
    """
    storage = str(storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE).removeprefix("file://")
    return storage.rstrip("/") if is_uri(storage) else str(Path(storage).expanduser().resolve())


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def resume_command(kind: str, name: str, storage: str | None, address: str | None, data_dir: str | None) -> str:
    """The exact command that continues an interrupted sweep."""
    args = ["fashion-tune", "sweep", kind, "--name", name, "--storage", storage_root(storage), "--resume"]
    if address:
        args += ["--address", address]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    return shlex.join(args)


def new_store(root: str, name: str) -> Experiment:
    """The store of a new sweep; refuses a name already taken."""
    store = Experiment(f"{root}/{name}")
    if store.read_info() is not None or store.has_ray_state():
        raise FashionTuneError(f"a sweep named {name!r} already exists at {store.location}; continue it with --resume "
                               "or pick another --name")
    return store


def to_resume(request: SweepRequest, root: str) -> tuple[Experiment, dict[str, Any]]:
    """The store and sweep.json of the sweep to continue, checked against the flags given."""
    kind, name = request.kind, request.name
    if not name:
        found = resumable(root, kind)
        listed = "; resumable here: " + ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "") \
            if found else f"; there is no unfinished {kind} sweep there"
        raise ConfigError(f"--resume needs --name NAME of the sweep to continue (a directory in {root}){listed}")
    store = Experiment(f"{root}/{name}")
    info = store.read_info()
    if info is None:
        raise FashionTuneError(f"no sweep to resume at {store.location} (no {SWEEP_INFO}); check --name and "
                               "--storage, or start it without --resume")
    if sweep_kind(info) != kind:
        raise ConfigError(f"{store.location} is a {sweep_kind(info)} sweep; resume it with `fashion-tune sweep "
                          f"{sweep_kind(info)} ...`")
    refuse_changes_on_resume(info, store.location, request)
    return store, info


def sweep_kind(info: dict[str, Any]) -> str:
    """What `fashion-tune sweep` calls the sweep: its kind, or `replay` (whose sweep.json kind is the one replayed)."""
    return REPLAY if info.get("replay") else info["kind"]


def resumed_space(store: Experiment, info: dict[str, Any], kind: str) -> SearchSpace:
    """The space of a sweep being resumed, rebuilt from what the experiment stored; its study made ready."""
    fetch_journal(store, info)
    check_journal(info, store.location)
    text = store.read_text(SPACE_COPY)
    if text is None:
        raise FashionTuneError(f"{store.location}/{SPACE_COPY} is missing; a sweep cannot be resumed without its space")
    space = parse_space(yaml_loader.load(text), f"{store.location}/{SPACE_COPY}", kind=kind)
    space = stored_sources(store, space)
    space = dataclasses.replace(space, num_samples=info["num_samples"],
                                max_concurrent_trials=info["max_concurrent_trials"], seed=info["seed"])
    return space


def resumable(root: str, kind: str) -> list[str]:
    """Names of the `kind` sweeps in `root` whose sweep.json says they did not finish, newest first."""
    import pyarrow.fs

    fs, path = filesystem(root)
    try:
        folders = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(path)) if i.type == pyarrow.fs.FileType.Directory]
    except (OSError, pyarrow.lib.ArrowException):
        return []
    found = []
    for folder in folders:
        try:
            info = Experiment(f"{root}/{folder.base_name}").read_info()
        except FashionTuneError:
            continue  # a damaged sweep.json: resuming it by name says so
        if info and sweep_kind(info) == kind and info.get("status") not in ("finished", "stopped"):
            found.append((info.get("created") or "", folder.base_name))
    return [name for _, name in sorted(found, reverse=True)]


def fetch_journal(store: Experiment, info: dict[str, Any]) -> None:
    """For a URI experiment: download `<uri>/optuna.journal` to the journal path sweep.json records when
    that file is missing here (a resume on another machine, or a cleared cache), so the study continues."""
    journal = info.get("journal")
    if store.is_remote and journal and not Path(journal).is_file():
        try:
            store.download(JOURNAL_FILE, journal)
        except OSError as exc:  # the searcher writes to that path, so no other path will do
            raise FashionTuneError(f"cannot copy {store.location}/{JOURNAL_FILE} to {journal}, where this sweep's "
                                   f"study continues ({exc.strerror or exc}); make that path writable and resume "
                                   "again") from None


def record_start(run: PreparedSweep) -> dict[str, Any]:
    """Write sweep.json (and space.yaml for a new sweep) as the sweep starts or resumes."""
    store, info = run.store, run.info
    if info is None:
        info = new_info(run)
        store.write_bytes(SPACE_COPY, space_copy(run.request.space_file, run.space))
        record_sources(store, run.space)
    else:
        info.update(status="running", finished=None)
        info["resumed"] = [*info.get("resumed", []), now()]
        info["resumed_code"] = [*info.get("resumed_code", []), code_version()]  # what trains from here on
    store.write_info(info)
    return info


def space_copy(space_file, space: SearchSpace) -> bytes:
    """The space file as the sweep keeps it: as written, but `start_from:` and `warm_start:` name the
    sources `space` resolved (absolute paths), so the copy says what was read wherever it is read."""
    original = Path(space_file).read_bytes()
    sources = {key: value for key, value in (("start_from", space.start_from), ("warm_start", space.warm_start),
                                             ("table", space.table)) if value is not None}
    if not sources:
        return original
    text = original.decode()
    # Top-level `key: value` lines, replaced in place (comments elsewhere stay); a JSON string is YAML.
    lines = [f"{key}: {json.dumps(sources[key])}\n" if (key := line.split(":", 1)[0]) in sources else line
             for line in text.splitlines(keepends=True)]
    wanted = {**yaml_loader.load(text), **sources}
    try:
        if yaml_loader.load("".join(lines)) == wanted:
            return "".join(lines).encode()
    except yaml_loader.YAMLError:
        pass
    return yaml.safe_dump(wanted, sort_keys=False).encode()  # a layout the lines could not follow


def record_sources(store: Experiment, space: SearchSpace) -> None:
    """Store what the space's `start_from:` and `warm_start:` gave when the sweep started (`sources.json`)."""
    if space.start_from is None and space.warm_start is None:
        return
    store.write_bytes(SOURCES, json_text({
        "start_from": space.start_from, "start_point": space.start_point,
        "warm_start": space.warm_start, "warm_trials": [dataclasses.asdict(t) for t in space.warm_trials],
    }).encode())


def stored_sources(store: Experiment, space: SearchSpace) -> SearchSpace:
    """The space of a sweep being resumed, seeded with the start point and warm trials stored as it
    started: the sources are not read again (they may have moved, or be relative to another directory).

    A sweep started before `sources.json` existed keeps its copy's points: its restored searcher
    and its study already hold the start point and the warm trials.
    """
    from fashion_tune.search.strategies import WarmTrial

    text = store.read_text(SOURCES)
    if text is None:
        return space
    try:
        stored = json.loads(text)
        trials = [WarmTrial.from_json(t) for t in stored["warm_trials"]]
        return with_sources(space, stored["start_from"], stored["start_point"], stored["warm_start"], trials)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FashionTuneError(f"{store.location}/{SOURCES} is unreadable ({type(exc).__name__}: {exc}); the "
                               "experiment directory is damaged") from None


def refuse_changes_on_resume(info: dict[str, Any], location: str, request: SweepRequest) -> None:
    """A resumed sweep continues with what it was started with; a flag that would change that is refused."""
    for flag, value in (("--num-samples", request.num_samples), ("--max-concurrent", request.max_concurrent)):
        if value is not None:
            raise ConfigError(f"{flag} cannot change on --resume: the searcher continues as saved "
                              f"({info['num_samples']} trials, {info['max_concurrent_trials']} at a time)")
    if request.space_file is not None:
        raise ConfigError(f"--space cannot be given with --resume: the sweep continues with its own copy "
                          f"{location}/{SPACE_COPY}; drop --space")
    saved = {"--max-failures": (request.max_failures, info.get("max_failures")),
             "--keep-checkpoints": (request.keep_checkpoints, info.get("keep_checkpoints"))}
    for flag, (value, was) in saved.items():
        if value is not None and value != was:
            shown = f"it was started with {flag} {was}" if was is not None else "its value is saved with it"
            raise ConfigError(f"{flag} cannot change on --resume ({shown}); drop {flag}")


def new_info(run: PreparedSweep) -> dict[str, Any]:
    """What sweep.json records about a new sweep (of a replay: the kind it replays, and the table)."""
    import optuna
    import ray

    from fashion_tune.search.replay import info as replay_info

    from fashion_tune import __version__

    space, request, data_dir = run.space, run.request, run.request.data_dir
    return {
        "name": run.store.name, "kind": space.kind, "metric": space.metric, "mode": space.mode,
        "num_samples": space.num_samples, "max_concurrent_trials": space.max_concurrent_trials,
        "seed": space.seed, "max_t": space.max_t, "grace_period": space.grace_period,
        "reduction_factor": space.reduction_factor,
        "resources_per_trial": {"cpu": space.cpu, "gpu": space.gpu},
        "params": space.param_names(), "fixed": space.fixed,
        "space_file": str(Path(request.space_file).resolve()), "space_copy": SPACE_COPY,
        "data": {"sizes": run.splits.sizes(), "data_dir": str(data_dir) if data_dir else None} if run.splits is not None else None,
        **({"replay": replay_info(space)} if space.table is not None else {}),
        "experiment_dir": run.store.location, "storage": run.root, "address": request.address,
        "max_failures": run.max_failures, "keep_checkpoints": run.keep_checkpoints,
        "created": now(), "finished": None, "status": "running", "resumed": [],
        "command": shlex.join(["fashion-tune", *sys.argv[1:]]) if Path(sys.argv[0]).name == "fashion-tune" else None,
        "versions": {"fashion_tune": __version__, "ray": ray.__version__, "optuna": optuna.__version__},
        "code": code_version(),  # the commit the trials train with: promoted models record it as `made_from`
        **strategies.info(space),
    }
