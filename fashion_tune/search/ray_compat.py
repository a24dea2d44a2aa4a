"""The one place fashion-tune reaches into Ray's private modules and formats, because no public API says it.

`autoscaler_node_types`: the node types Ray's autoscaler may launch, with their resources and
max_count. The autoscaler publishes them in the GCS (`ray._private.state`); nothing public reads
them (`ray.cluster_resources()` counts only the nodes alive now). Without them a sweep cannot
tell a trial no node will ever hold from one waiting for a larger node to join, so it warns
instead of refusing. tests/test_ray_compat.py fails loudly if a Ray upgrade moves or renames
what this relies on.

`experiment_snapshot`: the trials of Tune's newest experiment snapshot on storage
(`experiment_state-<session>.json`, the file `Tuner.restore` reads), parsed as plain JSON.
Retention reads it at every Tune snapshot; `ray.tune.ExperimentAnalysis` would read the same
file but also every trial's whole result.json into pandas each time, which made each snapshot
slow enough to stall the driver (see fashion_tune.search.retention).

One reach lives elsewhere, beside the classes it changes: `fashion_tune.search.callbacks._DriverCopyFirst`
overrides Tune's private `LoggerCallback._restore_from_remote`, which lost result.json lines when a trial
started again. tests/test_replay.py::test_every_result_tune_processed_is_in_result_json_when_trials_pause_and_resume
fails if an upgrade brings the loss back.

`restore_checkpoint`: the checkpoint a trial of that snapshot restores from, its checkpoint
manager's latest. The snapshot stores the manager cloudpickled, and it can lag the trial's
`last_result` by a report (a result processed, its checkpoint not yet registered), so
`last_result["checkpoint_dir_name"]` is not enough: retention once deleted the checkpoint a
resume then asked for. After a PBT exploit that checkpoint is in another trial's folder. It is decoded with Ray's own `_TrainingRunMetadata.from_json_state`, as
`Tuner.restore` decodes the same file (which, like tuner.pkl, is trusted as the sweep's own).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs

STATE_PREFIX = "experiment_state-"  # Ray's TuneController.CKPT_FILE_TMPL, "experiment_state-{}.json"


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """Resources of each node type the autoscaler may launch (max_count != 0); None if Ray does not say."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not connected, or Ray changed it (the test says which)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{k: float(v) for k, v in group.resources.items()} for group in config.node_group_configs
            if group.max_count != 0]


def experiment_snapshot(fs, experiment_path: str) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """(trial state, run metadata) of each trial in the newest experiment snapshot at `experiment_path`.

    The newest is the greatest file name, as Ray's `_find_newest_experiment_checkpoint` picks it.
    None when there is none or it cannot be read (being written, or Ray changed its format).
    """
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path))
    except (OSError, pyarrow.lib.ArrowException):
        return None
    names = [i.base_name for i in infos if i.base_name.startswith(STATE_PREFIX) and i.base_name.endswith(".json")]
    if not names:
        return None
    try:
        with fs.open_input_stream(f"{experiment_path}/{max(names)}") as f:
            state = json.loads(f.readall().decode())
        return [(json.loads(trial), json.loads(metadata)) for trial, metadata in state["trial_data"]]
    except (OSError, pyarrow.lib.ArrowException, ValueError, KeyError, TypeError):
        return None


UNKNOWN = object()  # restore_checkpoint could not tell


def restore_checkpoint(metadata: dict[str, Any]) -> str | None | object:
    """Path of the checkpoint Tune restores this trial from (None: from scratch; UNKNOWN: cannot tell).

    Usually in the trial's own folder; after a PBT exploit, in the folder of the trial it cloned
    (Ray points the clone's checkpoint manager at that trial's checkpoint).

    `metadata`: a trial's run metadata as `experiment_snapshot` returns it.
    """
    try:
        from ray.tune.trainable.metadata import _TrainingRunMetadata

        latest = _TrainingRunMetadata.from_json_state(json.dumps(metadata)).checkpoint_manager.latest_checkpoint_result
        return None if latest is None else latest.checkpoint.path.rstrip("/")
    except Exception:  # noqa: BLE001 - Ray changed it (tests/test_ray_compat.py says so)
        return UNKNOWN
