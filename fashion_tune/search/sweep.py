"""Sweeps: Ray Tune runs the trainable, Optuna's TPE proposes configs, ASHA stops weak trials early.

All the Ray wiring lives here (`run_sweep`); the trainable stays the plain `fit` of
`fashion_tune.training.loop`, reached through `fashion_tune.search.trainable`, which only adds Ray's reporting
and checkpointing. The experiment directory (`ray_results/<name>` by default, or a URI such as
s3://BUCKET/sweeps/<name>) is the store `fashion_tune.store.experiment` reads and writes: Ray's own
files plus `sweep.json`, `space.yaml` (and `sources.json`, what its `start_from:`/`warm_start:`
gave) and, once the sweep stops, `results.{csv,parquet}` (one row per trial) and
`history.{csv,parquet}` (one row per trial per epoch), in one schema on any storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from fashion_tune.util.errors import ConfigError, FashionTuneError
from fashion_tune.util.files import format_short
from fashion_tune.spaces.space import SearchSpace, check_resources, load_space, local_capacity
from fashion_tune.store.experiment import HISTORY, RESULTS, Experiment
from fashion_tune.search import strategies
from fashion_tune.search.callbacks import ProgressCsvLogger, ResultJsonLogger, SweepCallback  # SweepCallback: also by older tuner.pkl files
from fashion_tune.search.request import PreparedSweep, SweepRequest
from fashion_tune.search.searcher import optuna_searcher, study_record
from fashion_tune.search.sources import resolve_sources
from fashion_tune.search.study import JOURNAL_FILE
from fashion_tune.search.sweep_info import new_store, now, record_start, resume_command, resumed_space, storage_root, to_resume
from fashion_tune.search.trainable import make_reporter, make_trainable, trial_name

DEFAULT_MAX_FAILURES = 3
DEFAULT_KEEP_CHECKPOINTS = 3


def default_name(kind: str) -> str:
    return f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


# --- Ray wiring ------------------------------------------------------------------------------


def make_scheduler(space: SearchSpace):
    """The space's scheduler (ASHA unless `scheduler.type` says otherwise): see fashion_tune.search.strategies."""
    return strategies.make_scheduler(space)


def make_searcher(space: SearchSpace, experiment_dir: str | None = None, name: str | None = None):
    """The space's Optuna sampler behind Ray's concurrency limit, its study in the experiment's journal
    (in memory without `experiment_dir`): see fashion_tune.search.strategies, .searcher and .study."""
    return strategies.make_searcher(space, experiment_dir, name)


def clock_callbacks(space: SearchSpace) -> list:
    """A replay with `clock: simulated` needs its clock told what the driver runs after each step."""
    if space.table is None or space.clock != "simulated":
        return []
    from fashion_tune.search.sim_clock import ClockCallback

    return [ClockCallback()]


def _make_tuner(run: PreparedSweep, trainable):
    """A new Tuner for the prepared sweep (its study in the experiment's journal); returns it and its search algorithm."""
    from ray import tune

    space, name = run.space, run.store.name
    searcher = make_searcher(space, run.store.location, name)
    callback = SweepCallback(searcher, space.metric, space.mode, run.keep_checkpoints)
    tuner = tune.Tuner(
        trainable,
        param_space=space.base_config(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=space.num_samples,
            search_alg=searcher, scheduler=make_scheduler(space),
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            reuse_actors=space.reuse_actors,  # a new trial skips starting a process and importing torch
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=run.root, stop=run.request.stop, verbose=run.request.verbose,
            progress_reporter=make_reporter(space),
            callbacks=[callback, ResultJsonLogger(), ProgressCsvLogger(), *clock_callbacks(space)],  # in place of Tune's own two
            # Every checkpoint stays for Ray; SweepCallback keeps the best N and what a resume needs.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
        ),
    )
    return tuner, searcher


# --- running a sweep ---------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What `run_sweep` leaves: where the experiment is, how it ended, and its trials."""

    experiment_dir: str
    status: str  # finished | interrupted | errored (trials failed past max_failures) | stopped (by `stop`'s stop_all)
    num_trials: int
    results: Any = None  # pandas.DataFrame, one row per trial
    best: Any = None  # analysis.TrialPick, or None
    study: Any = None  # the optuna.Study behind OptunaSearch (a fresh run only; None on --resume)
    resume_command: str = ""


def _shared_splits(space: SearchSpace, data_dir):
    """The training and validation data every trial shares; the test split stays out of the sweep.
    A replay trains nothing: None."""
    from fashion_tune.training.loop import load_splits

    if space.table is not None:
        return None

    splits = load_splits(space.data_config(), data_dir)
    return dataclasses.replace(splits, test_x=splits.test_x[:0], test_y=splits.test_y[:0])


def _check_cluster_resources(space: SearchSpace, address: str | None, echo: Callable[[str], None]) -> None:
    """Refuse a trial no node of the attached cluster can ever hold; warn when only the autoscaler could add one."""
    from fashion_tune.search.cluster import node_capacity

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


