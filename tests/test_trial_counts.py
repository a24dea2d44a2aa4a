"""The sweep's summary counts trials as Ray's own table does.

Ray's final table ("Number of trials: 5/8 (2 RUNNING, 3 TERMINATED)") is printed from the trials
Tune holds as it stops; the summary reads them back from Ray's snapshot, which turns RUNNING into
PENDING. A trial that had started but not yet finished an epoch was counted as pending.
"""

import json
from types import SimpleNamespace

from fashion_tune.search.sweep import trial_counts
from fashion_tune.store import experiment as experiment_module
from fashion_tune.store.experiment import Experiment


def snapshot_trial(trial_id, status):
    """A trial as Ray's ExperimentAnalysis reads it back from the snapshot."""
    return SimpleNamespace(trial_id=trial_id, status=status, relative_logdir=f"trial_{trial_id}", config={"lr": 0.1},
                           num_failures=0)


def test_a_trial_that_started_counts_as_running_before_its_first_epoch(tmp_path, monkeypatch):
    root = tmp_path / "exp"
    # a: finished; b: started, one epoch reported; c: started (params.json), no epoch yet; d: never started.
    for trial_id, rows in (("a", [{"epoch": 1, "done": True}]), ("b", [{"epoch": 1}]), ("c", None)):
        directory = root / f"trial_{trial_id}"
        directory.mkdir(parents=True)
        (directory / "params.json").write_text(json.dumps({"lr": 0.1}))
        if rows is not None:
            (directory / "result.json").write_text("".join(json.dumps({**r, "trial_id": trial_id}) + "\n" for r in rows))
    # As Ray reads a snapshot written while b and c ran: RUNNING comes back as PENDING.
    trials = [snapshot_trial("a", "TERMINATED"), snapshot_trial("b", "PENDING"), snapshot_trial("c", "PENDING"),
              snapshot_trial("d", "PENDING")]
    monkeypatch.setattr(experiment_module, "ray_trials", lambda fs, path: trials)
    statuses = {r.trial_id: r.status for r in Experiment(root).trials()}
    assert statuses == {"a": "TERMINATED", "b": "RUNNING", "c": "RUNNING", "d": "PENDING"}  # c was "PENDING"


def test_the_summary_line_reads_as_rays_table():
    assert trial_counts(4, 4, {"TERMINATED": 4}) == "4/4 trials (4 terminated)"
    interrupted = trial_counts(5, 8, {"TERMINATED": 3, "RUNNING": 2})
    assert interrupted.startswith("5/8 trials (2 running, 3 terminated) (")  # Ray: 5/8 (2 RUNNING, 3 TERMINATED)
    assert "--resume" in interrupted and "3 not created yet" in interrupted
    assert "the 6 warm-start trials told to Optuna are not Tune trials" in trial_counts(4, 4, {"TERMINATED": 4}, warm=6)
