"""Sweeps: Ray Tune runs the trainable, Optuna's TPE proposes configs, ASHA stops weak trials early.

All the Ray wiring lives here (`run_sweep`); the trainable stays the plain `fit` of
`fashion_tune.train`, reached through `train_trial`, which only adds Ray's reporting and
checkpointing. An experiment directory (`ray_results/<name>` by default) holds Ray's own files
(per-trial `result.json`, `progress.csv`, TensorBoard events and `checkpoint_*/checkpoint.pt`)
plus ours: `sweep.json` (what was run), `space.yaml` (a copy of the search space) and, once the
sweep stops, `results.{csv,parquet}` (one row per trial) and `history.{csv,parquet}` (one row per
trial per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from ray.tune import Callback

from fashion_tune import strategies
from fashion_tune.analysis import SPACE_COPY, SWEEP_INFO
from fashion_tune.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from fashion_tune.cluster import is_uri
from fashion_tune.errors import ConfigError, FashionTuneError
from fashion_tune.searcher import optuna_searcher
from fashion_tune.spaces import SearchSpace, check_resources, load_space, local_capacity, parse_space
from fashion_tune.study import check_journal, study_record

RESULTS = "results"  # .csv and .parquet
HISTORY = "history"
DEFAULT_STORAGE = "ray_results"
STORAGE_ENV = "FASHION_TUNE_STORAGE"  # the default --storage; launch/*.yaml set it on every node
DEFAULT_MAX_FAILURES = 3
DEFAULT_KEEP_CHECKPOINTS = 3
# Ray would otherwise log every per-epoch checkpoint of every trial.
_QUIET_LOGGERS = ("ray.train._internal.storage", "ray.tune.trainable.function_trainable")


def default_name(kind: str) -> str:
    return f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(storage: str | os.PathLike | None) -> str:
    """Where experiments live: a URI as given (s3://, gs://, ...), or an absolute local path (Ray needs one).

    Without `storage`: $FASHION_TUNE_STORAGE, else ./ray_results.
    """
    storage = str(storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE).removeprefix("file://")
    return storage.rstrip("/") if is_uri(storage) else str(Path(storage).expanduser().resolve())


# --- files that may live on a URI ----------------------------------------------------------


def _filesystem(location: str):
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def _read_text(location: str) -> str | None:
    import pyarrow.fs

    fs, path = _filesystem(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.readall().decode()


def _write_bytes(location: str, data: bytes) -> None:
    fs, path = _filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _write_json(location: str, data: dict[str, Any]) -> None:
    _write_bytes(location, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# --- the trainable ---------------------------------------------------------------------------


def train_trial(config: dict[str, Any], kind: str, metric: str, mode: str, splits=None) -> None:
    """One Ray Tune trial: `fit` with a reporter that checkpoints every epoch through Tune.

    A trial Tune restarts (after a crash, or on --resume) continues from its last checkpoint.
    """
    import ray
    import torch
    from ray import tune

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, kind=kind)

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        row = {**metrics, "node_id": node_id}  # Ray adds hostname, node_ip and pid itself
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            # Optuna rejects NaN objective values (the trial would hang as RUNNING in its study);
            # the worst value ranks the trial last instead. `diverged` says what happened.
            row[metric] = math.inf if mode == "min" else -math.inf
        with tempfile.TemporaryDirectory(prefix="fashion-tune-ckpt-") as directory:
            save_checkpoint(state, Path(directory) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))

    from fashion_tune.train import fit

    if state is not None and state["epoch"] >= config["epochs"]:
        # PBT cloned a trial's last checkpoint into this one: nothing is left to train, and the
        # trial now holds that model, so it reports it once (else it would end on its old result).
        report(dict(state["metrics"]), state)
        return
    fit(kind, config, splits=splits, reporter=report, checkpoint=state)


def trial_name(trial) -> str:
    """Short trial names and directories: `trial_<id>`."""
    return f"trial_{trial.trial_id}"


# --- Ray wiring ------------------------------------------------------------------------------


def _stored_results(trial) -> list[dict[str, Any]]:
    """The results a trial wrote to its `result.json` before the sweep was interrupted."""
    if not getattr(trial, "relative_logdir", True):
        # Not started yet. A trial --restart-errored made still carries the old trial's storage
        # paths until it starts; those results are not its own.
        return []
    try:
        fs = trial.storage.storage_filesystem
        with fs.open_input_stream(f"{trial.storage.trial_fs_path}/result.json") as f:
            text = f.readall().decode()
    except Exception:  # noqa: BLE001 - a new trial has no file yet
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
    return rows


def make_scheduler(space: SearchSpace):
    """The space's scheduler (ASHA unless `scheduler.type` says otherwise): see fashion_tune.strategies."""
    return strategies.make_scheduler(space)


def make_searcher(space: SearchSpace, experiment_dir: str | None = None, name: str | None = None):
    """The space's Optuna sampler behind Ray's concurrency limit, its study in the experiment's journal
    (in memory without `experiment_dir`): see fashion_tune.strategies, .searcher and .study."""
    return strategies.make_searcher(space, experiment_dir, name)


class SweepCallback(Callback):
    """Keeps the searcher and the checkpoints on disk consistent with the trials Tune holds.

    - At the first step of every driver run (a fresh sweep or a restore) it reconciles the
      searcher with the trials Tune restored and moves aside trial directories Tune no longer
      knows (a trial replaced by --restart-errored, or one started after the last snapshot), so
      `results.csv` has one row per trial.
    - At every experiment snapshot it prunes checkpoints as `fashion_tune.retention` explains.

    It is pickled with the Tuner (tuner.pkl) together with the search algorithm it holds, so a
    restored sweep gets both back as one pair.
    """

    def __init__(self, search, metric: str, mode: str, keep: int):
        self.search, self.metric, self.mode, self.keep = search, metric, mode, keep
        self._started = False
        self._pending: dict[str, Any] = {}  # trial id -> trial whose checkpoints may still be pruned

    def __getstate__(self):
        return {**self.__dict__, "_started": False, "_pending": {}}

    def on_step_begin(self, iteration: int, trials, **info):
        if self._started:
            return
        self._started = True
        from fashion_tune.searcher import reconcile

        counts = reconcile(self.search, trials, _stored_results)
        if any(counts[k] for k in ("adopted", "told", "failed")):
            logging.getLogger(__name__).info("searcher reconciled with the restored trials: %s", counts)
        self._pending.update({t.trial_id: t for t in trials})
        if trials:
            _move_aside_unknown_trials(trials)

    def on_checkpoint(self, iteration: int, trials, trial, checkpoint, **info):
        self._pending[trial.trial_id] = trial

    def get_state(self):
        self.prune()
        return None  # nothing to save: what it needs is on disk

    def prune(self) -> None:
        """Prune the checkpoints of trials that saved one since they settled (see fashion_tune.retention)."""
        from fashion_tune.retention import prune_experiment

        if not self._pending:
            return
        storage = next(iter(self._pending.values())).storage
        settled = prune_experiment(storage.storage_filesystem, storage.experiment_fs_path,
                                   {t.trial_id: t.storage.trial_fs_path for t in self._pending.values()},
                                   self.metric, self.mode, self.keep)
        for trial_id in settled:
            if self._pending[trial_id].status not in ("PENDING", "RUNNING", "PAUSED"):
                del self._pending[trial_id]


DISCARDED = ".discarded"


def _move_aside_unknown_trials(trials) -> None:
    """Move trial_* directories no restored trial owns into .discarded/ (kept for their error.txt)."""
    import pyarrow.fs

    storage = trials[0].storage
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    owned = {t.relative_logdir for t in trials if t.relative_logdir}  # a trial not started yet has no directory
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root))
    except OSError:
        return
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("trial_") and info.base_name not in owned:
            fs.create_dir(f"{root}/{DISCARDED}", recursive=True)
            fs.move(f"{root}/{info.base_name}", f"{root}/{DISCARDED}/{info.base_name}")


