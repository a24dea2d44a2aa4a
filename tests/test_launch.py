"""launch/: cluster configs checked by Ray's own validator, the KubeRay RayJob, the scripts' argument
handling, and the shared-storage rule. No Ray runtime starts here."""

import copy
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fashion_tune.util.errors import ConfigError
from fashion_tune.util.files import is_uri
from fashion_tune.spaces.space import load_space
from fashion_tune.search.cluster import Node, check_storage, describe_cluster, filesystem_type, node_capacity
from fashion_tune.cli import build_parser, run_sweep_command

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
CLOUD, ONPREM = LAUNCH / "cluster.yaml", LAUNCH / "cluster-onprem.yaml"
RAYJOB = LAUNCH / "kuberay-rayjob.yaml"


def load(path):
    return yaml.safe_load(path.read_text())


def ray_validate(config):
    """What `ray up` does to a config before it launches anything: fill defaults, then check the schema."""
    validate_config(prepare_config(copy.deepcopy(config)))


def exports(config):
    """The `export NAME=value` lines the setup commands add to every node's ~/.bashrc."""
    text = " ".join(config["setup_commands"])
    return dict(re.findall(r"export (\w+)=([^'\s]+)", text))


# --- ray up configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CLOUD, ONPREM], ids=lambda p: p.name)
def test_cluster_config_passes_rays_own_validation(path):
    ray_validate(load(path))


@pytest.mark.parametrize("where", [(), ("auth",), ("docker",), ("available_node_types", "gpu_worker")])
def test_a_key_ray_does_not_know_is_caught(where):
    config = load(CLOUD)
    section = config
    for key in where:
        section = section[key]
    section["instance_typ"] = "m5.large"
    with pytest.raises(Exception, match="instance_typ"):
        ray_validate(config)


def test_onprem_config_rejects_an_unknown_key_and_node_types():
    config = load(ONPREM)
    config["worker_ip"] = ["198.51.100.13"]
    with pytest.raises(Exception, match="worker_ip"):
        ray_validate(config)
    assert "available_node_types" not in load(ONPREM)  # provider `local` derives its single node type
    assert load(ONPREM)["provider"]["type"] == "local"
    assert load(ONPREM)["provider"]["worker_ips"]


