"""What runs inside a Ray Tune trial: the plain `fit` of `fashion_tune.training.loop` with Tune's reporting
and checkpointing added, its resources, its name, and the progress table the driver prints."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fashion_tune.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from fashion_tune.spaces.space import SearchSpace
from fashion_tune.search.trial_reports import quiet, worst_if_missing


def train_trial(config: dict[str, Any], kind: str, metric: str, mode: str, splits=None) -> None:
    """One Ray Tune trial: `fit` with a reporter that checkpoints every epoch through Tune.

    A trial Tune restarts (after a crash, or on --resume) continues from its last checkpoint.
    """
    import ray
    import torch
    from ray import tune

    quiet()
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, kind=kind)

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        row = worst_if_missing({**metrics, "node_id": node_id}, metric, mode)  # Ray adds hostname, node_ip, pid
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
    """The trainable with the data in the object store once, and the trial's resources; a replay space's
    replays its recorded curves instead (fashion_tune.search.replay)."""
    from ray import tune

    if space.table is not None:
        from fashion_tune.search.replay import make_trainable as replay_trainable

        return replay_trainable(space)

    trainable = tune.with_parameters(train_trial, kind=space.kind, metric=space.metric, mode=space.mode,
                                     splits=splits)
    return tune.with_resources(trainable, {"cpu": space.cpu, "gpu": space.gpu})