def make_reporter(space: SearchSpace):
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"epoch": "epoch", space.metric: space.metric, "diverged": "diverged"},
        # Only parameters every trial has: Ray's table cannot show a choice's sub-parameters.
        parameter_columns=[param.name for param in space.params],
        sort_by_metric=True,
        max_progress_rows=30, max_report_frequency=30,
    )


def make_trainable(space: SearchSpace, splits):
    """The trainable with the data in the object store once, and the trial's resources."""
    from ray import tune

    trainable = tune.with_parameters(train_trial, kind=space.kind, metric=space.metric, mode=space.mode,
                                     splits=splits)
    return tune.with_resources(trainable, {"cpu": space.cpu, "gpu": space.gpu})


# --- running a sweep ---------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What `run_sweep` leaves: where the experiment is, how it ended, and its trials."""

    experiment_dir: str
    status: str  # finished | interrupted | errored (some trials failed past max_failures)
    num_trials: int
    results: Any = None  # pandas.DataFrame, one row per trial (local storage only)
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


def read_info(location: str) -> dict[str, Any] | None:
    text = _read_text(f"{location}/{SWEEP_INFO}")
    return None if text is None else json.loads(text)


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
    if max_failures is not None and max_failures < 0:
        raise ConfigError(f"--max-failures={max_failures} is not allowed; use an integer >= 0")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise ConfigError(f"--keep-checkpoints={keep_checkpoints} is not allowed; use an integer >= 1")
    if restart_errored and not resume:
        raise ConfigError("--restart-errored only applies with --resume (it restarts the failed trials of a sweep "
                          "being continued)")
    root = storage_root(storage)
    info: dict[str, Any] | None = None
    if resume:
        if not name:
            raise ConfigError(f"--resume needs --name NAME of the sweep to continue (a directory in {root})")
        location = f"{root}/{name}"
        info = read_info(location)
        if info is None:
            raise FashionTuneError(f"no sweep to resume at {location} (no {SWEEP_INFO}); check --name and "
                                   "--storage, or start it without --resume")
        if info["kind"] != kind:
            raise ConfigError(f"{location} is a {info['kind']} sweep; resume it with `fashion-tune sweep {info['kind']} ...`")
        _refuse_changes_on_resume(info, location, space_file, num_samples, max_concurrent, max_failures,
                                  keep_checkpoints)
        check_journal(info, location)
        text = _read_text(f"{location}/{SPACE_COPY}")
        if text is None:
            raise FashionTuneError(f"{location}/{SPACE_COPY} is missing; a sweep cannot be resumed without its space")
        space = parse_space(yaml.safe_load(text), f"{location}/{SPACE_COPY}", kind=kind)
        space = dataclasses.replace(space, num_samples=info["num_samples"],
                                    max_concurrent_trials=info["max_concurrent_trials"], seed=info["seed"])
    else:
        max_failures = DEFAULT_MAX_FAILURES if max_failures is None else max_failures
        keep_checkpoints = DEFAULT_KEEP_CHECKPOINTS if keep_checkpoints is None else keep_checkpoints
        if space_file is None:
            raise ConfigError(f"--space FILE is required; e.g. search_spaces/{kind}_quick.yaml")
        space = load_space(space_file, kind=kind).with_overrides(num_samples, max_concurrent)
        name = name or default_name(kind)
        location = f"{root}/{name}"
        if read_info(location) is not None or (not is_uri(location) and any(Path(location).glob("experiment_state-*"))):
            raise FashionTuneError(f"a sweep named {name!r} already exists at {location}; continue it with --resume "
                                   "or pick another --name")

    attach = bool(address or os.environ.get("RAY_ADDRESS"))
    if not attach:
        cpus, gpus = local_capacity()
        where = "this machine" if num_cpus is None and num_gpus is None else "the local Ray (--num-cpus/--num-gpus)"
        num_cpus = cpus if num_cpus is None else num_cpus
        num_gpus = gpus if num_gpus is None else num_gpus
        check_resources(space, num_cpus, num_gpus, where)
    splits = _shared_splits(space, data_dir)

    from ray import tune

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
    grid = None
    interrupted = False
    try:
        if attach:
            echo(f"attached to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {cluster.describe_cluster()}")
            _check_cluster_resources(space, address, echo)
            cluster.check_storage(root, allow_node_local=allow_local_storage)
        if info is None:
            info = _new_info(space, name, kind, space_file, splits, data_dir, location, root, address)
            info.update(max_failures=max_failures, keep_checkpoints=keep_checkpoints)
            _write_bytes(f"{location}/{SPACE_COPY}", Path(space_file).read_bytes())
        else:
            info.update(status="running", finished=None)
            info["resumed"] = [*info.get("resumed", []), _now()]
        _write_json(f"{location}/{SWEEP_INFO}", info)

        trainable = make_trainable(space, splits)
        if resume:
            if not tune.Tuner.can_restore(location):
                raise FashionTuneError(f"{location} has no Ray Tune experiment state to resume (it stopped before "
                                       "the first trial started); start it again with another --name")
            tuner = tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True,
                                       resume_errored=not restart_errored, restart_errored=restart_errored)
        else:
            searcher = make_searcher(space, location, name)
            info.update(study_record(searcher))  # the study's name and journal
            _write_json(f"{location}/{SWEEP_INFO}", info)
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
        echo(f"sweep {name}: {space.num_samples} {kind} trials, {space.max_concurrent_trials} at a time, "
             f"{space.strategy_line()} -> {location}")
        grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted = True  # a second Ctrl-C; the first makes Tune stop and save its state itself
    except Exception:
        if info is not None:
            echo(f"the sweep driver failed; what the trials saved is kept, and this may continue it:\n"
                 f"  {resume_command(kind, name, storage, address, data_dir)}")
        raise
    finally:
        if started:
            cluster.disconnect()
    if info is None:  # interrupted before anything was written
        raise KeyboardInterrupt

    return _finish(space, info, location, grid, interrupted,
                   resume_command(kind, name, storage, address, data_dir),
                   study=optuna_searcher(searcher).study if searcher is not None else None, echo=echo)


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


