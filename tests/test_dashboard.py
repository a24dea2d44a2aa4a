"""`fashion-tune dashboard`: optuna-dashboard on a real sweep's journal, over HTTP and in headless Chromium.

The sweep is the shared tiny CNN sweep (tests/tiny_sweeps.py); the dashboard runs as the CLI does,
in a subprocess on a free port of 127.0.0.1, on a copy of the experiment (the live test appends
to its copy's journal, as a running sweep does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from fashion_tune.search.study import JOURNAL_FILE, TUNE_TRIAL_ID, open_study
from fashion_tune.reports.analysis import load_history, load_results, read_sweep_info
from fashion_tune.cli import main
from tiny_sweeps import tiny_cnn_sweep

pytestmark = pytest.mark.ray  # the tiny sweep starts Ray

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ENV = "FASHION_TUNE_CHROMIUM"  # a Chromium binary where it is not on PATH
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/(\d+)")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    outcome, _ = tiny_cnn_sweep(tmp_path_factory)
    return Path(outcome.experiment_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(experiment: Path | str, *options: str, env: dict[str, str] | None = None, printed: list | None = None):
    """`fashion-tune dashboard EXPERIMENT --port P [OPTIONS]` in a subprocess; yields (base URL, study id), then
    Ctrl-C. What it printed before the URL goes to `printed`."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "fashion_tune", "dashboard", str(experiment), "--port", str(port),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    printed = [] if printed is None else printed
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(URL.search(line) for line in printed):
            line = process.stdout.readline()
            if not line:
                break
            printed.append(line)
        found = next((URL.search(line) for line in printed if URL.search(line)), None)
        assert found, "".join(printed)
        assert int(found.group(1)) == port
        yield f"http://127.0.0.1:{port}", int(found.group(2))
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, "Ctrl-C stops the dashboard cleanly"


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def expected_states(experiment: Path) -> dict[str, str]:
    """Tune trial id -> the state the study must show: Pruned where ASHA stopped the trial, else Complete."""
    results = load_results(experiment)
    return {row.trial_id: "Pruned" if row.stop_reason == "asha" else "Complete" for row in results.itertuples()}


def shown_states(detail: dict) -> dict[str, str]:
    return {next(a["value"] for a in t["user_attrs"] if a["key"] == TUNE_TRIAL_ID): t["state"] for t in detail["trials"]}


@pytest.fixture(scope="module")
def served(sweep, tmp_path_factory):
    copy = tmp_path_factory.mktemp("dashboard") / "tiny-cnn"
    shutil.copytree(sweep, copy)
    with dashboard(copy) as (base, study_id):
        yield copy, base, study_id


def test_the_sweep_records_its_study_and_journal(sweep):
    info = read_sweep_info(sweep)
    assert info["journal"] == str(sweep / JOURNAL_FILE) and (sweep / JOURNAL_FILE).is_file()
    assert re.fullmatch(r"tiny-cnn-[0-9a-f]{8}", info["study_name"]), info["study_name"]
    assert open_study(sweep).study_name == info["study_name"]


def test_the_api_lists_the_study_with_every_trial_its_state_and_its_epochs(served):
    experiment, base, study_id = served
    info = read_sweep_info(experiment)
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in studies] == [(study_id, info["study_name"])]
    detail = get_json(f"{base}/api/studies/{study_id}")
    expected = expected_states(experiment)
    assert shown_states(detail) == expected and len(detail["trials"]) == len(expected) == 6
    assert {"Complete", "Pruned"} <= set(expected.values()), "the tiny sweep has trials ASHA stopped"
    history = load_history(experiment)
    epochs = history.groupby("trial_id")["epoch"].apply(sorted).to_dict()
    for trial in detail["trials"]:
        tune_id = next(a["value"] for a in trial["user_attrs"] if a["key"] == TUNE_TRIAL_ID)
        assert [v["step"] for v in trial["intermediate_values"]] == epochs[tune_id], "one value per epoch (ASHA's rungs)"
    assert detail["has_intermediate_values"] and detail["best_trials"]
    assert detail["objective_names"] == ["val_acc"], "the objective is named by its metric, not 'Objective 0'"


def test_a_trial_appended_to_the_journal_shows_without_a_restart(sweep, tmp_path):
    """A running sweep appends to the journal from another process; the dashboard reads it live."""
    import optuna

    copy = tmp_path / "tiny-cnn"
    shutil.copytree(sweep, copy)
    with dashboard(copy) as (base, study_id):
        before = len(get_json(f"{base}/api/studies/{study_id}")["trials"])
        study = open_study(copy)  # another process's handle on the same journal, as the sweep's driver has
        last = study.trials[-1]
        study.add_trial(optuna.trial.create_trial(params=last.params, distributions=last.distributions, value=0.5,
                                                  user_attrs={TUNE_TRIAL_ID: "appended"}))
        deadline, shown = time.time() + 30, {}
        while time.time() < deadline and "appended" not in shown:
            time.sleep(0.5)
            shown = shown_states(get_json(f"{base}/api/studies/{study_id}"))
        assert shown.get("appended") == "Complete" and len(shown) == before + 1


def chromium() -> str | None:
    for candidate in (os.environ.get(CHROMIUM_ENV), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def test_the_page_renders_the_trial_table_in_headless_chromium(served):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser test: Playwright is not installed (pip install -e '.[test]')")
    browser_path = chromium()
    if browser_path is None:
        pytest.skip(f"no browser test: no Chromium found (apt-get install chromium, or set ${CHROMIUM_ENV})")
    experiment, base, study_id = served
    expected = expected_states(experiment)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{base}/dashboard/studies/{study_id}/smartSelection")
            table = page.locator("table").filter(has_text="UserAttribute " + TUNE_TRIAL_ID).first
            table.wait_for(timeout=60_000)
            page.get_by_role("combobox").last.select_option(label="All")  # rows per page
            page.wait_for_function(f"document.querySelectorAll('table tbody tr').length >= {len(expected)}",
                                   timeout=30_000)
            header = [h.inner_text().split("\n")[0] for h in table.locator("thead th").all()]
            rows = [[c.inner_text() for c in r.locator("td").all()] for r in table.locator("tbody tr").all()]
            # The study's page names the objective by its metric (Optuna's default is "Objective 0").
            page.goto(f"{base}/dashboard/studies/{study_id}/analytics")
            page.get_by_text("EDF for val_acc").first.wait_for(timeout=60_000)
            analytics = page.inner_text("body")
        finally:
            browser.close()
    state, tune_id = header.index("State"), header.index("UserAttribute " + TUNE_TRIAL_ID)
    assert {row[tune_id]: row[state] for row in rows} == expected, (header, rows)
    assert "Objective 0" not in analytics, analytics
    assert [row[header.index("Number")] for row in rows] == [str(n) for n in range(len(expected))]


def test_a_missing_experiment_or_journal_is_a_one_line_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "none-such")]) == 2
    assert main(["dashboard", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert "none-such is not a directory; give a sweep's directory" in lines[0]
    assert f"has no Optuna journal ({tmp_path / JOURNAL_FILE})" in lines[1]


def test_a_port_in_use_is_a_one_line_error(sweep, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(sweep), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err
