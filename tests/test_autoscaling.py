"""Autoscaling for real, on this machine: Ray's fake multi-node provider adds worker nodes while a
sweep's trials wait for CPUs, and removes them once idle.

The autoscaler config is launch/cluster.yaml's, with the provider swapped for the fake one (nodes are
processes on this machine; the AWS GPU workers become 1-CPU workers) and a short idle timeout. The head
has no CPU, as in launch/cluster.yaml, so every trial must run on a node the autoscaler added. The
sweep is a replay (recorded curves, no training), so the module takes about a minute.

Ray 2.60's wheel lacks the file `provider: {type: fake_multinode}` reads its defaults from
(fake_multi_node/example.yaml), so the fake provider is named as an external one, which needs none; it
starts each worker with `gcs_address` from its config (default: port 6379 of the host's address).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_cluster import ENV, ray_nodes, session_processes
from test_replay import replay_space, write_space, write_table

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_ID = "f" * 51 + "00000"  # the fake provider's head node id; workers count up from ...00001
WORKERS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_config(port: int) -> dict:
    """launch/cluster.yaml with the fake provider: same node types, head without CPU, workers of 1 CPU."""
    config = yaml.safe_load((ROOT / "launch" / "cluster.yaml").read_text())
    head, worker = config["head_node_type"], "gpu_worker"
    assert config["available_node_types"][head]["resources"] == {"CPU": 0}  # the shape this test relies on
    types = {head: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
             worker: {"resources": {"CPU": 1, "object_store_memory": 100_000_000}, "node_config": {},
                      "min_workers": 0, "max_workers": WORKERS}}
    empty = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude", "rsync_filter")
    return {**{key: [] for key in empty}, "cluster_name": config["cluster_name"], "max_workers": WORKERS,
            "upscaling_speed": config["upscaling_speed"], "idle_timeout_minutes": 0.1,
            "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": f"127.0.0.1:{port}",
                         "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": head, "auth": {}, "docker": {}, "file_mounts": {},
            "file_mounts_sync_continuously": False}


@pytest.fixture
def autoscaling_cluster():
    """A CPU-less head whose autoscaler adds up to 3 fake 1-CPU workers; everything it started is stopped."""
    folder = Path(tempfile.mkdtemp(prefix="fta-", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    (folder / "autoscaler.json").write_text(json.dumps(fake_config(port)))
    env = {**ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60)
    log = open(folder / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "0",
                             "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--autoscaling-config", str(folder / "autoscaler.json"), "--temp-dir", str(folder / "ray")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in (folder / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (folder / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", folder
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_processes(head.pid):  # the fake workers the autoscaler started live in its session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def alive_workers(address) -> list[str]:
    return [n["NodeID"] for n in ray_nodes(address) if n["Alive"] and n["NodeID"] != FAKE_HEAD_ID]


def wait_for_no_workers(address, seconds: float) -> None:
    """Until the head is alone: idle workers go after idle_timeout_minutes (6 s)."""
    deadline = time.monotonic() + seconds
    while workers := alive_workers(address):
        assert time.monotonic() < deadline, f"workers still up after {seconds:.0f} s: {workers}"
        time.sleep(2)


def test_the_autoscaler_adds_nodes_for_waiting_trials_and_removes_them_when_idle(autoscaling_cluster, tmp_path):
    address, folder = autoscaling_cluster
    # The head alone, with no CPU: no trial can run yet. On a loaded machine the autoscaler once started a
    # worker while the head came up (the full suite beside a training run); an idle one goes within seconds.
    wait_for_no_workers(address, 120)
    table = write_table(tmp_path)
    space = write_space(tmp_path, replay_space(table, num_samples=6, max_concurrent_trials=WORKERS, time_scale=1.0,
                                               reuse_actors=False, resources_per_trial={"cpu": 1},
                                               scheduler={"type": "fifo", "max_t": 6}))
    result = subprocess.run([sys.executable, "-m", "fashion_tune", "sweep", "replay", "--space", str(space),
                             "--storage", str(tmp_path / "results"), "--name", "scaled", "--address", address],
                            capture_output=True, text=True, timeout=400, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 trials (6 terminated)" in result.stdout
    # The head has no CPU: every epoch ran on a worker the autoscaler added, and the trials spread over several.
    history = pd.read_csv(tmp_path / "results" / "scaled" / "history.csv")
    used = set(history["node_id"])
    assert FAKE_HEAD_ID not in used and len(used) >= 2, used
    monitor = (folder / "ray" / "session_latest" / "logs" / "monitor.log").read_text()
    assert "new nodes for launch" in monitor
    # Idle workers go (idle_timeout_minutes: 0.1); the head stays.
    wait_for_no_workers(address, 180)
    assert any(n["Alive"] and n["NodeID"] == FAKE_HEAD_ID for n in ray_nodes(address))
    assert used <= {n["NodeID"] for n in ray_nodes(address) if not n["Alive"]}  # the nodes it used were removed