def test_cloud_cluster_has_a_cpu_head_and_autoscaling_gpu_workers():
    config = load(CLOUD)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs the driver; trials go to workers
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["node_config"]["InstanceType"].split(".")[0] in {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"].endswith("-gpu") and config["docker"]["head_image"].endswith("-cpu")


@pytest.mark.parametrize("path", [CLOUD, ONPREM], ids=lambda p: p.name)
def test_every_node_gets_the_project_data_storage_and_token(path):
    config = load(path)
    assert config["file_mounts"]["~/fashion-tune"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert ".gitignore" in config["rsync_filter"]  # no .venv, data or results in the upload
    setup = " ".join(config["setup_commands"])
    assert re.search(r"pip install -q -e (~/fashion-tune|\.)", setup)
    assert "fashion-tune data" in setup
    env = exports(config)
    storage = env["FASHION_TUNE_STORAGE"]
    assert is_uri(storage) if path == CLOUD else storage.startswith("/mnt/shared/")
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["FASHION_TUNE_DATA"].startswith("$HOME/fashion-mnist/")


@pytest.mark.parametrize("path", [CLOUD, ONPREM], ids=lambda p: p.name)
def test_dashboard_binds_to_loopback_and_nodes_use_tokens(path):
    config = load(path)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for command in [head, " ".join(config["worker_start_ray_commands"])]:
        assert "RAY_AUTH_MODE=token ray start" in command


# --- KubeRay ----------------------------------------------------------------------------------------


def pod_groups(job):
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_rayjob_has_the_fields_kuberay_requires():
    job = load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert spec["entrypoint"].strip() and spec["shutdownAfterJobFinishes"] is True
    for group in pod_groups(job):
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # the CRD wants strings
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_entrypoint_is_a_real_sweep_command():
    argv = shlex.split(load(RAYJOB)["spec"]["entrypoint"])
    assert argv[:2] == ["fashion-tune", "sweep"]
    args = build_parser().parse_args(argv[1:])  # the CLI's own parser: exits on an unknown flag
    assert args.func is run_sweep_command
    image_copy = Path("/home/ray/fashion-tune")  # where launch/Dockerfile puts this repository
    assert f"COPY --chown=ray:users . {image_copy}" in (LAUNCH / "Dockerfile").read_text()
    space = load_space(ROOT / args.space.relative_to(image_copy), kind=args.kind)
    assert space.gpu > 0  # trials ask for the GPU workers the RayJob scales up
    worker = load(RAYJOB)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    trials_per_pod = min(float(limits["cpu"]) // space.cpu, float(limits["nvidia.com/gpu"]) // space.gpu)
    assert trials_per_pod == 1 / space.gpu  # the CPUs do not leave part of the GPU idle


def test_rayjob_storage_is_mounted_on_every_pod():
    job = load(RAYJOB)
    argv = shlex.split(job["spec"]["entrypoint"])
    storage = argv[argv.index("--storage") + 1]
    for group in pod_groups(job):
        pod = group["template"]["spec"]
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert any(storage.startswith(m["mountPath"] + "/") and m["name"] in claims for m in mounts), group


def test_ray_versions_agree_across_launch_files():
    version = load(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"]
    images = [load(CLOUD)["docker"]["image"], load(CLOUD)["docker"]["head_image"]]
    dockerfile_from = re.search(r"^FROM (\S+)", (LAUNCH / "Dockerfile").read_text(), re.M).group(1)
    for image in [*images, dockerfile_from]:
        assert image.startswith(f"rayproject/ray:{version}-"), image
    pod_images = {c["image"] for g in pod_groups(load(RAYJOB)) for c in g["template"]["spec"]["containers"]}
    assert len(pod_images) == 1


# --- scripts ------------------------------------------------------------------------------------


def script(name, *args, env=None):
    return subprocess.run([str(LAUNCH / name), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


@pytest.mark.parametrize("name", ["local-cluster", "submit"])
def test_scripts_parse_and_explain_themselves(name):
    assert subprocess.run(["bash", "-n", str(LAUNCH / name)]).returncode == 0
    result = script(name, "--help")
    assert result.returncode == 0 and f"launch/{name}" in result.stdout


def test_local_cluster_rejects_bad_arguments(tmp_path):
    result = script("local-cluster", "start", "--workers", "two")
    assert result.returncode == 2 and "expected a whole number, got 'two'" in result.stderr
    result = script("local-cluster", "start", "--nodes", "2")
    assert result.returncode == 2 and "unknown option '--nodes'" in result.stderr
    long_dir = tmp_path / ("x" * 50)
    result = script("local-cluster", "start", "--dir", long_dir)
    assert result.returncode == 2 and "at most 32" in result.stderr
    assert not long_dir.exists()
    result = script("local-cluster", "stop", "--dir", tmp_path / "none")
    assert result.returncode == 0 and "nothing to stop" in result.stdout


def test_submit_refuses_a_relative_storage_before_contacting_anyone():
    result = script("submit", "--dashboard", "http://127.0.0.1:9", "--", "vae", "--storage", "ray_results")
    assert result.returncode == 2
    assert "'ray_results' is relative" in result.stderr and "s3://" in result.stderr
    result = script("submit", "--dashboard", "127.0.0.1:8265", "--", "vae")
    assert result.returncode == 2 and "http://" in result.stderr


# --- shared storage ---------------------------------------------------------------------------------

TWO_HOSTS = ["10.0.0.1", "10.0.0.2"]


def test_a_uri_is_shared_storage_anywhere():
    assert check_storage("s3://bucket/sweeps", hosts=TWO_HOSTS) == "s3://bucket/sweeps"
    assert check_storage("gs://bucket/sweeps", hosts=TWO_HOSTS) == "gs://bucket/sweeps"
    assert is_uri("abfs://container@account/x") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")


def test_a_local_path_is_fine_on_one_host(tmp_path):
    assert check_storage(tmp_path / "sweeps", hosts=["10.0.0.1"]) == str(tmp_path / "sweeps")
    assert check_storage("file://" + str(tmp_path), hosts=["10.0.0.1"]) == str(tmp_path)
    assert Path(check_storage("relative/dir", hosts=[])).is_absolute()


def test_a_node_local_path_is_refused_on_several_hosts_with_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        check_storage(tmp_path, hosts=TWO_HOSTS)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in [str(tmp_path), "2 hosts", "10.0.0.1, 10.0.0.2", "s3://", "--allow-local-storage"]:
        assert fragment in message, fragment
    assert check_storage(tmp_path, hosts=TWO_HOSTS, allow_node_local=True) == str(tmp_path)


def test_a_path_on_a_network_filesystem_is_shared(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "nfs.example:/export /mnt/shared nfs4 rw,relatime 0 0\n"
                      "tmpfs /mnt/shared/scratch tmpfs rw 0 0\n")
    assert filesystem_type("/mnt/shared/fashion-tune/run", mounts) == "nfs4"
    assert filesystem_type("/mnt/shared/scratch/x", mounts) == "tmpfs"  # the deepest mount point wins
    assert filesystem_type("/home/me", mounts) == "ext4"
    assert filesystem_type("/x", tmp_path / "no-such-file") is None
    assert check_storage("/mnt/shared/fashion-tune", hosts=TWO_HOSTS, mounts_file=mounts) == "/mnt/shared/fashion-tune"
    with pytest.raises(ConfigError, match="tmpfs"):
        check_storage("/mnt/shared/scratch/x", hosts=TWO_HOSTS, mounts_file=mounts)


def test_describe_cluster_counts_nodes_hosts_and_devices():
    nodes = [Node("a", "10.0.0.1", 0.0, 0.0, True), Node("b", "10.0.0.2", 4.0, 1.0, False),
             Node("c", "10.0.0.2", 4.0, 1.0, False)]
    assert describe_cluster(nodes) == "3 nodes on 2 hosts, 8 CPU, 2 GPU"
    assert describe_cluster(nodes[:1]) == "1 node on 1 host, 0 CPU, 0 GPU"


def test_node_capacity_is_the_largest_node_and_not_final_without_autoscaler_limits():
    nodes = [Node("a", "10.0.0.1", 0.0, 0.0, True), Node("b", "10.0.0.2", 8.0, 1.0, False),
             Node("c", "10.0.0.3", 16.0, 0.0, False)]
    assert node_capacity(nodes) == (16.0, 1.0, False)  # no Ray connected here: no autoscaler limits known
    assert node_capacity([]) == (0.0, 0.0, False)


def test_connecting_to_an_address_where_nothing_listens_fails_at_once():
    import socket
    import time

    from fashion_tune.util.errors import FashionTuneError
    from fashion_tune.search.cluster import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    started = time.time()
    with pytest.raises(FashionTuneError, match=f"nothing answers at 127.0.0.1:{port}") as caught:
        connect(f"127.0.0.1:{port}")
    assert time.time() - started < 10  # Ray alone would retry for many minutes
    assert "RAY_AUTH_MODE" not in str(caught.value) and "launch/local-cluster start" in str(caught.value)


@pytest.mark.parametrize("final", [True, False])
def test_a_trial_too_big_for_every_node_is_refused_only_when_no_larger_node_can_join(monkeypatch, final):
    from fashion_tune.spaces.space import parse_space
    from fashion_tune.search import cluster
    from fashion_tune.search import sweep

    space = parse_space({"kind": "cnn", "num_samples": 4, "scheduler": {"max_t": 2},
                         "resources_per_trial": {"cpu": 2, "gpu": 0.25},
                         "params": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}}, "space.yaml")
    monkeypatch.setattr(cluster, "node_capacity", lambda: (0.0, 0.0, final))  # a head with CPU 0, no workers yet
    notes = []
    if final:
        with pytest.raises(ConfigError, match="can never be placed"):
            sweep._check_cluster_resources(space, "127.0.0.1:6379", notes.append)
    else:
        sweep._check_cluster_resources(space, "127.0.0.1:6379", notes.append)
        assert len(notes) == 1 and "2 CPU and 0.25 GPU" in notes[0] and "autoscaler" in notes[0]
    monkeypatch.setattr(cluster, "node_capacity", lambda: (8.0, 1.0, final))
    sweep._check_cluster_resources(space, "127.0.0.1:6379", notes.append)  # fits: silent
    assert len(notes) == (0 if final else 1)


def test_storage_defaults_to_the_clusters_setting(monkeypatch, tmp_path):
    from fashion_tune.search.sweep import storage_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASHION_TUNE_STORAGE", raising=False)
    assert storage_root(None) == str(tmp_path / "ray_results")
    monkeypatch.setenv("FASHION_TUNE_STORAGE", "s3://bucket/fashion-tune/")
    assert storage_root(None) == "s3://bucket/fashion-tune"
    assert storage_root("/mnt/shared/x") == "/mnt/shared/x"  # --storage wins


# --- documented commands ------------------------------------------------------------------------

DOCUMENTED = [LAUNCH / "submit", CLOUD, ONPREM, LAUNCH / "README.md", ROOT / "README.md"]
_COMMAND = re.compile(r"(?:launch/submit(?: --?[\w-]+(?: \S+)?)*? --|fashion-tune sweep) ([^`#|\n\"(]+)")


def documented_sweep_commands():
    """Every `launch/submit -- ARGS` and `fashion-tune sweep ARGS` the launch files and READMEs show,
    without placeholders (`...`, `ARGS`, shell syntax)."""
    found = []
    for path in DOCUMENTED:
        for match in _COMMAND.finditer(path.read_text()):
            args = match.group(1).strip()
            if not args or any(s in args for s in ("...", "ARGS", "$", ")", "--help")):
                continue
            found.append(pytest.param(shlex.split(args), id=f"{path.name}: {args[:60]}"))
    return found


@pytest.mark.parametrize("argv", documented_sweep_commands())
def test_documented_sweep_commands_parse_with_the_real_cli(argv):
    args = build_parser().parse_args(["sweep", *argv])  # exits (SystemExit) on a flag the CLI rejects
    assert args.func is run_sweep_command


def test_the_documented_commands_are_found():
    ids = [p.id for p in documented_sweep_commands()]
    assert any(i.startswith("submit:") for i in ids) and any(i.startswith("cluster.yaml:") for i in ids)
    assert any(i.startswith("cluster-onprem.yaml:") for i in ids)
