"""What runs inside a Ray Tune trial: the plain `fit` of `fashion_tune.training.loop` with Tune's reporting
and checkpointing added, its resources, its name, and the progress table the driver prints."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from fashion_tune.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from fashion_tune.spaces.space import SearchSpace

# Ray would otherwise log every per-epoch checkpoint of every trial.
_QUIET_LOGGERS = ("ray.train._internal.storage", "ray.tune.trainable.function_trainable")


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

    from fashion_tune.training.loop import fit

    if state is not None and state["epoch"] >= config["epochs"]:
        # PBT cloned a trial's last checkpoint into this one: nothing is left to train, and the
        # trial now holds that model, so it reports it once (else it would end on its old result).
        report(dict(state["metrics"]), state)
        return
    fit(kind, config, splits=splits, reporter=report, checkpoint=state)


def trial_name(trial) -> str:
    """Short trial names and directories: `trial_<id>`."""
    return f"trial_{trial.trial_id}"


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
