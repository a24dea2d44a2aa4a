"""S3 storage for real: sweeps on a 2-node local Ray cluster write to a moto S3 server on 127.0.0.1.

One sweep is interrupted (Ctrl-C) and resumed (its Optuna journal fetched back from the bucket);
`analyze` and `promote` then read the bucket, its results.csv has the same columns as a sweep on
local storage, and the bucket's optuna.journal holds every trial. About 2 minutes on 2 cores.
"""

import io
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from fashion_tune.data.datafiles import locate_data
from fashion_tune.search.study import JOURNAL_FILE, TUNE_TRIAL_ID, open_study
from s3_server import BUCKET, s3_server
from test_dashboard import dashboard, get_json, shown_states
from test_cluster import ENV, LOCAL_CLUSTER, ROOT, LocalCluster, sweep_command, write_space
from tiny_sweeps import interrupt_when_ready

pytestmark = [pytest.mark.ray, pytest.mark.cluster]


class S3Cluster(LocalCluster):
    """launch/local-cluster with the S3 variables in every node's environment (trials write checkpoints)."""

    def __init__(self, env, **kwargs):
        super().__init__(**kwargs)
        self.env = env

    def run(self, *args, timeout=300):
        return subprocess.run([str(LOCAL_CLUSTER), *map(str, args), "--dir", str(self.dir)], capture_output=True,
                              text=True, timeout=timeout, env=self.env, cwd=ROOT)


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with s3_server() as env:
        yield {**ENV, **env}


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = S3Cluster(s3, workers=1, worker_cpus=1, head_cpus=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def s3_client(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def keys(env, prefix):
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def read_object(env, key):
    return s3_client(env).get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_sweep_to_s3_interrupted_resumed_analyzed_and_promoted(s3, cluster, tmp_path):
    s3 = {**s3, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the driver's journal cache, not ~/.cache
    space = write_space(tmp_path / "space.yaml", num_samples=4, max_t=3)
    storage = f"s3://{BUCKET}/sweeps"
    prefix = "sweeps/remote/"
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(sweep_command(space, storage, "remote", "--address", cluster.address),
                              stdout=log, stderr=subprocess.STDOUT, text=True, env=s3, cwd=tmp_path)
    rc = interrupt_when_ready(driver, lambda: any(k.endswith("/checkpoint.pt") for k in keys(s3, prefix)), log)
    first = (tmp_path / "first.log").read_text()
    assert rc == 130, first[-3000:]
    info = json.loads(read_object(s3, prefix + "sweep.json"))
    assert info["status"] == "interrupted", info
    assert prefix + JOURNAL_FILE in keys(s3, prefix), "the interrupted sweep left no journal in the bucket"
    journal = Path(info["journal"])
    assert journal.is_relative_to(tmp_path / "cache"), journal
    journal.unlink()  # as on another machine: --resume fetches the journal from the bucket
    interrupted = pd.read_csv(io.BytesIO(read_object(s3, prefix + "results.csv")))
    assert (interrupted["status"] != "TERMINATED").any(), interrupted[["trial_id", "status", "epochs"]]
    lines = first.splitlines()
    hint = lines.index(next(line for line in lines if "resume it with:" in line))
    resume = shlex.split(lines[hint + 1].strip())
    assert resume[:8] == ["fashion-tune", "sweep", "cnn", "--name", "remote", "--storage", storage, "--resume"]

    result = subprocess.run([sys.executable, "-m", "fashion_tune", *resume[1:]], capture_output=True, text=True,
                            timeout=400, env=s3, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 trials (4 terminated)" in result.stdout
    results = pd.read_csv(io.BytesIO(read_object(s3, prefix + "results.csv")))
    assert len(results) == 4 and set(results["status"]) == {"TERMINATED"}, results[["trial_id", "status"]]
    assert results["best_checkpoint"].str.startswith(f"{storage}/remote/trial_").all()
    assert set(results["stop_reason"]) == {"completed"}
    history = pd.read_parquet(io.BytesIO(read_object(s3, prefix + "history.parquet")))
    for trial_id, rows in history.groupby("trial_id"):  # an epoch re-run after the restore counts once
        assert list(rows["epoch"]) == [1, 2, 3], (trial_id, list(rows["epoch"]))
    info = json.loads(read_object(s3, prefix + "sweep.json"))
    assert info["status"] == "finished" and len(info["resumed"]) == 1 and info["trials"] == {"TERMINATED": 4}
    copy = tmp_path / "journal-copy"  # the bucket's journal holds the study of the whole sweep
    copy.mkdir()
    (copy / JOURNAL_FILE).write_bytes(read_object(s3, prefix + JOURNAL_FILE))
    study = open_study(copy)
    assert study.study_name == info["study_name"]
    ended = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in ended) == sorted(results["trial_id"]), \
        [(t.number, t.state.name, t.user_attrs) for t in study.trials]

    local = subprocess.run(sweep_command(write_space(tmp_path / "local.yaml", num_samples=2, max_t=1),
                                         tmp_path / "results", "local", "--address", cluster.address),
                           capture_output=True, text=True, timeout=300, env=s3, cwd=tmp_path)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert list(pd.read_csv(tmp_path / "results" / "local" / "results.csv").columns) == list(results.columns)

    report = subprocess.run([sys.executable, "-m", "fashion_tune", "analyze", f"{storage}/remote", "--top", "2"],
                            capture_output=True, text=True, timeout=300, env=s3, cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"top 2 of 4 trials by val_acc (max) in {storage}/remote:" in report.stdout
    summary = (tmp_path / "remote-analysis" / "summary.md").read_text()
    best = info["best"]
    assert f"## Best trial: {best['trial_id']}" in summary and best["checkpoint"] in summary
    assert (tmp_path / "remote-analysis" / "curves.png").stat().st_size > 5000

    assert "on the sweep's own study (its journal)" in summary, "importances read the bucket's journal"

    models = tmp_path / "best_models"
    promote = subprocess.run([sys.executable, "-m", "fashion_tune", "promote", f"{storage}/remote", "--kind", "cnn",
                              "--models-dir", models, "--data-dir", locate_data()],
                             capture_output=True, text=True, timeout=300, env=s3, cwd=tmp_path)
    assert promote.returncode == 0, promote.stdout[-3000:] + promote.stderr[-3000:]
    manifest = json.loads((models / "cnn" / "manifest.json").read_text())
    # the sweep by name and the checkpoint inside it, plus the bucket's storage URI (no machine's absolute paths)
    assert (manifest["experiment"], manifest["storage"]) == ("remote", storage)
    assert f"{storage}/remote/{manifest['checkpoint']}" == best["checkpoint"]
    assert manifest["trial_id"] == best["trial_id"]
    assert (models / "cnn" / "model.pt").is_file()
    check_dashboard_on_the_bucket(s3, f"{storage}/remote", journal, info["study_name"], results, tmp_path)


def check_dashboard_on_the_bucket(env, uri, journal, study_name, results, tmp_path):
    """`fashion-tune dashboard s3://...` where the sweep's own journal is not (another machine): it serves a
    copy of the bucket's journal and fetches it again, so a trial the bucket gains shows up."""
    import optuna

    away = journal.with_name("elsewhere")
    journal.rename(away)
    printed = []
    try:
        with dashboard(uri, "--refresh", "1", env=env, printed=printed) as (base, study_id):
            assert f"a copy of {uri}/{JOURNAL_FILE}, fetched again every 1 s" in "".join(printed), printed
            studies = get_json(f"{base}/api/studies")["study_summaries"]
            assert [s["study_name"] for s in studies] == [study_name]
            shown = shown_states(get_json(f"{base}/api/studies/{study_id}"))
            assert sorted(shown) == sorted(results["trial_id"]) and set(shown.values()) <= {"Complete", "Pruned"}

            copy = tmp_path / "appended" / JOURNAL_FILE  # the bucket's journal gains a trial, as from a running sweep
            copy.parent.mkdir()
            copy.write_bytes(read_object(env, uri.removeprefix(f"s3://{BUCKET}/") + "/" + JOURNAL_FILE))
            study = open_study(copy.parent)
            last = study.trials[-1]
            study.add_trial(optuna.trial.create_trial(params=last.params, distributions=last.distributions, value=0.5,
                                                      user_attrs={TUNE_TRIAL_ID: "appended"}))
            s3_client(env).put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/") + "/" + JOURNAL_FILE,
                                      Body=copy.read_bytes())
            deadline = time.time() + 60
            while time.time() < deadline and "appended" not in shown:
                time.sleep(0.5)
                shown = shown_states(get_json(f"{base}/api/studies/{study_id}"))
            assert shown.get("appended") == "Complete", shown
    finally:
        away.rename(journal)


def test_analyze_and_promote_say_when_the_bucket_holds_no_experiment(s3, tmp_path):
    for command in (["analyze", f"s3://{BUCKET}/nothing"], ["promote", f"s3://{BUCKET}/nothing", "--kind", "cnn"]):
        result = subprocess.run([sys.executable, "-m", "fashion_tune", *command], capture_output=True, text=True,
                                timeout=120, env=s3, cwd=tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert f"s3://{BUCKET}/nothing is not a fashion-tune experiment directory (no sweep.json)" in result.stderr
