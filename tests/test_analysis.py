"""Analysis of a finished and of an interrupted experiment: tables, PNGs, importances, summary."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.reports.analysis import analyze, best_trial, load_history, load_results, read_sweep_info
from tiny_sweeps import tiny_cnn_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return tiny_cnn_sweep(tmp_path_factory)


@pytest.mark.ray
def test_analyze_writes_plots_importances_and_summary(sweep, tmp_path):
    outcome, _ = sweep
    result = subprocess.run([sys.executable, "-m", "fashion_tune", "analyze", outcome.experiment_dir, "--top", "3",
                             "--out", tmp_path / "report"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "top 3 of 6 trials by val_acc (max)" in result.stdout
    assert "A new study created in memory" not in result.stdout + result.stderr  # the journal's study is read
    table = result.stdout.splitlines()[1:5]
    assert table[0].split()[:3] == ["trial_id", "status", "best_val_acc"] and "lr" in table[0]
    best = best_trial(outcome.experiment_dir)
    assert table[1].split()[0] == best.trial_id
    for name in ("curves.png", "params.png", "importance.png"):
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"## Best trial: {best.trial_id}" in summary
    assert "stopped early by ASHA:" in summary and "of 24 (num_samples 6 x max_t 4)" in summary
    importances = summary.split("## Hyperparameter importances")[1]
    assert all(f"| {name} |" in importances for name in ("lr", "dropout", "flip")), importances
    assert "on the sweep's own study (its journal)" in importances


@pytest.mark.ray
def test_importances_come_from_a_rebuilt_optuna_study(sweep):
    from fashion_tune.spaces.space import load_space
    from fashion_tune.reports.analysis import param_importances

    outcome, _ = sweep
    results = load_results(outcome.experiment_dir)
    space = load_space(Path(outcome.experiment_dir) / "space.yaml")
    importances = param_importances(results, space, "val_acc", "max")
    assert set(importances) == {"lr", "dropout", "flip"}
    assert sum(importances.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need at least 2"):
        param_importances(results.head(1), space, "val_acc", "max")


@pytest.mark.ray
def test_importances_come_from_the_sweeps_journal_else_from_a_rebuilt_study(sweep, tmp_path):
    from fashion_tune.search.study import JOURNAL_FILE, importance_study, open_study
    from fashion_tune.reports.analysis import study_importances

    outcome, _ = sweep
    study = open_study(outcome.experiment_dir)
    ranked = importance_study(study).trials
    assert len(ranked) == 6, "every finished or stopped trial of the sweep is ranked"
    importances = study_importances(study)
    assert set(importances) == {"lr", "dropout", "flip"} and sum(importances.values()) == pytest.approx(1.0)

    copy = tmp_path / "without-journal"  # a sweep from before the journal
    shutil.copytree(outcome.experiment_dir, copy)
    (copy / JOURNAL_FILE).unlink()
    info = json.loads((copy / "sweep.json").read_text())
    (copy / "sweep.json").write_text(json.dumps({**info, "journal": None}))
    analyze(copy, out=tmp_path / "report", echo=lambda line: None)
    summary = (tmp_path / "report" / "summary.md").read_text().split("## Hyperparameter importances")[1]
    assert "on a study rebuilt from results.csv" in summary
    assert all(f"| {name} |" in summary for name in ("lr", "dropout", "flip")), summary


@pytest.mark.ray
def test_analysis_reads_an_interrupted_experiment(sweep, tmp_path):
    """A copy made to look cut short: no exported results, Ray's state says RUNNING, a result line half-written."""
    outcome, _ = sweep
    best = best_trial(outcome.experiment_dir)
    copy = tmp_path / "cut"
    shutil.copytree(outcome.experiment_dir, copy)
    for stem in ("results", "history"):
        for suffix in (".csv", ".parquet"):
            (copy / f"{stem}{suffix}").unlink()
    info = read_sweep_info(copy)
    info.update(status="running", finished=None)
    (copy / "sweep.json").write_text(json.dumps(info))
    results = load_results(copy)
    other = results[results["trial_id"] != best.trial_id].sort_values("epochs").iloc[-1]
    result_file = copy / Path(other["trial_dir"]).name / "result.json"
    lines = result_file.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["done"]
    last["done"] = False  # still training: its next epoch is being written
    result_file.write_text("\n".join([*lines[:-1], json.dumps(last), lines[-1][:30]]))
    state_file = sorted(copy.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == other["trial_id"]:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))

    results = load_results(copy).set_index("trial_id")
    running = results.loc[other["trial_id"]]
    assert running["status"] == "RUNNING" and running["epochs"] == other["epochs"] and running["stop_reason"] == ""
    assert not running["stopped_early"]
    history = load_history(copy)
    assert len(history[history["trial_id"] == other["trial_id"]]) == other["epochs"]
    files = analyze(copy, top=3, echo=lambda line: None)
    assert set(files) >= {"curves", "params", "summary"}
    assert "sweep status: running" in files["summary"].read_text()
    pick = best_trial(copy)
    assert (pick.trial_id, pick.value) == (best.trial_id, best.value) and pick.checkpoint.is_relative_to(copy)


