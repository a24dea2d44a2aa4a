"""Connecting to Ray: attach to a running cluster, or start an embedded local one.

The sweep never shuts down a cluster it did not start: `connect` says whether it started one.
On a cluster of several hosts, every trial writes checkpoints to the experiment's storage, so
`check_storage` refuses a directory only this machine can see.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from fashion_tune.util.errors import ConfigError, FashionTuneError
from fashion_tune.util.files import is_uri
from fashion_tune.search.ray_compat import autoscaler_node_types

LOCAL_DASHBOARD_HOST = "127.0.0.1"
MOUNTS_FILE = "/proc/mounts"

# Filesystems every node of a cluster can mount: a directory on one of them is shared storage.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "ocfs2", "gfs2", "afs", "wekafs", "fuse.ceph", "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.blobfuse", "fuse.blobfuse2",
})


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_host: str = LOCAL_DASHBOARD_HOST,
    include_dashboard: bool | None = False,
) -> bool:
    """Attach to `address` (or $RAY_ADDRESS), else start a local Ray; True if this call started Ray.

    A local Ray's dashboard, when included, binds to 127.0.0.1 unless `dashboard_host` says otherwise.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        listening = False
        try:
            _check_listening(address)
            listening = True
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FashionTuneError(
                f"cannot connect to the Ray cluster at {address!r} ({first[:150]}); start it with `ray start --head` "
                f"or `launch/local-cluster start`, or drop --address to run locally{_auth_hint() if listening else ''}"
            ) from None
        return False
    # "local": a new Ray of our own. Left out, Ray attaches to the cluster that `ray start` last
    # recorded on this machine, and refuses num_cpus there.
    context = ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=include_dashboard,
        dashboard_host=dashboard_host,
        logging_level="WARNING",
        configure_logging=True,
    )
    _record_local_ray(context.address_info.get("session_dir"))
    return True


def _check_listening(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at HOST:PORT; Ray itself keeps retrying for many minutes."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # auto, ray://..., or something Ray will judge itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port}: {exc.strerror or exc}") from None


def _auth_hint() -> str:
    # Ray reads the token by itself only when it finds the cluster on its own; with an explicit
    # address a driver must be told that the cluster uses token authentication.
    if os.environ.get("RAY_AUTH_MODE"):
        return ""
    return "; if the cluster uses token authentication (launch/local-cluster does), export RAY_AUTH_MODE=token"


def disconnect() -> None:
    """Stop this driver's Ray: a local Ray it started ends; an attached cluster keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _forget_local_ray()


# --- what a killed driver leaves behind -------------------------------------------------------
#
# A local Ray's processes (GCS, raylet, dashboard and runtime-env agents, log monitor, workers)
# outlive a driver killed with SIGKILL. Each driver that starts one writes a record (its pid, its
# start, and the Ray session directory) into records_dir(); the next sweep stops the
# processes of every record whose driver is gone, and only those: a process belongs to a session
# if its command line or one of its open files lies in that session's directory.

RECORDS_ENV = "FASHION_TUNE_RUN_DIR"
_record_path: Path | None = None


def records_dir() -> Path:
    """Where local-Ray records live: $FASHION_TUNE_RUN_DIR, else a per-user directory in the temp dir."""
    base = os.environ.get(RECORDS_ENV) or Path(tempfile.gettempdir()) / f"fashion-tune-{os.getuid()}"
    return Path(base) / "local-ray"


def _psutil():
    """psutil, as Ray ships it (in ray/thirdparty_files, on the path once ray is imported)."""
    import ray  # noqa: F401

    import psutil

    return psutil


def _record_local_ray(session_dir: str | None) -> None:
    global _record_path
    psutil = _psutil()

    if not session_dir:
        return
    me = psutil.Process()
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    _record_path = directory / f"{me.pid}.json"
    _record_path.write_text(json.dumps({"pid": me.pid, "started": me.create_time(), "start_ticks": _start_ticks(me.pid),
                                        "boot_id": _boot_id(), "session_dir": session_dir}))


def _forget_local_ray() -> None:
    global _record_path
    if _record_path is not None:
        _record_path.unlink(missing_ok=True)
        _record_path = None


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux: field 22 of /proc/PID/stat); None elsewhere.

    Unlike its start as wall-clock time (psutil's create_time: boot time, which /proc/stat gives in
    whole seconds, plus the ticks), a step of the system clock (NTP, a VM's clock resync) cannot move it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after the command name start at field 3
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive(record: dict) -> bool:
    """Whether the driver a record names still runs: the same pid and the same start, not a reused pid."""
    psutil = _psutil()

    pid = int(record["pid"])
    if record.get("start_ticks") is not None and record.get("boot_id") and record["boot_id"] == _boot_id():
        return _start_ticks(pid) == record["start_ticks"]
    try:  # elsewhere (and for records of older versions) by wall-clock start, which a clock step can move
        return abs(psutil.Process(pid).create_time() - float(record["started"])) < 1.0
    except psutil.Error:
        return False


def session_processes(session_dir: str) -> list:
    """This user's processes that belong to a Ray session (by command line or open files)."""
    psutil = _psutil()

    session = str(session_dir)
    found = []
    for process in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if process.pid == os.getpid() or process.info["uids"].real != os.getuid():
                continue
            if session in " ".join(process.info["cmdline"] or []) or any(
                    f.path.startswith(session) for f in process.open_files()):
                found.append(process)
        except (psutil.Error, TypeError, AttributeError):
            continue
    return found


