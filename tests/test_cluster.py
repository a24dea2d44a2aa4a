"""Real multi-node Ray clusters on this machine, started with launch/local-cluster.

Every test stops what it started, on failure too. Trials are tiny CNNs (width 8, batch 50, 500
training images; 4000 where a trial must outlive the kill of its node), so the module takes
about 2.5 minutes on 2 CPU cores.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fashion_tune.data.datafiles import locate_data

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = ROOT / "launch" / "local-cluster"
SUBMIT = ROOT / "launch" / "submit"
# The scripts use the `ray` of the Python running these tests, whatever else is on PATH.
ENV = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"), "RAY": str(Path(sys.executable).parent / "ray")}
ENV.pop("RAY_ADDRESS", None)
ENV.pop("RAY_API_SERVER_ADDRESS", None)


class LocalCluster:
    """A cluster started by launch/local-cluster in its own short directory."""

    def __init__(self, workers=1, worker_cpus=1, head_cpus=1):
        # Ray's socket paths live under this directory and must stay short: not tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ftc-", dir="/tmp"))
        self.args = ["--workers", workers, "--worker-cpus", worker_cpus, "--head-cpus", head_cpus]

    def run(self, *args, timeout=300):
        return subprocess.run([str(LOCAL_CLUSTER), *map(str, args), "--dir", str(self.dir)], capture_output=True,
                              text=True, timeout=timeout, env=ENV, cwd=ROOT)

    def start(self):
        result = self.run("start", *self.args)
        assert result.returncode == 0, result.stdout + result.stderr
        self.address = (self.dir / "address").read_text().strip()
        self.dashboard = (self.dir / "dashboard").read_text().strip()
        return self

    def sessions(self):
        """{node name: session id} as recorded by the script."""
        lines = (self.dir / "nodes").read_text().split("\n") if (self.dir / "nodes").exists() else []
        return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}

    def stop(self):
        result = self.run("stop")
        if result.returncode != 0:  # leave nothing behind whatever happened
            self.run("stop", "--force")
        shutil.rmtree(self.dir, ignore_errors=True)
        return result


def session_processes(sid):
    """Live (non-zombie) processes of a session."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s, stat in (line.split() for line in out.splitlines()) if int(s) == sid and not stat.startswith("Z")]


def ray_nodes(address):
    """ray.nodes() as seen by a fresh driver (in a subprocess, so pytest itself never joins a cluster)."""
    code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'Resources')} for n in ray.nodes()]))")
    result = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def bystander(tmp_path):
    """A process named like a Ray daemon that the script did not start (`ray stop` would kill it)."""
    fake = tmp_path / "raylet"
    shutil.copy("/bin/sleep", fake)
    process = subprocess.Popen([str(fake), "600"])
    yield process
    process.kill()
    process.wait()


def test_local_cluster_starts_two_nodes_and_stops_exactly_its_processes(bystander):
    cluster = LocalCluster(workers=1, worker_cpus=1, head_cpus=1)
    try:
        cluster.start()
        sessions = cluster.sessions()
        assert set(sessions) == {"head", "worker-1"}
        processes = {name: session_processes(sid) for name, sid in sessions.items()}
        assert len(processes["head"]) >= 4 and len(processes["worker-1"]) >= 2, processes  # gcs, raylet, agents, ...

        nodes = [n for n in ray_nodes(cluster.address) if n["Alive"]]
        assert len(nodes) == 2
        assert sorted(n["Resources"].get("CPU") for n in nodes) == [1.0, 1.0]
        assert sum("worker-1" in n["Resources"] for n in nodes) == 1
        status = cluster.run("status")
        assert status.returncode == 0 and "Ray sees 2 alive node(s): 2 CPU" in status.stdout, status.stdout + status.stderr
        assert cluster.dashboard.startswith("http://127.0.0.1:")
        env = cluster.run("env").stdout.splitlines()
        assert env == [f"export RAY_ADDRESS={cluster.address}", f"export RAY_API_SERVER_ADDRESS={cluster.dashboard}",
                       "export RAY_AUTH_MODE=token"]

        result = cluster.stop()
        assert result.returncode == 0, result.stderr
        assert "stopped worker-1" in result.stdout and "stopped head" in result.stdout
        for name, sid in sessions.items():
            assert session_processes(sid) == [], name
        assert bystander.poll() is None  # someone else's "raylet" lives on
    finally:
        cluster.stop()


# --- sweeps on a cluster --------------------------------------------------------------------------