def _finish(space: SearchSpace, info: dict[str, Any], location: str, grid, interrupted: bool,
            resume_cmd: str, study, echo) -> SweepOutcome:
    """Export the results, record how the sweep ended, print the best trial (or how to resume)."""
    results = best = None
    _prune_checkpoints(location, space, info)
    if is_uri(location):
        statuses = _export_from_grid(grid, location) if grid is not None else {}
    else:
        from fashion_tune import analysis

        results = analysis.load_results(location)
        history = analysis.load_history(location)
        for frame, stem in ((results, RESULTS), (history, HISTORY)):
            analysis.write_frame(frame, Path(location) / stem)
        statuses = results["status"].value_counts().to_dict() if len(results) else {}
    finished = statuses.get("TERMINATED", 0)
    errored = statuses.get("ERROR", 0)
    num_trials = int(sum(statuses.values()))
    if interrupted or finished + errored < space.num_samples:
        status = "interrupted"
    elif errored:
        status = "errored"
    else:
        status = "finished"
    info.update(status=status, finished=_now() if status != "interrupted" else None, interrupted=_now() if status == "interrupted" else None,
                trials={str(k): int(v) for k, v in statuses.items()})

    if not is_uri(location):
        from fashion_tune import analysis

        try:
            best = analysis.best_trial(location)
        except FashionTuneError as exc:
            echo(f"no best trial yet: {exc}")
    if best is not None:
        info["best"] = {"trial_id": best.trial_id, "metric": best.metric, "value": best.value, "epoch": best.epoch,
                        "checkpoint": str(best.checkpoint)}
        searched = {k: best.config[k] for k in space.active_params(best.config) if k in best.config}
        echo(f"best trial {best.trial_id}: {best.metric} {best.value:.4f} at epoch {best.epoch} "
             f"(checkpoint {best.checkpoint})")
        echo("  config: " + ", ".join(f"{k}={_short(v)}" for k, v in searched.items()))
    elif is_uri(location) and grid is not None:
        try:
            result = grid.get_best_result(space.metric, space.mode, scope="all", filter_nan_and_inf=True)
            echo(f"best trial {result.metrics.get('trial_id')}: {space.metric} "
                 f"{result.metrics_dataframe[space.metric].agg(space.mode):.4f}; config {result.config}")
        except (RuntimeError, KeyError, ValueError) as exc:
            echo(f"no best trial yet ({exc})")
    _write_json(f"{location}/{SWEEP_INFO}", info)

    echo(f"{num_trials} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(statuses.items()))}); "
         f"results in {location}/{RESULTS}.csv (and .parquet), per-epoch history in {location}/{HISTORY}.csv")
    if status == "interrupted":
        echo(f"the sweep stopped before its {space.num_samples} trials finished; resume it with:\n  {resume_cmd}")
    elif status == "errored":
        echo(f"{errored} trial(s) failed more often than --max-failures allows (see error.txt in their directories); "
             f"retry them with:\n  {resume_cmd}")
    return SweepOutcome(experiment_dir=location, status=status, num_trials=num_trials, results=results, best=best,
                        study=study, resume_command=resume_cmd)


def _prune_checkpoints(location: str, space: SearchSpace, info: dict[str, Any]) -> None:
    """The last pruning pass, against the snapshot Tune wrote as it stopped (see fashion_tune.retention)."""
    from fashion_tune.retention import prune_finished_experiment

    keep = info.get("keep_checkpoints")
    if keep:
        fs, path = _filesystem(location)
        prune_finished_experiment(fs, path, space.metric, space.mode, keep)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _export_from_grid(grid, location: str) -> dict[str, int]:
    """Results of a sweep on remote storage, from Ray's ResultGrid, written next to the experiment."""
    import io

    import pandas as pd

    frame = grid.get_dataframe()
    histories = [r.metrics_dataframe for r in grid if r.metrics_dataframe is not None]
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    for data, stem in ((frame, RESULTS), (history, HISTORY)):
        _write_bytes(f"{location}/{stem}.csv", data.to_csv(index=False).encode())
        buffer = io.BytesIO()
        data.to_parquet(buffer, index=False)
        _write_bytes(f"{location}/{stem}.parquet", buffer.getvalue())
    statuses: dict[str, int] = {}
    for result in grid:
        status = "ERROR" if result.error else "TERMINATED"
        statuses[status] = statuses.get(status, 0) + 1
    return statuses