def run_sweep(request: SweepRequest | str, space_file: str | os.PathLike | None = None, *,
              echo: Callable[[str], None] = print, **options) -> SweepOutcome:
    """Run (or with `request.resume`, continue) a sweep. The space, the resources and the data are
    checked before Ray starts; an attached cluster's nodes and storage right after connecting.

    `run_sweep(SweepRequest(...))`, or as a shorthand `run_sweep(kind, space_file, **options)` with
    the request's fields as options.
    """
    if not isinstance(request, SweepRequest):
        request = SweepRequest(request, space_file, **options)
    elif space_file is not None or options:
        raise TypeError("run_sweep takes a SweepRequest alone, or kind, space_file and options")
    root = storage_root(request.storage)
    if request.resume:
        store, info = to_resume(request, root)
        if info.get("status") in ("finished", "stopped"):
            return _already_finished(store, info, echo)
        space = resumed_space(store, info, request.kind)
        name, max_failures, keep_checkpoints = store.name, info.get("max_failures"), info.get("keep_checkpoints")
    else:
        if request.space_file is None:
            raise ConfigError(f"--space FILE is required; e.g. search_spaces/{request.kind}_quick.yaml")
        space = resolve_sources(load_space(request.space_file, kind=request.kind))
        space = space.with_overrides(request.num_samples, request.max_concurrent)
        name = request.name or default_name(request.kind)
        store, info = new_store(root, name), None
        max_failures = DEFAULT_MAX_FAILURES if request.max_failures is None else request.max_failures
        keep_checkpoints = DEFAULT_KEEP_CHECKPOINTS if request.keep_checkpoints is None else request.keep_checkpoints
    num_cpus, num_gpus = request.num_cpus, request.num_gpus
    if not request.attach:
        cpus, gpus = local_capacity()
        where = "this machine" if num_cpus is None and num_gpus is None else "the local Ray (--num-cpus/--num-gpus)"
        num_cpus = cpus if num_cpus is None else num_cpus
        num_gpus = gpus if num_gpus is None else num_gpus
        check_resources(space, num_cpus, num_gpus, where)
    command = resume_command(request.kind, name, request.storage, request.address, request.data_dir)
    run = PreparedSweep(request, space, store, info, _shared_splits(space, request.data_dir), root, max_failures,
                        keep_checkpoints, command, num_cpus, num_gpus)
    return _run_on_ray(run, echo)


def _run_on_ray(run: PreparedSweep, echo: Callable[[str], None]) -> SweepOutcome:
    """Connect to (or start) Ray, run the Tuner to its end or a Ctrl-C, and export what the store holds."""
    from fashion_tune.search import cluster

    request, space, store, info = run.request, run.space, run.store, run.info
    # The classic reporter prints the trial table with the searched parameters and the metric.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray keeps every checkpoint (SweepCallback prunes them); its per-trial list of them then needs
    # no metrics, which would otherwise stay in the driver's memory for every epoch of every trial.
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    if not request.attach:
        cluster.stop_leftovers(echo)
    started = cluster.connect(request.address, num_cpus=run.num_cpus, num_gpus=run.num_gpus,
                              include_dashboard=request.dashboard, dashboard_host=request.dashboard_host)
    searcher = None
    interrupted = False
    try:
        if request.attach:
            echo(f"attached to the Ray cluster at {request.address or os.environ.get('RAY_ADDRESS')}: "
                 f"{cluster.describe_cluster()}")
            _check_cluster_resources(space, request.address, echo)
            cluster.check_storage(run.root, allow_node_local=request.allow_local_storage)
        info = record_start(run)
        trainable = make_trainable(space, run.splits)
        if run.info is not None:
            tuner = _restored_tuner(store, trainable, request.restart_errored)
        else:
            tuner, searcher = _make_tuner(run, trainable)
            info.update(study_record(searcher))  # the study's name and journal
            store.write_info(info)
        echo(f"sweep {store.name}: {space.num_samples} {request.kind} trials, {space.max_concurrent_trials} at a "
             f"time, {space.strategy_line()} -> {store.location}")
        with without_rays_resume_hint():
            tuner.fit()  # the results come from the store, in one schema on any storage
    except KeyboardInterrupt:
        interrupted = True  # a second Ctrl-C; the first makes Tune stop and save its state itself
    except Exception:
        if info is not None:
            echo(f"the sweep driver failed; what the trials saved is kept, and this may continue it:\n  {run.command}")
        raise
    finally:
        if clock_callbacks(space):
            from fashion_tune.search.sim_clock import stop_clock

            stop_clock()  # also where the experiment ended before Tune's on_experiment_end
        if started:
            cluster.disconnect()
    if info is None:  # interrupted before anything was written
        raise KeyboardInterrupt
    stopped = callable(getattr(request.stop, "stop_all", None)) and bool(request.stop.stop_all())
    return _finish(space, info, store, "interrupted" if interrupted else "stopped" if stopped else None, run.command,
                   study=optuna_searcher(searcher).study if searcher is not None else None, echo=echo)