def stop_leftovers(echo=print) -> int:
    """Stop the local Rays whose sweep driver is gone; returns how many processes were stopped."""
    psutil = _psutil()

    stopped = 0
    for record_file in sorted(records_dir().glob("*.json")):
        try:
            record = json.loads(record_file.read_text())
            pid, session_dir, alive = int(record["pid"]), record["session_dir"], _alive(record)
        except (OSError, ValueError, KeyError, TypeError):
            record_file.unlink(missing_ok=True)
            continue
        if alive:
            continue  # a sweep still running
        processes = session_processes(session_dir)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, survivors = psutil.wait_procs(processes, timeout=5)
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(survivors, timeout=5)
        if processes:
            echo(f"stopped {len(processes)} processes of the local Ray {Path(session_dir).name}, left running by a "
                 f"sweep driver (pid {pid}) that was killed")
        stopped += len(processes)
        record_file.unlink(missing_ok=True)
    return stopped


# --- what the cluster looks like --------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One alive Ray node: where it runs and what it offers."""

    node_id: str
    host: str  # the node's IP address as Ray knows it; nodes on one machine share it
    cpus: float
    gpus: float
    is_head: bool


def cluster_nodes() -> list[Node]:
    """The alive nodes of the Ray this process is connected to, head first."""
    import ray

    nodes = [
        Node(
            node_id=n["NodeID"],
            host=n["NodeManagerAddress"],
            cpus=n["Resources"].get("CPU", 0.0),
            gpus=n["Resources"].get("GPU", 0.0),
            is_head="node:__internal_head__" in n["Resources"],
        )
        for n in ray.nodes()
        if n["Alive"]
    ]
    return sorted(nodes, key=lambda n: (not n.is_head, n.node_id))


def describe_cluster(nodes: list[Node] | None = None) -> str:
    """One line: how many nodes on how many hosts, and the CPUs and GPUs they offer."""
    nodes = cluster_nodes() if nodes is None else nodes
    hosts = {n.host for n in nodes}
    cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    return (f"{len(nodes)} node{'s' * (len(nodes) != 1)} on {len(hosts)} host{'s' * (len(hosts) != 1)}, "
            f"{cpus:g} CPU, {gpus:g} GPU")


def node_capacity(nodes: list[Node] | None = None) -> tuple[float, float, bool]:
    """The most CPUs and the most GPUs one node offers, and whether that is final.

    Counts the alive nodes and the node types Ray's autoscaler publishes it may add. It is final
    when the cluster publishes its node types; otherwise (a fixed cluster, or an autoscaler that
    does not publish them) a larger node may still join, so a trial that fits none is not proof
    of a mistake.
    """
    nodes = cluster_nodes() if nodes is None else nodes
    cpus = max((n.cpus for n in nodes), default=0.0)
    gpus = max((n.gpus for n in nodes), default=0.0)
    groups = autoscaler_node_types()
    for resources in groups or []:
        cpus, gpus = max(cpus, resources.get("CPU", 0.0)), max(gpus, resources.get("GPU", 0.0))
    return cpus, gpus, groups is not None


def current_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray); recorded per trial result."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


# --- shared storage -----------------------------------------------------------------------------


def filesystem_type(path: str | Path, mounts_file: str | Path = MOUNTS_FILE) -> str | None:
    """The type of the filesystem holding `path` (nfs4, ext4, ...), from the mount table; None if unknown."""
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return None  # no /proc (macOS): treat the path as node-local
    path = Path(os.path.abspath(os.path.expanduser(path)))
    best, best_type = None, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = Path(fields[1].replace("\\040", " "))
        if (path == mount_point or mount_point in path.parents) and (best is None or len(mount_point.parts) > len(best.parts)):
            best, best_type = mount_point, fields[2]
    return best_type


def check_storage(
    storage: str | Path,
    allow_node_local: bool = False,
    hosts: Collection[str] | None = None,
    mounts_file: str | Path = MOUNTS_FILE,
) -> str:
    """Where the experiment goes, as a URI or an absolute path; refuses a node-local path on a multi-host cluster.

    `hosts` are the addresses of the cluster's nodes and of this driver (default: asked from the
    connected Ray). A local path is fine when they are all one machine, when it lies on a network
    filesystem, or when `allow_node_local` says the user shares it by other means.
    """
    storage = str(storage)
    if is_uri(storage):
        return storage
    path = os.path.abspath(os.path.expanduser(storage.removeprefix("file://")))
    hosts = set(_cluster_hosts() if hosts is None else hosts)
    if len(hosts) <= 1 or allow_node_local:
        return path
    fs_type = filesystem_type(path, mounts_file)
    if fs_type in NETWORK_FILESYSTEMS:
        return path
    shown = ", ".join(sorted(hosts)[:3]) + (", ..." if len(hosts) > 3 else "")
    raise ConfigError(
        f"--storage {path} is on this machine's own disk ({fs_type or 'filesystem type unknown'}), but the Ray cluster "
        f"spans {len(hosts)} hosts ({shown}) whose trials must write checkpoints there; use a directory every node "
        "mounts (NFS, Lustre, ...) or a URI such as s3://BUCKET/sweeps or gs://BUCKET/sweeps, "
        "or pass --allow-local-storage if every node sees this path"
    )


def _cluster_hosts() -> set[str]:
    import ray

    hosts = {n.host for n in cluster_nodes()}
    hosts.add(ray.util.get_node_ip_address())  # the driver's own machine counts too
    return hosts