def write_space(path, num_samples=2, max_t=2, subset=500):
    """A tiny CNN space: one searched parameter, ASHA never stopping a trial before max_t.

    Each trial gets its own process (`reuse_actors: false`), so the first two trials take one node
    each whatever the timing: their placement groups (1 CPU, one per node free) are requested
    together at the start. With reuse, a trial waiting for its process on the worker moves to the
    head's process if that one is done first, which a busy machine makes likely.
    """
    space = {
        "kind": "cnn", "num_samples": num_samples, "max_concurrent_trials": 2, "seed": 0, "reuse_actors": False,
        "scheduler": {"max_t": max_t, "grace_period": max_t},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
        "fixed": {"width": 8, "depth": 1, "subset": subset, "val_subset": 200, "batch_size": 50},
        "params": {"lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2}},
    }
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_command(space, storage, name, *extra):
    return [sys.executable, "-m", "fashion_tune", "sweep", "cnn", "--space", str(space), "--storage", str(storage),
            "--name", name, "--data-dir", str(locate_data()), *map(str, extra)]


def node_ids(address):
    """{"head": id, "worker-1": id, ...} of the alive nodes (a worker carries its own `worker-N` resource)."""
    names = {}
    for node in ray_nodes(address):
        if node["Alive"]:
            custom = [r for r in node["Resources"] if r.startswith("worker-")]
            names[custom[0] if custom else "head"] = node["NodeID"]
    return names


def epoch_span(epochs):
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"


def result_rows(trial_dir):
    """A trial's reports in order, as Ray wrote them to result.json (restarts included)."""
    path = Path(trial_dir) / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, 1 CPU each, so two concurrent trials take one node each."""
    cluster = LocalCluster(workers=1, worker_cpus=1, head_cpus=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_sweep_with_address_runs_trials_on_both_nodes(cluster, tmp_path):
    space = write_space(tmp_path / "space.yaml", num_samples=4, max_t=2)
    result = subprocess.run(sweep_command(space, tmp_path / "results", "spread", "--address", cluster.address),
                            capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 trials (4 terminated)" in result.stdout
    assert f"attached to the Ray cluster at {cluster.address}: 2 nodes on 1 host, 2 CPU, 0 GPU" in result.stdout

    experiment = tmp_path / "results" / "spread"
    results = pd.read_csv(experiment / "results.csv")
    assert list(results["status"]) == ["TERMINATED"] * 4
    assert results["hostname"].notna().all() and results["pid"].notna().all()
    history = pd.read_csv(experiment / "history.csv")
    nodes = node_ids(cluster.address)
    assert set(history["node_id"]) == set(nodes.values())  # every epoch ran on a node of this cluster, both used
    assert json.loads((experiment / "sweep.json").read_text())["address"] == cluster.address
    assert len(node_ids(cluster.address)) == 2  # the sweep attached; it did not shut the cluster down


def test_a_driver_without_token_mode_is_told_how_to_connect(cluster):
    env = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"}
    code = "import sys; from fashion_tune.search.cluster import connect; connect(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, cluster.address], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot connect to the Ray cluster at" in last and "export RAY_AUTH_MODE=token" in last


def test_without_an_address_a_sweep_starts_its_own_ray_beside_a_cluster_that_ray_start_recorded(cluster):
    """`ray start` writes its address to Ray's current-cluster file, and a bare ray.init() attaches there.
    Without --address or $RAY_ADDRESS a sweep must start its own local Ray, as the README says."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ftr-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(cluster.address)  # what `ray start --head` leaves
        code = ("import ray; from fashion_tune.search.cluster import connect; "
                "print(connect(num_cpus=1), ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'])")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                env={**ENV, "RAY_TMPDIR": str(ray_tmp)})
        assert result.returncode == 0, result.stderr[-3000:]
        started, address, cpus = result.stdout.split()[-3:]
        assert started == "True" and address != cluster.address and float(cpus) == 1.0
        assert len(node_ids(cluster.address)) == 2  # the cluster is untouched
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_submit_runs_a_sweep_through_the_jobs_api(cluster, tmp_path):
    space = write_space(tmp_path / "space.yaml", num_samples=2, max_t=1)
    storage = tmp_path / "results"
    args = ["--space", space, "--storage", storage, "--name", "job", "--data-dir", locate_data()]
    result = subprocess.run([str(SUBMIT), "--dashboard", cluster.dashboard, "--id", f"ft-test-{os.getpid()}", "--",
                             "cnn", *map(str, args)], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    assert f"results: {storage}" in result.stdout
    results = pd.read_csv(storage / "job" / "results.csv")
    assert list(results["status"]) == ["TERMINATED"] * 2

    failing = subprocess.run([str(SUBMIT), "--dashboard", cluster.dashboard, "--", "cnn", "--space", "/no/such/space.yaml"],
                             capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert failing.returncode != 0
    assert "/no/such/space.yaml" in failing.stdout + failing.stderr


def test_a_trial_on_a_lost_worker_resumes_from_its_checkpoint_on_the_head(tmp_path):
    """Kill the worker node (SIGKILL to all its processes) while a trial trains there."""
    epochs = 10  # a few seconds each on 4000 images, so the trial is still running when the worker dies
    space = write_space(tmp_path / "space.yaml", num_samples=2, max_t=epochs, subset=4000)
    experiment = tmp_path / "results" / "lost"
    cluster = LocalCluster(workers=1, worker_cpus=1, head_cpus=1)
    sweep = None
    # The driver's output goes to a file: a pipe nobody reads while the trials run could fill up and
    # block the driver mid-sweep.
    log_path = tmp_path / "sweep.log"
    try:
        nodes = node_ids(cluster.start().address)
        started = time.time()
        with open(log_path, "w") as log:
            sweep = subprocess.Popen(sweep_command(space, tmp_path / "results", "lost", "--address", cluster.address,
                                                   "--max-failures", 2),
                                     stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path)
        # The driver writes each report to result.json in its staging folder on the head at once,
        # and copies that folder to the storage path only every 10 s or more (Tune's experiment
        # snapshot): a trial can run all its epochs between two copies. Watch the live one.
        def live_trial_dirs():
            return (cluster.dir / "head").glob("session_*/artifacts/*/lost/driver_artifacts/trial_*")

        victim = killed_at = None
        while victim is None and time.time() - started < 180 and sweep.poll() is None:
            for trial_dir in live_trial_dirs():
                rows = result_rows(trial_dir)
                if rows and rows[-1]["node_id"] == nodes["worker-1"] and rows[-1]["epoch"] < epochs:
                    victim, killed_at, on_worker = experiment / trial_dir.name, time.time(), rows
                    break
            time.sleep(0.2)
        seen = {d.name: [(r["epoch"], r["node_id"][:8]) for r in result_rows(d)] for d in live_trial_dirs()}
        assert victim is not None, (f"no trial reported from the worker node ({nodes['worker-1'][:8]}) in "
                                    f"{time.time() - started:.0f} s; sweep exit status {sweep.poll()}; reports seen "
                                    f"(epoch, node) {seen}; the sweep's output ends:\n{log_path.read_text()[-4000:]}")
        kill = cluster.run("stop", "--node", "worker-1", "--force")
        assert kill.returncode == 0, kill.stderr
        sweep.wait(timeout=300)
        finished = time.time()
        output = log_path.read_text()
        assert sweep.returncode == 0, output[-4000:]
        assert "2 trials (2 terminated)" in output
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        cluster.stop()

    results = pd.read_csv(experiment / "results.csv").set_index("trial_id")
    assert list(results["status"]) == ["TERMINATED"] * 2 and list(results["epochs"]) == [epochs] * 2
    rows = result_rows(victim)
    trial_id = victim.name.removeprefix("trial_")
    assert results.loc[trial_id, "num_failures"] == 1
    # Every epoch reported at most once, in order, and the retry went on from a checkpoint at least
    # as recent as the last report seen before the kill, not from epoch 0. Reports the driver had
    # not yet copied to the storage path when the node died are lost from result.json (Tune starts
    # the retry's result.json from the storage copy); their checkpoints are not: any missing epochs
    # lie just before the retry's first.
    seen = [r["epoch"] for r in on_worker]
    reported = [r["epoch"] for r in rows]
    missing = sorted(set(range(1, epochs + 1)) - set(reported))
    assert reported == sorted(set(reported)) and reported[-1] == epochs, reported
    before = [r["epoch"] for r in rows if r["node_id"] == nodes["worker-1"]]
    after = [r["epoch"] for r in rows if r["node_id"] == nodes["head"]]
    assert after and before + after == reported and set(before) <= set(seen) | {seen[-1] + 1}, (seen, before, after)
    assert after[0] > seen[-1] and missing == list(range(len(before) + 1, after[0])), (seen, before, after)

    # What the lost node cost this trial: its wall time beyond the training it kept (time_total_s
    # resumes from the checkpoint), part of it spent waiting for the head's only CPU to free up.
    start = on_worker[0]["timestamp"] - on_worker[0]["time_total_s"]
    overhead = rows[-1]["timestamp"] - start - rows[-1]["time_total_s"]
    other = next(d for d in experiment.glob("trial_*") if d != victim)
    waited = max(0.0, result_rows(other)[-1]["timestamp"] - killed_at)
    print(f"\nworker-loss: {len(results)}/2 trials TERMINATED; trial {trial_id} reported {epoch_span(seen)} on "
          f"the worker, was killed after it, and ran {epoch_span(after)} on the head from its checkpoint "
          f"({len(missing)} reports lost from result.json); retry overhead {overhead:.0f} s of wall time (of which "
          f"{waited:.0f} s waiting for the head's CPU); sweep {finished - started:.0f} s")
