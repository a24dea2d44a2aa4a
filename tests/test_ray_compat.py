"""What fashion_tune.search.ray_compat relies on in Ray's private modules and files: fails loudly when an upgrade changes it."""

import inspect


def test_the_autoscaler_cluster_config_is_where_ray_compat_reads_it():
    from ray._private.state import state  # moved or renamed: update fashion_tune/search/ray_compat.py
    from ray.core.generated import autoscaler_pb2

    assert callable(state.get_cluster_config), "ray._private.state.state.get_cluster_config is gone"
    assert "ClusterConfig" in str(inspect.signature(state.get_cluster_config).return_annotation)
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.resources["CPU"] = 8
    group.max_count = 2
    assert dict(group.resources) == {"CPU": 8} and group.max_count == 2


def test_autoscaler_node_types_reads_the_published_groups(monkeypatch):
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    from fashion_tune.search.ray_compat import autoscaler_node_types

    config = autoscaler_pb2.ClusterConfig()
    for cpus, max_count in ((8, 2), (64, 0)):
        group = config.node_group_configs.add()
        group.resources["CPU"] = cpus
        group.max_count = max_count
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    assert autoscaler_node_types() == [{"CPU": 8.0}]  # a type it may launch none of does not count
    monkeypatch.setattr(state, "get_cluster_config", lambda: None)
    assert autoscaler_node_types() is None



def test_experiment_snapshot_reads_the_newest_file_tune_writes(tmp_path):
    import json

    import pyarrow.fs
    from ray.tune.execution.tune_controller import TuneController  # moved: update fashion_tune/search/ray_compat.py
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult  # moved: update fashion_tune/search/ray_compat.py
    from ray.tune.experiment import Trial

    from fashion_tune.search.ray_compat import STATE_PREFIX
    from fashion_tune.search.retention import snapshot_on_storage

    assert TuneController.CKPT_FILE_TMPL.format("S") == f"{STATE_PREFIX}S.json"

    def snapshot(session: str, checkpoint: str, status: str, registered: str | None = None) -> None:
        """`registered`: the checkpoint Tune's checkpoint manager has as the latest (default `checkpoint`)."""
        trial = Trial("__fake", stub=True, trial_id="abc")
        trial.relative_logdir = "trial_abc"
        trial.run_metadata.last_result = {"checkpoint_dir_name": checkpoint, "epoch": 5}
        if registered != "":
            path = str(tmp_path / "trial_abc" / (registered or checkpoint))
            trial.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(Checkpoint(path), metrics={}))
        trial.set_status(status)
        # What TuneController.save_to_dir writes: each trial's (state, run metadata) JSON pair.
        state = {"trial_data": [list(trial.get_json_state())], "runner_data": {}, "stats": {}}
        (tmp_path / TuneController.CKPT_FILE_TMPL.format(session)).write_text(json.dumps(state))

    fs = pyarrow.fs.LocalFileSystem()
    assert snapshot_on_storage(fs, str(tmp_path)) is None
    snapshot("2026-01-01_00-00-00", "checkpoint_000002", Trial.RUNNING)
    snapshot("2026-01-02_00-00-00", "checkpoint_000004", Trial.TERMINATED)  # a later session's
    assert snapshot_on_storage(fs, str(tmp_path)) == {"abc": ("TERMINATED", 4, "trial_abc")}
    # The last result can run a report ahead of the checkpoint manager, whose latest restore uses.
    snapshot("2026-01-02_00-00-00", "checkpoint_000004", Trial.RUNNING, registered="checkpoint_000003")
    assert snapshot_on_storage(fs, str(tmp_path)) == {"abc": ("RUNNING", 3, "trial_abc")}
    snapshot("2026-01-02_00-00-00", "checkpoint_000004", Trial.RUNNING, registered="")  # none registered yet
    assert snapshot_on_storage(fs, str(tmp_path)) == {"abc": ("RUNNING", -1, "trial_abc")}
    (tmp_path / TuneController.CKPT_FILE_TMPL.format("2026-01-03_00-00-00")).write_text('{"trial_data": [["{')
    assert snapshot_on_storage(fs, str(tmp_path)) is None  # being written: nothing is pruned


def test_retention_keeps_the_checkpoint_a_pbt_clone_restores_from_in_the_trial_it_cloned(tmp_path):
    """After PBT's exploit, Ray points the clone's checkpoint manager at the cloned trial's checkpoint
    (`_latest_checkpoint_result`, as `PopulationBasedTraining._exploit` sets it). The snapshot then names a
    checkpoint in another trial's folder; it must survive that trial's pruning (--keep-checkpoints 1)."""
    import json

    import pyarrow.fs
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    from fashion_tune.search.retention import prune_experiment, snapshot_and_borrowed

    rows = {"src": [0.5, 0.6, 0.7, 0.72, 0.74, 0.9], "cln": [0.4, 0.45, 0.5]}
    for name, values in rows.items():
        folder = tmp_path / f"trial_{name}"
        for index, value in enumerate(values):
            (folder / f"checkpoint_{index:06d}").mkdir(parents=True)
        (folder / "result.json").write_text("".join(
            json.dumps({"epoch": i + 1, "val_acc": v, "checkpoint_dir_name": f"checkpoint_{i:06d}"}) + "\n"
            for i, v in enumerate(values)))
    trials = []
    for name, latest in (("src", tmp_path / "trial_src" / "checkpoint_000005"),
                         ("cln", tmp_path / "trial_src" / "checkpoint_000002")):  # cloned src at epoch 3
        trial = Trial("__fake", stub=True, trial_id=name)
        trial.relative_logdir = f"trial_{name}"
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=Checkpoint(str(latest)), metrics={"epoch": 3})
        trial.set_status(Trial.RUNNING)
        trials.append(list(trial.get_json_state()))
    state = {"trial_data": trials, "runner_data": {}, "stats": {}}
    (tmp_path / TuneController.CKPT_FILE_TMPL.format("2026-01-01_00-00-00")).write_text(json.dumps(state))
    fs = pyarrow.fs.LocalFileSystem()
    snapshot, borrowed = snapshot_and_borrowed(fs, str(tmp_path))
    assert borrowed == {"trial_src/checkpoint_000002"}
    assert snapshot["cln"] == ("RUNNING", -1, "trial_cln") and snapshot["src"] == ("RUNNING", 5, "trial_src")
    prune_experiment(fs, str(tmp_path), {n: str(tmp_path / f"trial_{n}") for n in rows}, "val_acc", "max", keep=1)
    kept = sorted(p.name for p in (tmp_path / "trial_src").glob("checkpoint_*"))
    assert kept == ["checkpoint_000002", "checkpoint_000005"]  # the clone's restore point, and src's own latest
    assert len(list((tmp_path / "trial_cln").glob("checkpoint_*"))) == 3  # nothing of the clone is older than it