def test_analysis_refuses_what_is_not_an_experiment(tmp_path):
    with pytest.raises(FashionTuneError, match="is not a directory"):
        load_results(tmp_path / "missing")
    with pytest.raises(FashionTuneError, match=r"not a fashion-tune experiment directory \(no sweep.json\)"):
        analyze(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"kind": "cnn", "metric": "val_acc", "mode": "max",
                                                     "num_samples": 2, "max_t": 2}))
    with pytest.raises(FashionTuneError, match="no trial in .* has reported a finite val_acc yet"):
        best_trial(tmp_path)
    assert load_results(tmp_path).empty


@pytest.mark.ray
def test_best_trial_says_when_its_checkpoint_is_gone(sweep, tmp_path):
    outcome, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(outcome.experiment_dir, copy)
    pick = best_trial(copy)
    shutil.rmtree(pick.checkpoint)
    with pytest.raises(FashionTuneError, match=f"the best trial {pick.trial_id} reached val_acc=.* but its checkpoint .* is gone"):
        best_trial(copy)


@pytest.mark.parametrize("low, high", [(2e-3, 8e-3), (1e-4, 3e-3), (1e-5, 1e-1)])
def test_a_log_axis_is_labelled_however_short_its_range(low, high):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fashion_tune.reports.analysis import log_x_axis

    fig, ax = plt.subplots()
    ax.scatter([low, high], [0, 1])
    log_x_axis(ax, low, high)
    ax.set_xlim(low, high)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
    plt.close(fig)
    assert len(shown) >= 2, shown  # before: a range inside one decade had no label at all


def test_curves_name_the_best_trials_and_the_legend_markers_are_black(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from fashion_tune.reports import analysis

    history = pd.DataFrame([{"trial_id": t, "epoch": e, "val_acc": v * e}
                            for t, v in (("a", 0.1), ("b", 0.2), ("c", 0.15), ("d", 0.05)) for e in (1, 2, 3)])
    results = pd.DataFrame({"trial_id": list("abcd"), "best_val_acc": [0.3, 0.6, 0.45, 0.15],
                            "stop_reason": ["completed", "completed", "asha", "asha"]})
    legends = []
    original = Figure.savefig
    Figure.savefig = lambda fig, *a, **k: legends.append(fig.axes[0].get_legend())
    try:
        analysis._plot_curves(history, results, {"metric": "val_acc", "mode": "max", "max_t": 3}, tmp_path / "c.png")
    finally:
        Figure.savefig = original
    [legend] = legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == ["#1 b (0.6000)", "#2 c (0.4500)", "#3 a (0.3000)"], labels
    assert set(labels[3:]) == {"reached max_t", "stopped by ASHA"}
    markers = legend.legend_handles[3:]
    assert all(h.get_color() == "black" for h in markers)
