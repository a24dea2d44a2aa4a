"""Sweeps: Ray Tune runs the trainable, Optuna's TPE proposes configs, ASHA stops weak trials early.

All the Ray wiring lives here (`run_sweep`); the trainable stays the plain `fit` of
`fashion_tune.train`, reached through `fashion_tune.trainable`, which only adds Ray's reporting
and checkpointing. The experiment directory (`ray_results/<name>` by default, or a URI such as
s3://BUCKET/sweeps/<name>) is the store `fashion_tune.experiment` reads and writes: Ray's own
files plus `sweep.json`, `space.yaml` and, once the sweep stops, `results.{csv,parquet}` (one row
per trial) and `history.{csv,parquet}` (one row per trial per epoch), in one schema on any storage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from ray.tune.schedulers import AsyncHyperBandScheduler

from fashion_tune import strategies
from fashion_tune.callbacks import SweepCallback  # noqa: F401 - the tuner.pkl of a sweep names it here
from fashion_tune.cluster import is_uri
from fashion_tune.errors import ConfigError, FashionTuneError
from fashion_tune.experiment import HISTORY, RESULTS, SPACE_COPY, SWEEP_INFO, Experiment
from fashion_tune.experiment import stored_results as _stored_results
from fashion_tune.searcher import optuna_searcher
from fashion_tune.spaces import SearchSpace, check_resources, load_space, local_capacity, parse_space
from fashion_tune.trainable import make_reporter, make_trainable, train_trial, trial_name  # noqa: F401

DEFAULT_STORAGE = "ray_results"
STORAGE_ENV = "FASHION_TUNE_STORAGE"  # the default --storage; launch/*.yaml set it on every node
DEFAULT_MAX_FAILURES = 3
DEFAULT_KEEP_CHECKPOINTS = 3
# ASHA ranks results; a non-finite one (a diverged trial) counts as this bad, finite so percentiles stay finite.
_WORST_REWARD = -1e30


def default_name(kind: str) -> str:
    return f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(storage: str | os.PathLike | None) -> str:
    """Where experiments live: a URI as given (s3://, gs://, ...), or an absolute local path (Ray needs one).

    Without `storage`: $FASHION_TUNE_STORAGE, else ./ray_results.
    """
    storage = str(storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE).removeprefix("file://")
    return storage.rstrip("/") if is_uri(storage) else str(Path(storage).expanduser().resolve())


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# --- Ray wiring ------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        return _WORST_REWARD
    return value



class SweepASHA(AsyncHyperBandScheduler):
    """ASHA that keeps its rungs across `Tuner.restore` and ranks diverged trials last.

    Ray restores the searcher but not the scheduler; restored trials replay the results they
    stored, so a resumed sweep stops trials against the same rungs as before. Non-finite
    metrics (a diverged trial) become the worst finite reward: with inf the rung percentiles
    turn NaN and ASHA would stop nothing at that rung.
    """

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for result in _stored_results(trial):
            if self._time_attr in result and self._metric in result and result[self._metric] is not None:
                bracket.on_result(trial, result[self._time_attr], _finite(self._metric_op * result[self._metric]))

    def on_trial_result(self, tune_controller, trial, result):
        return super().on_trial_result(tune_controller, trial, self._finite_result(result))

    def on_trial_complete(self, tune_controller, trial, result):
        return super().on_trial_complete(tune_controller, trial, self._finite_result(result))

    def _finite_result(self, result):
        if result and self._metric in result and result[self._metric] is not None:
            value = result[self._metric]
            if not math.isfinite(value):
                result = {**result, self._metric: _WORST_REWARD * self._metric_op}  # reward = op * value
        return result


def make_scheduler(space: SearchSpace):
    """The space's scheduler (ASHA unless `scheduler.type` says otherwise): see fashion_tune.strategies."""
    return strategies.make_scheduler(space)


def make_searcher(space: SearchSpace):
    """The space's Optuna sampler behind Ray's concurrency limit: see fashion_tune.strategies and .searcher."""
    return strategies.make_searcher(space)


def _make_tuner(space: SearchSpace, trainable, name: str, root: str, stop, verbose: int, max_failures: int,
                keep_checkpoints: int):
    """A new Tuner for `space`; returns it and its search algorithm."""
    from ray import tune

    searcher = make_searcher(space)
    callback = SweepCallback(searcher, space.metric, space.mode, keep_checkpoints)
    tuner = tune.Tuner(
        trainable,
        param_space=space.base_config(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=space.num_samples,
            search_alg=searcher, scheduler=make_scheduler(space),
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            reuse_actors=True,  # a new trial skips starting a process and importing torch
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=root, stop=stop, verbose=verbose,
            progress_reporter=make_reporter(space), callbacks=[callback],
            # Every checkpoint stays for Ray; SweepCallback keeps the best N and what a resume needs.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    return tuner, searcher


# --- running a sweep ---------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What `run_sweep` leaves: where the experiment is, how it ended, and its trials."""

    experiment_dir: str
    status: str  # finished | interrupted | errored (some trials failed past max_failures)
    num_trials: int
    results: Any = None  # pandas.DataFrame, one row per trial
    best: Any = None  # analysis.TrialPick, or None
    study: Any = None  # the optuna.Study behind OptunaSearch (a fresh run only; None on --resume)
    resume_command: str = ""


def resume_command(kind: str, name: str, storage: str | None, address: str | None, data_dir: str | None) -> str:
    """The exact command that continues an interrupted sweep."""
    args = ["fashion-tune", "sweep", kind, "--name", name, "--storage", storage_root(storage), "--resume"]
    if address:
        args += ["--address", address]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    return shlex.join(args)


def _shared_splits(space: SearchSpace, data_dir):
    """The training and validation data every trial shares; the test split stays out of the sweep."""
    from fashion_tune.train import load_splits

    splits = load_splits(space.data_config(), data_dir)
    return dataclasses.replace(splits, test_x=splits.test_x[:0], test_y=splits.test_y[:0])


def _check_cluster_resources(space: SearchSpace, address: str | None, echo: Callable[[str], None]) -> None:
    """Refuse a trial no node of the attached cluster can ever hold; warn when only the autoscaler could add one."""
    from fashion_tune.cluster import node_capacity

    cpus, gpus, final = node_capacity()
    where = f"the largest node of the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}"
    try:
        check_resources(space, cpus, gpus, where=where)
    except ConfigError:
        if final:
            raise
        # A cluster with autoscaling workers (launch/cluster.yaml starts with none) may not say
        # what it can add; its trials wait until a large enough node joins.
        echo(f"note: no node of the Ray cluster has {space.cpu:g} CPU and {space.gpu:g} GPU for a trial yet "
             f"(the largest has {cpus:g} CPU, {gpus:g} GPU); trials wait until the autoscaler or "
             "`ray start --address ...` adds one")


def run_sweep(
    kind: str,
    space_file: str | os.PathLike | None = None,
    *,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    name: str | None = None,
    storage: str | os.PathLike | None = None,
    address: str | None = None,
    resume: bool = False,
    restart_errored: bool = False,
    data_dir: str | os.PathLike | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    max_failures: int | None = None,
    keep_checkpoints: int | None = None,
    allow_local_storage: bool = False,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    verbose: int = 1,
    stop: Any = None,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run (or with `resume`, continue) a sweep. The space, the resources and the data are checked
    before Ray starts; an attached cluster's nodes and storage right after connecting.

    `stop` goes to Ray's RunConfig (a dict or a Stopper); a sweep it ends early can be resumed.
    """
    from fashion_tune.config import check_kind

    check_kind(kind)
    _check_flags(max_failures, keep_checkpoints, restart_errored, resume)
    root = storage_root(storage)
    if resume:
        store, space, info = _resumed(kind, name, root, space_file, num_samples, max_concurrent, max_failures,
                                      keep_checkpoints)
        name, max_failures, keep_checkpoints = store.name, info.get("max_failures"), info.get("keep_checkpoints")
    else:
        if space_file is None:
            raise ConfigError(f"--space FILE is required; e.g. search_spaces/{kind}_quick.yaml")
        space = load_space(space_file, kind=kind).with_overrides(num_samples, max_concurrent)
        name = name or default_name(kind)
        store, info = _new_store(root, name), None
        max_failures = DEFAULT_MAX_FAILURES if max_failures is None else max_failures
        keep_checkpoints = DEFAULT_KEEP_CHECKPOINTS if keep_checkpoints is None else keep_checkpoints
    attach = bool(address or os.environ.get("RAY_ADDRESS"))
    if not attach:
        cpus, gpus = local_capacity()
        where = "this machine" if num_cpus is None and num_gpus is None else "the local Ray (--num-cpus/--num-gpus)"
        num_cpus = cpus if num_cpus is None else num_cpus
        num_gpus = gpus if num_gpus is None else num_gpus
        check_resources(space, num_cpus, num_gpus, where)
    splits = _shared_splits(space, data_dir)
    command = resume_command(kind, name, storage, address, data_dir)

    from fashion_tune import cluster

    # The classic reporter prints the trial table with the searched parameters and the metric.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray keeps every checkpoint (SweepCallback prunes them); its per-trial list of them then needs
    # no metrics, which would otherwise stay in the driver's memory for every epoch of every trial.
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    if not attach:
        cluster.stop_leftovers(echo)
    started = cluster.connect(address, num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                              dashboard_host=dashboard_host)
    searcher = None
    interrupted = False
    try:
        if attach:
            echo(f"attached to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {cluster.describe_cluster()}")
            _check_cluster_resources(space, address, echo)
            cluster.check_storage(root, allow_node_local=allow_local_storage)
        info = _record_start(store, info, space, kind, space_file, splits, data_dir, root, address, max_failures,
                             keep_checkpoints)
        trainable = make_trainable(space, splits)
        if resume:
            tuner = _restored_tuner(store, trainable, restart_errored)
        else:
            tuner, searcher = _make_tuner(space, trainable, name, root, stop, verbose, max_failures, keep_checkpoints)
        echo(f"sweep {name}: {space.num_samples} {kind} trials, {space.max_concurrent_trials} at a time, "
             f"{space.strategy_line()} -> {store.location}")
        tuner.fit()  # the results come from the store, in one schema on any storage
    except KeyboardInterrupt:
        interrupted = True  # a second Ctrl-C; the first makes Tune stop and save its state itself
    except Exception:
        if info is not None:
            echo(f"the sweep driver failed; what the trials saved is kept, and this may continue it:\n  {command}")
        raise
    finally:
        if started:
            cluster.disconnect()
    if info is None:  # interrupted before anything was written
        raise KeyboardInterrupt
    return _finish(space, info, store, interrupted, command,
                   study=optuna_searcher(searcher)._ot_study if searcher is not None else None, echo=echo)


def _check_flags(max_failures, keep_checkpoints, restart_errored: bool, resume: bool) -> None:
    if max_failures is not None and max_failures < 0:
        raise ConfigError(f"--max-failures={max_failures} is not allowed; use an integer >= 0")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise ConfigError(f"--keep-checkpoints={keep_checkpoints} is not allowed; use an integer >= 1")
    if restart_errored and not resume:
        raise ConfigError("--restart-errored only applies with --resume (it restarts the failed trials of a sweep "
                          "being continued)")


def _new_store(root: str, name: str) -> Experiment:
    """The store of a new sweep; refuses a name already taken."""
    store = Experiment(f"{root}/{name}")
    if store.read_info() is not None or store.has_ray_state():
        raise FashionTuneError(f"a sweep named {name!r} already exists at {store.location}; continue it with --resume "
                               "or pick another --name")
    return store


def _resumed(kind: str, name: str | None, root: str, space_file, num_samples, max_concurrent, max_failures,
             keep_checkpoints) -> tuple[Experiment, SearchSpace, dict[str, Any]]:
    """The store, space and sweep.json of the sweep to continue, checked against the flags given."""
    if not name:
        raise ConfigError(f"--resume needs --name NAME of the sweep to continue (a directory in {root})")
    store = Experiment(f"{root}/{name}")
    info = store.read_info()
    if info is None:
        raise FashionTuneError(f"no sweep to resume at {store.location} (no {SWEEP_INFO}); check --name and "
                               "--storage, or start it without --resume")
    if info["kind"] != kind:
        raise ConfigError(f"{store.location} is a {info['kind']} sweep; resume it with `fashion-tune sweep {info['kind']} ...`")
    _refuse_changes_on_resume(info, store.location, space_file, num_samples, max_concurrent, max_failures,
                              keep_checkpoints)
    text = store.read_text(SPACE_COPY)
    if text is None:
        raise FashionTuneError(f"{store.location}/{SPACE_COPY} is missing; a sweep cannot be resumed without its space")
    space = parse_space(yaml.safe_load(text), f"{store.location}/{SPACE_COPY}", kind=kind)
    space = dataclasses.replace(space, num_samples=info["num_samples"],
                                max_concurrent_trials=info["max_concurrent_trials"], seed=info["seed"])
    return store, space, info


def _record_start(store: Experiment, info: dict[str, Any] | None, space: SearchSpace, kind: str, space_file, splits,
                  data_dir, root: str, address: str | None, max_failures, keep_checkpoints) -> dict[str, Any]:
    """Write sweep.json (and space.yaml for a new sweep) as the sweep starts or resumes."""
    if info is None:
        info = _new_info(space, store.name, kind, space_file, splits, data_dir, store.location, root, address)
        info.update(max_failures=max_failures, keep_checkpoints=keep_checkpoints)
        store.write_bytes(SPACE_COPY, Path(space_file).read_bytes())
    else:
        info.update(status="running", finished=None)
        info["resumed"] = [*info.get("resumed", []), _now()]
    store.write_info(info)
    return info


def _restored_tuner(store: Experiment, trainable, restart_errored: bool):
    from ray import tune

    if not store.has_ray_state():
        raise FashionTuneError(f"{store.location} has no Ray Tune experiment state to resume (it stopped before "
                               "the first trial started); start it again with another --name")
    return tune.Tuner.restore(store.location, trainable=trainable, resume_unfinished=True,
                              resume_errored=not restart_errored, restart_errored=restart_errored)


def _refuse_changes_on_resume(info: dict[str, Any], location: str, space_file, num_samples, max_concurrent,
                              max_failures, keep_checkpoints) -> None:
    """A resumed sweep continues with what it was started with; a flag that would change that is refused."""
    for flag, value in (("--num-samples", num_samples), ("--max-concurrent", max_concurrent)):
        if value is not None:
            raise ConfigError(f"{flag} cannot change on --resume: the searcher continues as saved "
                              f"({info['num_samples']} trials, {info['max_concurrent_trials']} at a time)")
    if space_file is not None:
        raise ConfigError(f"--space cannot be given with --resume: the sweep continues with its own copy "
                          f"{location}/{SPACE_COPY}; drop --space")
    saved = {"--max-failures": (max_failures, info.get("max_failures")),
             "--keep-checkpoints": (keep_checkpoints, info.get("keep_checkpoints"))}
    for flag, (value, was) in saved.items():
        if value is not None and value != was:
            shown = f"it was started with {flag} {was}" if was is not None else "its value is saved with it"
            raise ConfigError(f"{flag} cannot change on --resume ({shown}); drop {flag}")


def _new_info(space: SearchSpace, name: str, kind: str, space_file, splits, data_dir, location: str, root: str,
              address: str | None) -> dict[str, Any]:
    """What sweep.json records about a new sweep."""
    import optuna
    import ray

    from fashion_tune import __version__

    return {
        "name": name, "kind": kind, "metric": space.metric, "mode": space.mode,
        "num_samples": space.num_samples, "max_concurrent_trials": space.max_concurrent_trials,
        "seed": space.seed, "max_t": space.max_t, "grace_period": space.grace_period,
        "reduction_factor": space.reduction_factor,
        "resources_per_trial": {"cpu": space.cpu, "gpu": space.gpu},
        "params": space.param_names(), "fixed": space.fixed,
        "space_file": str(Path(space_file).resolve()), "space_copy": SPACE_COPY,
        "data": {"sizes": splits.sizes(), "data_dir": str(data_dir) if data_dir else None},
        "experiment_dir": location, "storage": root, "address": address,
        "created": _now(), "finished": None, "status": "running", "resumed": [],
        "command": shlex.join(["fashion-tune", *sys.argv[1:]]) if Path(sys.argv[0]).name == "fashion-tune" else None,
        "versions": {"fashion_tune": __version__, "ray": ray.__version__, "optuna": optuna.__version__},
        **strategies.info(space),
    }


def _finish(space: SearchSpace, info: dict[str, Any], store: Experiment, interrupted: bool, resume_cmd: str,
            study, echo) -> SweepOutcome:
    """Export the results, record how the sweep ended, print the best trial (or how to resume)."""
    _prune_checkpoints(store, space, info)
    results = store.write_tables()
    statuses = {str(k): int(v) for k, v in results["status"].value_counts().items()} if len(results) else {}
    finished, errored = statuses.get("TERMINATED", 0), statuses.get("ERROR", 0)
    num_trials = int(sum(statuses.values()))
    if interrupted or finished + errored < space.num_samples:
        status = "interrupted"
    elif errored:
        status = "errored"
    else:
        status = "finished"
    info.update(status=status, finished=_now() if status != "interrupted" else None,
                interrupted=_now() if status == "interrupted" else None, trials=statuses)
    best = None
    try:
        best = store.best(download=False)
    except FashionTuneError as exc:
        echo(f"no best trial yet: {exc}")
    if best is not None:
        info["best"] = {"trial_id": best.trial_id, "metric": best.metric, "value": best.value, "epoch": best.epoch,
                        "checkpoint": best.source}
        searched = {k: best.config[k] for k in space.active_params(best.config) if k in best.config}
        echo(f"best trial {best.trial_id}: {best.metric} {best.value:.4f} at epoch {best.epoch} "
             f"(checkpoint {best.source})")
        echo("  config: " + ", ".join(f"{k}={_short(v)}" for k, v in searched.items()))
    store.write_info(info)

    echo(f"{num_trials} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(statuses.items()))}); "
         f"results in {store.location}/{RESULTS}.csv (and .parquet), per-epoch history in "
         f"{store.location}/{HISTORY}.csv")
    if status == "interrupted":
        echo(f"the sweep stopped before its {space.num_samples} trials finished; resume it with:\n  {resume_cmd}")
    elif status == "errored":
        echo(f"{errored} trial(s) failed more often than --max-failures allows (see error.txt in their directories); "
             f"retry them with:\n  {resume_cmd}")
    return SweepOutcome(experiment_dir=store.location, status=status, num_trials=num_trials, results=results,
                        best=best, study=study, resume_command=resume_cmd)


def _prune_checkpoints(store: Experiment, space: SearchSpace, info: dict[str, Any]) -> None:
    """The last pruning pass, against the snapshot Tune wrote as it stopped (see fashion_tune.retention)."""
    from fashion_tune.retention import prune_finished_experiment

    keep = info.get("keep_checkpoints")
    if keep:
        prune_finished_experiment(store.fs, store.path, space.metric, space.mode, keep)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
