"""Fault injection: real sweep drivers and promotions killed with SIGKILL, a trial that raises, a
trial that diverges, two promotions at once, and the driver's memory over many trials.

Every case waits for something it can see on disk (a checkpoint directory, a temporary directory)
before it injects its fault, never for a fixed time, and every wait has a deadline. Each case
prints one line of the table the issue note quotes (`pytest -m faults -s`, or in CI's output).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401 - puts the psutil Ray ships on the path
import yaml

from fashion_tune.search.cluster import RECORDS_ENV, session_processes
from fashion_tune.search.retention import snapshot_on_storage
from fashion_tune.search.study import TUNE_TRIAL_ID, open_study
from fashion_tune.reports.analysis import best_trial, load_results

import psutil  # noqa: E402 - after ray

pytestmark = [pytest.mark.faults, pytest.mark.ray]

ROOT = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "fault_hooks"
SEED = 9


def table_line(record_property, case, **numbers):
    """A row of the fault table that the suite prints at its end (tests/conftest.py), also from xdist workers."""
    record_property("faults_table", f"FAULTS | {case:<34} | " + " | ".join(f"{k} {v}" for k, v in numbers.items()))


def env_for(tmp_path, **extra):
    env = {**os.environ, RECORDS_ENV: str(tmp_path / "run"), **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HOOKS), str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return env


def sweep_command(kind, space, name, storage, *extra):
    return [sys.executable, "-m", "fashion_tune", "sweep", kind, "--space", str(space), "--name", name,
            "--storage", str(storage), *extra]


def resume_command(kind, name, storage, *extra):
    return [sys.executable, "-m", "fashion_tune", "sweep", kind, "--name", name, "--storage", str(storage),
            "--resume", *extra]


def wait_for(condition, deadline_s, process=None, what=""):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


class CheckpointWatch:
    """Counts every checkpoint folder the trials of an experiment ever wrote. Retention deletes old
    ones while the sweep runs, so the folders present at one moment would undercount (and could
    stall a wait for the n-th); result.json is no clock either: the driver writes it buffered."""

    def __init__(self, directory: Path):
        self.directory, self.seen = directory, set()

    def count(self) -> int:
        self.seen.update(str(p) for p in trial_files(self.directory, "checkpoint_*"))
        return len(self.seen)


def trial_files(directory: Path, pattern: str) -> list[Path]:
    """What matches `pattern` in the trial folders of a running sweep, which may move a folder into
    .discarded/ while we look (pathlib's glob then raises)."""
    found = []
    for trial in directory.glob("trial_*"):
        try:
            found.extend(trial.glob(pattern))
        except FileNotFoundError:
            pass
    return found


def run(command, env, timeout):
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def rows_per_trial(directory: Path) -> dict[str, list[dict]]:
    rows = {}
    for path in directory.glob("trial_*/result.json"):
        rows[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def study_of(directory: Path):
    return open_study(directory)  # the sweep's Optuna journal


def study_counts(directory: Path, results) -> dict[str, int]:
    """The study's trials by state; "LOST" counts those that ended after Tune's last snapshot before a
    kill (Tune ran others instead): real evaluations, kept in the journal and tagged with a Tune
    trial id that results.csv does not hold."""
    known, counts = set(results["trial_id"]), {}
    for trial in study_of(directory).trials:
        lost = trial.state.name in ("COMPLETE", "PRUNED") and trial.user_attrs.get(TUNE_TRIAL_ID) not in known
        key = "LOST" if lost else trial.state.name
        counts[key] = counts.get(key, 0) + 1
    return counts


def assert_study_matches_tune(directory: Path, results, since: float | None = None) -> dict[str, int]:
    """Every Tune trial is in the study once, COMPLETE or (stopped by ASHA) PRUNED, nothing left running.

    A trial a killed driver told before `since` (the final run's start) keeps that outcome ("KEPT"
    where it differs): Tune may run it again from its last snapshot, from scratch where that named no
    checkpoint, and end it otherwise; the journal holds what the first run did.
    """
    counts = study_counts(directory, results)
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, counts
    ended: dict[str, list] = {}
    for trial in study_of(directory).trials:
        if trial.state.name in ("COMPLETE", "PRUNED"):
            ended.setdefault(trial.user_attrs.get(TUNE_TRIAL_ID), []).append(trial)
    for row in results.itertuples():
        [entry] = ended.get(row.trial_id, [None])  # once each
        assert entry is not None, (row.trial_id, counts)
        if entry.state.name != ("PRUNED" if row.stop_reason == "asha" else "COMPLETE"):
            assert since is not None and entry.datetime_complete.timestamp() < since, (row, entry)
            counts["KEPT"] = counts.get("KEPT", 0) + 1
    for trial_id in set(ended) - set(results["trial_id"]):
        assert (directory / ".discarded" / f"trial_{trial_id}").is_dir(), trial_id
    return counts


# --- the driver killed again and again --------------------------------------------------------

KILL_SPACE = {
    "kind": "cnn", "metric": "val_loss", "mode": "min", "num_samples": 8, "max_concurrent_trials": 2, "seed": 3,
    "scheduler": {"max_t": 5, "grace_period": 2, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    # A tiny training set and a large learning rate: the validation loss turns up after a few
    # epochs, so later checkpoints are not the best and --keep-checkpoints 1 deletes some.
    "fixed": {"width": 8, "depth": 1, "batch_size": 25, "subset": 200, "val_subset": 100, "device": "cpu"},
    "params": {"lr": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
}


def kill_driver_at(command, env, watch: CheckpointWatch, new_checkpoints: int, log: Path):
    """Start the driver, SIGKILL it once its trials have written `new_checkpoints` checkpoints; returns
    (the snapshot on storage at that moment, the killed Ray session) or None if it finished first."""
    directory, already = watch.directory, watch.count()
    with log.open("a") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        if not wait_for(lambda: watch.count() >= already + new_checkpoints, 240, driver, "checkpoints"):
            return None
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    import pyarrow.fs

    snapshot = snapshot_on_storage(pyarrow.fs.LocalFileSystem(), str(directory)) or {}
    record = Path(env[RECORDS_ENV]) / "local-ray" / f"{driver.pid}.json"
    session = json.loads(record.read_text())["session_dir"] if record.is_file() else None
    return snapshot, session


def test_driver_sigkill_at_seeded_moments_then_resume(tmp_path, record_property):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(KILL_SPACE, sort_keys=False))
    storage, name = tmp_path / "results", "killed"
    directory = storage / name
    env = env_for(tmp_path)
    log = tmp_path / "driver.log"
    rng = random.Random(SEED)
    # Moments: each run is killed right after its 2nd-5th, then 4-7th, then 4-7th new checkpoint
    # (the sweep commits about 22 in all).
    moments = [rng.randint(2, 5), rng.randint(4, 7), rng.randint(4, 7)]
    first = sweep_command("cnn", space, name, storage, "--keep-checkpoints", "1", "--max-failures", "1")
    kills, snapshots, sessions, watch = 0, [], [], CheckpointWatch(directory)
    for i, moment in enumerate(moments):
        command = first if i == 0 else resume_command("cnn", name, storage)
        killed = kill_driver_at(command, env, watch, moment, log)
        if killed is None:
            break
        kills += 1
        snapshots.append(killed[0])
        sessions.append(killed[1])
    assert kills >= 3, log.read_text()[-3000:]
    leftovers_after_kill = len(session_processes(sessions[-1])) if sessions[-1] else 0

    final_start = time.time()
    result = run(resume_command("cnn", name, storage), env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for session in sessions:  # item 11: the next sweep stopped what the killed ones left
        assert session and not session_processes(session), session
    assert not list((Path(env[RECORDS_ENV]) / "local-ray").glob("*.json")), "a dead driver's record was kept"

    results = load_results(directory)
    assert len(results) == 8 and set(results["status"]) == {"TERMINATED"}, results[["trial_id", "status"]]
    rows = rows_per_trial(directory)
    rerun, restarted = 0, []
    for trial_dir, trial_rows in rows.items():
        if not trial_rows:
            continue
        epochs = [r["epoch"] for r in trial_rows]
        counts = {e: epochs.count(e) for e in set(epochs)}
        assert max(counts.values()) <= 1 + kills, (trial_dir, epochs)  # an epoch re-runs at most once per kill
        rerun += sum(c - 1 for c in counts.values())
        if counts.get(1, 0) > 1:
            restarted.append(trial_dir.removeprefix("trial_"))
    for trial_id in restarted:  # only a trial no snapshot had a checkpoint of may start over
        assert all(s.get(trial_id, ("", -1, ""))[1] < 0 for s in snapshots), trial_id
    kept = {Path(d).name: len(list(Path(d).glob("checkpoint_*"))) for d in results["trial_dir"]}
    assert all(1 <= n <= 2 for n in kept.values()), kept  # best 1 + the latest
    assert sum(results["epochs"]) > sum(kept.values()), "some checkpoints were pruned"
    best_trial(directory)  # the best checkpoint is there
    counts = assert_study_matches_tune(directory, results, since=final_start)
    # Trials a kill cut off before Tune's snapshot recorded them: the resumed sweep runs others instead.
    discarded = list((directory / ".discarded").glob("trial_*"))
    lost = sum(len(rows_per_trial(directory / ".discarded").get(d.name, [])) for d in discarded)
    table_line(record_property, "driver SIGKILL x3, resume each", faults=kills, expected=8, completed=len(results),
               errored=0, epochs_rerun=rerun, started_over=len(restarted),
               unrecorded_trials_redone=f"{len(discarded)} ({lost} epochs)",
               study=f"{counts.get('COMPLETE', 0)}C/{counts.get('PRUNED', 0)}P/{counts.get('FAIL', 0)}F"
                     f"/{counts.get('LOST', 0)}L (kept from a killed run: {counts.get('KEPT', 0)})",
               ray_procs_left_by_kill=leftovers_after_kill, stopped_by_next_sweep="yes")


# --- a trial that raises, restarted; a trial that diverges --------------------------------------

ERROR_SPACE = {
    "kind": "cnn", "metric": "val_acc", "mode": "max", "num_samples": 4, "max_concurrent_trials": 2, "seed": 1,
    "scheduler": {"max_t": 2, "grace_period": 2, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "fixed": {"width": 8, "depth": 1, "batch_size": 50, "subset": 200, "val_subset": 100, "device": "cpu",
              "grad_clip": 0.0},
    "params": {"lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e8}},
    # The second point raises once (tests/fault_hooks); the third makes the loss NaN at once.
    "points_to_evaluate": [{"lr": 2.0e-3}, {"lr": 1.5e-3}, {"lr": 1.0e8}, {"lr": 3.0e-3}],
}


def test_restart_errored_trial_and_a_diverged_trial(tmp_path, record_property):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(ERROR_SPACE, sort_keys=False))
    storage, name = tmp_path / "results", "errored"
    directory = storage / name
    env = env_for(tmp_path, FASHION_TUNE_TEST_RAISE=f"1.5e-3:{tmp_path / 'raised'}")

    first = run(sweep_command("cnn", space, name, storage, "--max-failures", "0"), env, timeout=400)
    assert first.returncode == 1 and (tmp_path / "raised").exists(), first.stdout[-3000:] + first.stderr[-3000:]
    before = load_results(directory)
    assert list(before["status"]).count("ERROR") == 1

    refused = run(resume_command("cnn", name, storage, "--max-failures", "2"), env, timeout=120)
    assert refused.returncode == 2 and "--max-failures cannot change on --resume" in refused.stderr

    result = run(resume_command("cnn", name, storage, "--restart-errored"), env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = load_results(directory)
    assert len(results) == 4 and set(results["status"]) == {"TERMINATED"}, results[["trial_id", "status"]]
    assert (directory / "results.csv").read_text().count("\n") == 5  # a header and 4 trials, no stale row
    counts = assert_study_matches_tune(directory, results)
    assert counts.get("FAIL", 0) == 1  # the failed attempt, beside the restarted trial's own record
    table_line(record_property, "--resume --restart-errored", faults=1, expected=4, completed=len(results),
               errored=int((results["status"] == "ERROR").sum()), epochs_rerun=0,
               study=f"{counts.get('COMPLETE', 0)}C/{counts.get('PRUNED', 0)}P/{counts.get('FAIL', 0)}F")

    diverged = results[results["config/lr"] == 1.0e8]
    assert len(diverged) == 1 and bool(diverged.iloc[0]["diverged"])
    assert best_trial(directory).trial_id != diverged.iloc[0]["trial_id"]
    values = {t.params["lr"]: t.value for t in study_of(directory).trials if t.state.name == "COMPLETE"}
    assert values[1.0e8] == min(values.values())  # told to Optuna as the worst
    table_line(record_property, "diverged (NaN) trial", faults=1, expected=4, completed=len(results), errored=0,
               ranked="last", sweep="finished")


# --- promotions -----------------------------------------------------------------------------------

def tiny_experiments(root: Path, lrs_epochs: dict[str, tuple[float, int]]) -> dict[str, Path]:
    """One experiment per name, each one trial trained in-process (as a sweep leaves it)."""
    from test_promote import tiny, write_experiment

    from fashion_tune.training.config import resolve_config
    from fashion_tune.training.loop import fit, load_splits

    splits = load_splits(resolve_config("cnn", tiny("cnn")))
    experiments = {}
    for name, (lr, epochs) in lrs_epochs.items():
        states = []
        fit("cnn", tiny("cnn", lr=lr, epochs=epochs), splits=splits,
            reporter=lambda metrics, state: states.append(pickle.loads(pickle.dumps(state))))
        experiments[name] = write_experiment(root / f"exp-{name}", "cnn", {name: states})
    return experiments


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    return tiny_experiments(tmp_path_factory.mktemp("promote"),
                            {"weak": (1e-4, 1), "good": (2e-3, 1), "best": (3e-3, 3)})


def promote_command(experiment, models, *extra):
    return [sys.executable, "-m", "fashion_tune", "promote", str(experiment), "--models-dir", str(models), *extra]


def check_models(models: Path) -> list[str]:
    """Champion and history: each loads and matches its manifest's SHA-256; returns their trial ids, champion first."""
    from fashion_tune.util.files import file_sha256
    from fashion_tune.training.loop import load_model
    from fashion_tune.store.promoted import load_promoted

    _, manifest, _ = load_promoted("cnn", models)
    ids = [manifest["trial_id"]]
    for entry in sorted((models / "cnn" / "history").glob("*")) if (models / "cnn" / "history").is_dir() else []:
        old = json.loads((entry / "manifest.json").read_text())
        assert file_sha256(entry / "model.pt") == old["files"]["model.pt"], entry
        load_model(entry / "model.pt", kind="cnn")
        ids.append(old["trial_id"])
    return ids


def test_two_promotions_at_once_with_a_champion_in_place(tmp_path, experiments, record_property):
    models = tmp_path / "best_models"
    env = env_for(tmp_path)
    assert run(promote_command(experiments["weak"], models), env, timeout=300).returncode == 0
    racers = [subprocess.Popen(promote_command(experiments[name], models), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT) for name in ("good", "best")]
    outputs = [p.communicate(timeout=300)[0] for p in racers]
    assert all(p.returncode == 0 for p in racers), outputs
    ids = check_models(models)
    assert ids[0] == "best" and "weak" in ids[1:], ids
    assert "good" in ids[1:] or "champion kept" in outputs[0], (ids, outputs[0])
    assert not list(models.glob(".tmp-*")) and not list(models.glob(".old-*"))
    table_line(record_property, "2 promotions at once + champion", faults=2, champion=ids[0], history=",".join(ids[1:]),
               champion_intact="yes")


PAUSE_POINTS = ["challenger", "champion", "metrics", "history", "swap", "renamed", "swapped"]


def test_sigkill_during_promotion_never_breaks_the_champion(tmp_path, experiments, record_property):
    models = tmp_path / "best_models"
    assert run(promote_command(experiments["good"], models), env_for(tmp_path), timeout=300).returncode == 0
    rng = random.Random(SEED)
    # Seeded moments: every point of a promotion once (tests/fault_hooks stops the process there), then
    # three more drawn at random; the process is killed once it has stopped at its point.
    points = rng.sample(PAUSE_POINTS, len(PAUSE_POINTS)) + rng.choices(PAUSE_POINTS, k=3)
    kills, intact = 0, 0
    for round_, point in enumerate(points):
        marker = tmp_path / f"paused-{round_}"
        env = env_for(tmp_path, FASHION_TUNE_TEST_PAUSE=f"{point}:{marker}")
        promoter = subprocess.Popen(promote_command(experiments["best" if round_ % 2 else "weak"], models, "--force"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        try:
            assert wait_for(marker.exists, 240, promoter, f"promotion to reach {point}"), point
            promoter.send_signal(signal.SIGKILL)
            promoter.wait(timeout=60)
            kills += 1
        finally:
            if promoter.poll() is None:
                promoter.kill()
        check_models(models)  # recovers under the lock, then loads and checks every model
        intact += 1
    final = run(promote_command(experiments["best"], models, "--force"), env_for(tmp_path), timeout=300)
    assert final.returncode == 0, final.stderr
    assert check_models(models)[0] == "best"
    assert not list(models.glob(".tmp-*")) and not list(models.glob(".old-*"))
    table_line(record_property, "SIGKILL during promote x10", faults=kills, points=",".join(points),
               champion_intact=f"{intact}/{len(points)}", next_promote="ok")


# --- the driver's memory over many trials ---------------------------------------------------------

MEMORY_SPACE = {
    "kind": "cnn", "metric": "val_acc", "mode": "max", "num_samples": 200, "max_concurrent_trials": 2, "seed": 0,
    "scheduler": {"max_t": 1, "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "fixed": {"width": 4, "depth": 1, "batch_size": 50, "subset": 50, "val_subset": 20, "device": "cpu"},
    "params": {"lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}},
}


def finished_trials(directory: Path) -> int:
    def done(path: Path) -> bool:
        try:
            return '"done": true' in path.read_text()
        except FileNotFoundError:  # moved into .discarded/ by a resumed sweep meanwhile
            return False

    return sum(1 for p in trial_files(directory, "result.json") if done(p))


RAY_CORE = ("gcs_server", "raylet", "ray::", "python")  # what Ray 2.60 cannot bind to loopback (README)


def listeners(process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket of `process` and its descendants."""
    found = []
    for p in [process, *process.children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return found


def test_driver_memory_over_200_trials(tmp_path, record_property):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(MEMORY_SPACE, sort_keys=False))
    storage, name = tmp_path / "results", "many"
    directory = storage / name
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(sweep_command("cnn", space, name, storage, "--keep-checkpoints", "1"), stdout=log,
                              stderr=subprocess.STDOUT, env=env_for(tmp_path), cwd=ROOT)
    rss = {}
    try:
        process = psutil.Process(driver.pid)
        for mark in (50, 200):
            wait_for(lambda: finished_trials(directory) >= mark, 600, driver, f"{mark} trials")
            rss[mark] = process.memory_info().rss / 2**20
            if mark == 50:
                sockets = listeners(process)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    assert len(load_results(directory)) == 200
    growth = (rss[200] - rss[50]) / 150
    table_line(record_property, "driver memory, 200 trivial trials", trials=200, rss_at_50=f"{rss[50]:.0f} MiB",
               rss_at_200=f"{rss[200]:.0f} MiB", growth_per_trial=f"{growth * 1024:.0f} KiB")
    assert growth < 0.5, rss  # MiB per trial: bounded, not the megabytes a leak per trial would cost

    # Item 13: what the local Ray listens on. The dashboard is off; nothing but Ray's own servers
    # listens beyond loopback (the README says which, and that token authentication guards them).
    exposed = sorted({(name, ip) for name, ip, _ in sockets if ip not in ("127.0.0.1", "::1")})
    assert all(name.startswith(RAY_CORE) for name, _ in exposed), exposed
    assert 8265 not in {port for _, _, port in sockets}, "no dashboard unless --dashboard"
    table_line(record_property, "listening sockets of the local Ray", total=len(sockets),
               loopback=len(sockets) - sum(1 for _, ip, _ in sockets if ip not in ("127.0.0.1", "::1")),
               beyond_loopback=", ".join(f"{n}@{ip}" for n, ip in exposed))


def test_a_running_driver_stays_alive_across_a_step_of_the_system_clock(tmp_path, monkeypatch):
    """A sweep stops the local Rays of dead drivers only: a live driver's record must not read as dead when
    the wall clock steps (NTP, a VM's resync), which moves every process's wall-clock start time."""
    import psutil

    from fashion_tune.search import cluster

    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "run"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cluster._record_local_ray(str(tmp_path / "session"))  # this process, as a sweep driver
        record = json.loads(cluster._record_path.read_text())
        assert cluster._alive(record)
        real = psutil.boot_time()
        monkeypatch.setattr(psutil, "boot_time", lambda: real + 30.0)  # the clock stepped 30 s
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: 0.0)
        assert cluster._alive(record), "a clock step made a live driver look dead"
        assert not cluster._alive({**record, "pid": sleeper.pid}), "another process with the same pid is not the driver"
        old = {key: value for key, value in record.items() if key not in ("start_ticks", "boot_id")}
        assert not cluster._alive(old), "a record without start ticks falls back to the wall-clock start"
    finally:
        cluster._forget_local_ray()
        sleeper.kill()
        sleeper.wait()
    sleeper_record = {**record, "pid": sleeper.pid}
    assert not cluster._alive(sleeper_record), "a dead pid is dead"