class _NoRayResumeHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def without_rays_resume_hint():
    """Ray's "Resume experiment with: Tuner.restore(...)" after Ctrl-C is left out: the sweep prints
    the fashion-tune command that resumes it, which also checks the flags and records the resume."""
    ray_log, hint = logging.getLogger("ray.tune.tune"), _NoRayResumeHint()
    ray_log.addFilter(hint)
    try:
        yield
    finally:
        ray_log.removeFilter(hint)


def _restored_tuner(store: Experiment, trainable, restart_errored: bool):
    from ray import tune

    if not store.has_ray_state():
        raise FashionTuneError(f"{store.location} has no Ray Tune experiment state to resume (it stopped before "
                               "the first trial started); start it again with another --name")
    return tune.Tuner.restore(store.location, trainable=trainable, resume_unfinished=True,
                              resume_errored=not restart_errored, restart_errored=restart_errored)


def _already_finished(store: Experiment, info: dict[str, Any], echo) -> SweepOutcome:
    """--resume of a sweep that ended with every trial done (or that its stopper ended): nothing to run,
    so Ray is not started."""
    trials = info.get("trials") or {}
    best = info.get("best")
    how = "finished" if info.get("status") == "finished" else "was ended by its stopper"
    echo(f"{store.name} {how} already ({info.get('finished')}): "
         + ", ".join(f"{v} {k.lower()}" for k, v in sorted(trials.items()))
         + (f"; best trial {best['trial_id']}: {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best else ""))
    echo(f"nothing to resume; see it with: fashion-tune analyze {store.location}")
    return SweepOutcome(experiment_dir=store.location, status=info["status"], num_trials=int(sum(trials.values())))


def _finish(space: SearchSpace, info: dict[str, Any], store: Experiment, ended: str | None, resume_cmd: str,
            study, echo) -> SweepOutcome:
    """Export the results, record how the sweep ended, print the best trial (or how to resume).

    `ended`: "interrupted" (Ctrl-C), "stopped" (the request's Stopper said stop_all), or None.
    """
    _prune_checkpoints(store, space, info)
    if store.is_remote and info.get("journal") and Path(info["journal"]).is_file():
        store.upload(info["journal"], JOURNAL_FILE)  # the study as the sweep left it (see fashion_tune.search.study)
    results = store.write_tables()
    statuses = {str(k): int(v) for k, v in results["status"].value_counts().items()} if len(results) else {}
    finished, errored = statuses.get("TERMINATED", 0), statuses.get("ERROR", 0)
    num_trials = int(sum(statuses.values()))
    if ended == "interrupted" or (ended is None and finished + errored < space.num_samples):
        status = "interrupted"
    elif ended == "stopped" and finished + errored < space.num_samples:
        status = "stopped"  # Ray marks the search finished: a resume would start no new trial
    elif errored:
        status = "errored"
    else:
        status = "finished"
    info.update(status=status, finished=now() if status != "interrupted" else None,
                interrupted=now() if status == "interrupted" else None, trials=statuses)
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
        echo("  config: " + ", ".join(f"{k}={format_short(v)}" for k, v in searched.items()))
    store.write_info(info)

    echo(f"{trial_counts(num_trials, space.num_samples, statuses, len(space.warm_trials))}; "
         f"results in {store.location}/{RESULTS}.csv (and .parquet), per-epoch history in "
         f"{store.location}/{HISTORY}.csv")
    if status == "interrupted":
        echo(f"the sweep stopped before its {space.num_samples} trials finished; resume it with:\n  {resume_cmd}")
    elif status == "stopped":
        echo(f"the sweep's stopper ended it before its {space.num_samples} trials (stop_all); it is complete as it "
             "is, and a resume would start no new trial: start another sweep (warm_start: from this one) for more")
    elif status == "errored":
        echo(f"{errored} trial(s) failed more often than --max-failures allows (see error.txt in their directories); "
             f"retry them with:\n  {resume_cmd}")
    return SweepOutcome(experiment_dir=store.location, status=status, num_trials=num_trials, results=results,
                        best=best, study=study, resume_command=resume_cmd)


def trial_counts(num_trials: int, num_samples: int, statuses: dict[str, int], warm: int = 0) -> str:
    """The summary's trial counts, as Ray's table counts them ("Number of trials: 5/8 (2 RUNNING, 3 TERMINATED)"):
    the Tune trials created so far of num_samples, by status; what the words mean where Ray's table does not say."""
    text = f"{num_trials}/{num_samples} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(statuses.items()))})"
    notes = []
    if statuses.get("RUNNING") or statuses.get("PAUSED"):
        notes.append("running/paused ones stopped mid-trial and continue from their last checkpoint on --resume")
    if num_trials < num_samples:
        notes.append(f"{num_samples - num_trials} not created yet")
    if warm:
        notes.append(f"the {warm} warm-start trials told to Optuna are not Tune trials and not counted")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _prune_checkpoints(store: Experiment, space: SearchSpace, info: dict[str, Any]) -> None:
    """The last pruning pass, against the snapshot Tune wrote as it stopped (see fashion_tune.search.retention)."""
    from fashion_tune.search.retention import prune_finished_experiment

    keep = info.get("keep_checkpoints")
    if keep:
        prune_finished_experiment(store.fs, store.path, space.metric, space.mode, keep)
