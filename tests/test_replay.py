"""Replay sweeps: recorded learning curves replayed through the real engine (fashion_tune/search/replay.py).

Most tests use a small synthetic table written here; `tests/data/replay_runs_sample.jsonl` holds three
lines of the real recording (benchmarks/record_curves.py), to check the format the recorder writes.
"""

import json
import math
from pathlib import Path

import pytest
import yaml

from fashion_tune.cli import main
from fashion_tune.search.replay import check_space, load_table, replay_curve, space_params
from fashion_tune.spaces.space import load_space
from fashion_tune.util.errors import ConfigError
from tiny_sweeps import no_ray_left_running  # noqa: F401  (autouse: Ray shut down after each test)

SAMPLE = Path(__file__).parent / "data" / "replay_runs_sample.jsonl"
EPOCHS = 6
LRS, WIDTHS, DROPOUTS = (1e-4, 1e-3, 1e-2, 1e-1), (8, 16), (0.1, 0.5)


def synthetic_runs() -> list[dict]:
    """A grid of configurations whose final accuracy peaks at lr 1e-2; lr 1e-1 diverges at epoch 2."""
    runs, config_id = [], 0
    for lr in LRS:
        for width in WIDTHS:
            for dropout in DROPOUTS:
                final = {1e-4: 0.3, 1e-3: 0.6, 1e-2: 0.85, 1e-1: 0.1}[lr] + width / 1000 - dropout / 100
                epochs = []
                for epoch in range(1, EPOCHS + 1):
                    diverged = lr == 1e-1 and epoch == 2
                    epochs.append({"epoch": epoch, "val_acc": None if diverged else round(final * epoch / EPOCHS, 4),
                                   "val_loss": None if diverged else round(2.0 - final * epoch / EPOCHS, 4),
                                   "train_loss": None if diverged else 1.5, "epoch_time_s": width / 8,
                                   "diverged": diverged})
                    if diverged:
                        break
                runs.append({"config_id": config_id, "seed": 0, "params": {"lr": lr, "width": width, "dropout": dropout},
                             "epochs": epochs, "params_count": 1000 * width, "wall_s": 1.0})
                config_id += 1
    runs.append({**runs[5], "seed": 1})  # a repeat: not replayed (the lowest seed is)
    return runs


def write_table(folder: Path, runs=None) -> Path:
    path = folder / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (runs or synthetic_runs())))
    return path


def replay_space(table_path: Path, **changes) -> dict:
    space = {
        "kind": "replay", "table": str(table_path), "time_scale": 0, "metric": "val_acc", "mode": "max",
        "num_samples": 16, "max_concurrent_trials": 4, "seed": 0,
        "scheduler": {"type": "asha", "max_t": EPOCHS, "grace_period": 1, "reduction_factor": 3},
        "resources_per_trial": {"cpu": 0.1},
        "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                   "width": {"type": "choice", "values": [8, 16]},
                   "dropout": {"type": "uniform", "low": 0.0, "high": 0.6}},
    }
    space.update(changes)
    return space


def write_space(folder: Path, data: dict) -> Path:
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def loaded(folder: Path, **changes):
    space = load_space(write_space(folder, replay_space(write_table(folder), **changes)))
    return space, check_space(space)


# --- the table and the nearest configuration ----------------------------------------------------


def test_a_recorded_config_replays_its_own_curve_and_another_the_nearest_one(tmp_path):
    space, table = loaded(tmp_path)
    params = space_params(space)
    run, distance = table.nearest({"lr": 1e-2, "width": 16, "dropout": 0.5}, params)
    assert (run.params, run.seed, distance) == ({"lr": 1e-2, "width": 16, "dropout": 0.5}, 0, 0.0)
    # lr 4e-3 is nearer 1e-2 than 1e-3 in log space (not in linear space); the choice must match exactly.
    run, distance = table.nearest({"lr": 4e-3, "width": 8, "dropout": 0.2}, params)
    assert run.params == {"lr": 1e-2, "width": 8, "dropout": 0.1} and 0 < distance < 1
    rows = replay_curve({"lr": 1e-2, "width": 16, "dropout": 0.5, "epochs": 4}, table, params)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["val_acc"] for r in rows] == [round(0.861 * e / EPOCHS, 4) for e in range(1, 5)]
    assert [r["sim_time_s"] for r in rows] == [2.0, 4.0, 6.0, 8.0] and rows[0]["params"] == 16000
    # a diverged recording ends there, as training does
    rows = replay_curve({"lr": 0.09, "width": 8, "dropout": 0.1, "epochs": EPOCHS}, table, params)
    assert [(r["epoch"], r["val_acc"], r["diverged"]) for r in rows] == [(1, round(0.107 / EPOCHS, 4), False),
                                                                        (2, None, True)]


def test_lookup_interpolate_blends_the_nearest_recorded_curves_by_inverse_squared_distance(tmp_path):
    space, table = loaded(tmp_path, lookup="interpolate")
    params = space_params(space)
    on_table = {"lr": 1e-2, "width": 16, "dropout": 0.5, "epochs": EPOCHS}
    assert replay_curve(on_table, table, params, lookup="interpolate") == replay_curve(on_table, table, params)
    # lr halfway (in log space) between 1e-3 and 1e-2, dropout 0.5, width 16: the four nearest with width 16
    # are lr 1e-3 and 1e-2 (distance 1/6 of the 3 decades each) and lr 1e-4 and 1e-1 (1/2), all at dropout
    # 0.5. lr 1e-1 diverged at epoch 2: from there the blend averages the three that recorded a value.
    between = {"lr": math.sqrt(1e-3 * 1e-2), "width": 16, "dropout": 0.5, "epochs": EPOCHS}
    near, far = 1 / (1 / 6) ** 2, 1 / (1 / 2) ** 2
    final = (near * (0.611 + 0.861) + far * 0.311) / (2 * near + far)
    rows = replay_curve(between, table, params, lookup="interpolate")
    assert len(rows) == EPOCHS and rows[-1]["val_acc"] == pytest.approx(final, abs=1e-4)
    assert rows[-1]["replay_val_acc"] == rows[-1]["val_acc"]  # one repeat only: no seed noise to add
    assert rows[-1]["replay_config_id"] == replay_curve(between, table, params)[-1]["replay_config_id"]  # the nearest
    assert replay_curve(between, table, params)[-1]["val_acc"] in (0.611, 0.861)  # nearest: one of the two curves
    # next to a configuration that diverged at epoch 2, the blend diverges there too, with no metrics
    rows = replay_curve({"lr": 0.09, "width": 8, "dropout": 0.1, "epochs": EPOCHS}, table, params, lookup="interpolate")
    assert [(r["epoch"], r["diverged"]) for r in rows] == [(1, False), (2, True)] and rows[-1]["val_acc"] is None
    assert 0 < rows[0]["val_acc"] < 0.107 / EPOCHS + 0.01


def test_a_real_recording_reads_the_same_from_runs_jsonl_and_curves_csv(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_curves", Path(__file__).parent.parent / "benchmarks" / "record_curves.py")
    record_curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record_curves)
    jsonl = load_table(SAMPLE)
    (tmp_path / "runs.jsonl").write_text(SAMPLE.read_text())
    csv = load_table(record_curves.write_table(tmp_path, space=None))
    assert jsonl.param_names == csv.param_names == ("batch_size", "depth", "dropout", "lr", "weight_decay", "width")
    space = load_space(Path(__file__).parent.parent / "search_spaces" / "replay_cnn.yaml")
    params = space_params(space)
    for line in SAMPLE.read_text().splitlines():
        recorded = json.loads(line)
        config = {**recorded["params"], "epochs": 16}
        for table in (jsonl, csv):
            rows = replay_curve(config, table, params)
            assert rows[0]["replay_config_id"] == recorded["config_id"] and rows[0]["replay_distance"] == 0
            assert [r["val_acc"] for r in rows] == [e["val_acc"] for e in recorded["epochs"]]
            assert [r["epoch_time_s"] for r in rows] == pytest.approx([e["epoch_time_s"] for e in recorded["epochs"]])


def test_the_noise_comes_from_the_repeated_seeds(tmp_path):
    _, table = loaded(tmp_path)
    assert len(table.configs) == len(LRS) * len(WIDTHS) * len(DROPOUTS) and len(table.runs) == len(table.configs) + 1
    assert table.noise()["pairs"] == 1
    assert table.best() == pytest.approx(0.85 + 0.016 - 0.001)


def test_neighbours_off_the_table_get_recorded_seed_noise_and_recorded_points_none(tmp_path):
    """With NOISE_PAIRS repeated configurations, two different configs answered by the same recorded one
    replay different curves (no ASHA tie): the recorded curve plus z x the robust per-epoch seed sd, one z per
    config; the same config replays the same; a config on a recorded point replays it exactly; one repeated
    configuration's wild swing does not set the noise. With fewer repeats: no noise."""
    from fashion_tune.search.replay import NOISE_PAIRS

    runs = [r for r in synthetic_runs() if r["seed"] == 0]
    repeats = []
    for i, run in enumerate(r for r in runs if r["params"]["lr"] != 1e-1):  # 12 finite configurations
        swing = 0.3 if i == 0 else 0.01 * ((i % 3) - 1)  # seeds differ by -0.01, 0, +0.01 (x epoch / EPOCHS); one by 0.3
        epochs = [{**e, "val_acc": round(e["val_acc"] + swing * e["epoch"] / EPOCHS, 4),
                   "val_loss": round(e["val_loss"] - 0.02 * ((i % 3) - 1), 4)} for e in run["epochs"]]
        repeats.append({**run, "seed": 1, "epochs": epochs})
    assert len(repeats) >= NOISE_PAIRS
    path = write_table(tmp_path, runs + repeats)
    space = load_space(write_space(tmp_path, replay_space(path)))
    table, params = check_space(space), space_params(space)
    sd = 1.4826 * 0.01 / math.sqrt(2)  # at the last epoch: the median |b - a| is 0.01, the 0.3 swing is an outlier
    assert table.noise_sd["val_acc"][-1] == pytest.approx(sd, abs=2e-4)
    assert table.noise_sd["val_acc"][0] == pytest.approx(sd / EPOCHS, abs=2e-4)

    recorded = replay_curve({"lr": 1e-2, "width": 16, "dropout": 0.5, "epochs": EPOCHS}, table, params)
    assert recorded[0]["replay_distance"] == 0 and recorded[0]["replay_noise"] is None
    clean = [round(0.861 * e / EPOCHS, 4) for e in range(1, EPOCHS + 1)]
    assert [r["val_acc"] for r in recorded] == clean
    near = [{"lr": 1e-2, "width": 16, "dropout": d, "epochs": EPOCHS} for d in (0.45, 0.46, 0.47, 0.48, 0.49, 0.51, 0.52)]
    curves = [replay_curve(c, table, params) for c in near]
    assert all(c[0]["replay_config_id"] == recorded[0]["replay_config_id"] for c in curves)
    assert len({c[-1]["val_acc"] for c in curves}) == len(curves)  # the neighbours no longer tie
    for curve in curves:
        z = curve[0]["replay_noise"]
        assert isinstance(z, float) and abs(z) < 5 and all(r["replay_noise"] == z for r in curve)
        assert [r["val_acc"] for r in curve] == pytest.approx(
            [c + z * s for c, s in zip(clean, table.noise_sd["val_acc"])])
        assert (curve[-1]["val_loss"] < recorded[-1]["val_loss"]) == (z > 0)  # a lucky seed: higher accuracy, lower loss
    assert replay_curve(near[0], table, params) == curves[0]  # the same config, the same replay

    few = write_table(tmp_path, runs + repeats[: NOISE_PAIRS - 1])
    table = load_table(few)
    assert table.noise_sd == {}
    assert [r["val_acc"] for r in replay_curve(near[0], table, params)] == clean


# --- bad input: one line, the problem and the fix, a non-zero exit --------------------------------


def cli_error(capsys, space_file: Path) -> str:
    status = main(["sweep", "replay", "--space", str(space_file), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("change, expected", [
    ({"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "width": {"type": "choice", "values": [8, 16]},
                 "dropout": {"type": "uniform", "low": 0.0, "high": 0.6}, "depth": {"type": "choice", "values": [1, 2]}}},
     "params.depth: not a parameter of the replay table"),
    ({"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "width": {"type": "choice", "values": [8, 16]}}},
     "varies dropout, which this space does not search; add them under params:"),
    ({"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "width": {"type": "choice", "values": [8, 32]},
                 "dropout": {"type": "uniform", "low": 0.0, "high": 0.6}}},
     "params.width: 32 was never recorded (the table has 8, 16); choose among those"),
    ({"scheduler": {"type": "fifo", "max_t": EPOCHS + 1}}, f"scheduler.max_t: {EPOCHS + 1} is more than the {EPOCHS} epochs"),
    ({"fixed": {"batch_size": 64}}, "fixed: a replay replays what the table recorded"),
    ({"time_scale": -1}, "time_scale: -1 is not allowed; use a number >= 0"),
    ({"lookup": "linear"}, "lookup: 'linear' is not allowed; choose nearest"),
    ({"clock": "fast"}, "clock: 'fast' is not allowed; choose sleep"),
    ({"table": None}, "table: expected the path of recorded curves"),
])
def test_a_space_the_table_cannot_answer_is_refused_in_one_line(tmp_path, capsys, change, expected):
    err = cli_error(capsys, write_space(tmp_path, replay_space(write_table(tmp_path), **change)))
    assert expected in err


def test_a_missing_or_malformed_table_is_refused_in_one_line(tmp_path, capsys):
    err = cli_error(capsys, write_space(tmp_path, replay_space(tmp_path / "nowhere.jsonl")))
    assert "replay table" in err and "nowhere.jsonl: cannot read it" in err and "record_curves.py" in err
    table = write_table(tmp_path)
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    assert "line 2 is not JSON" in cli_error(capsys, write_space(tmp_path, replay_space(table)))
    table.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a recording cut short: its last line is left out
    assert len(load_table(table).runs) == 1
    bad = tmp_path / "curves.csv"
    bad.write_text("config_id,lr\n0,0.1\n")
    assert "lacks the column(s) seed, epoch, val_acc" in cli_error(capsys, write_space(tmp_path, replay_space(bad)))
    table.write_text(json.dumps({"config_id": 0, "seed": 0, "params": {"lr": 0.1}}) + "\n")
    assert "line 1 is not a recorded run" in cli_error(capsys, write_space(tmp_path, replay_space(table)))


def test_table_belongs_to_replay_spaces_only(tmp_path):
    data = replay_space(write_table(tmp_path), kind="cnn")
    with pytest.raises(ConfigError, match="table: only a replay space has it; use kind: replay"):
        load_space(write_space(tmp_path, data))
    data = replay_space(write_table(tmp_path), kind="cnn", lookup="interpolate")
    del data["table"], data["time_scale"]
    with pytest.raises(ConfigError, match="lookup: only a replay space has it"):
        load_space(write_space(tmp_path, data))
    del data["lookup"]
    with pytest.raises(ConfigError, match="clock: only a replay space has it"):
        load_space(write_space(tmp_path, {**data, "clock": "simulated"}))
    with pytest.raises(ConfigError, match="this is a replay space but the sweep is for vae"):
        load_space(write_space(tmp_path, replay_space(write_table(tmp_path))), kind="vae")


# --- through the real engine ----------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("lookup", ["nearest", "interpolate"])
def test_a_replay_sweep_reports_the_table_and_asha_stops_trials_early(tmp_path, capsys, lookup):
    import pandas as pd

    table_path = write_table(tmp_path)
    space_file = write_space(tmp_path, replay_space(table_path, num_samples=18, max_concurrent_trials=6, lookup=lookup))
    status = main(["sweep", "replay", "--space", str(space_file), "--name", "r", "--storage", str(tmp_path / "results"),
                   "--num-cpus", "1"])
    assert status == 0, capsys.readouterr()
    experiment = tmp_path / "results" / "r"
    info = json.loads((experiment / "sweep.json").read_text())
    assert info["kind"] == "cnn" and info["replay"]["table"] == str(table_path) and info["data"] is None
    assert info["replay"]["lookup"] == lookup
    results, history = pd.read_csv(experiment / "results.csv"), pd.read_csv(experiment / "history.csv")
    assert len(results) == 18 and set(results["status"]) == {"TERMINATED"}

    # Every trial reported, epoch by epoch, the recorded curve of the configuration nearest to its own
    # (or the blend of the nearest few).
    space, table = load_space(space_file), load_table(table_path)
    for _, trial in results.iterrows():
        config = {k: trial[f"config/{k}"] for k in ("lr", "width", "dropout")}
        expected = replay_curve({**config, "epochs": EPOCHS}, table, space_params(space), lookup=lookup)
        rows = history[history["trial_id"] == trial["trial_id"]].sort_values("epoch")
        assert len(rows) == trial["epochs"] and 1 <= len(rows) <= len(expected)
        for row, want in zip(rows.to_dict("records"), expected):
            assert row["epoch"] == want["epoch"] and row["replay_config_id"] == want["replay_config_id"]
            assert row["sim_time_s"] == pytest.approx(want["sim_time_s"])
            if want["val_acc"] is None:
                assert row["diverged"] and row["val_acc"] == -math.inf  # ranked last, as a real diverged trial
            else:
                assert row["val_acc"] == pytest.approx(want["val_acc"])
    if lookup == "interpolate":
        return

    # ASHA stopped weak trials before max_t; the best trial ran to max_t on the table's best region.
    stopped = results[results["stop_reason"] == "asha"]
    assert len(stopped) >= 3 and (stopped["epochs"] < EPOCHS).all(), results[["trial_id", "epochs", "stop_reason"]]
    assert results["epochs"].sum() < 18 * EPOCHS
    assert info["best"]["value"] >= 0.8 and info["best"]["epoch"] == EPOCHS
    assert (experiment / "analysis").exists() is False  # nothing but the sweep ran

    # a replayed trial has no model to promote
    assert main(["promote", str(experiment), "--kind", "cnn", "--models-dir", str(tmp_path / "models")]) == 2
    assert "is a replay sweep" in capsys.readouterr().err


def test_the_replay_benchmark_counts_epochs_and_ranks_strategies(tmp_path):
    """benchmarks/search_efficiency.py --replay: Optuna alone (no Ray) on three real recorded configs spends
    exactly the budget on recorded values, and the summary ranks and normalizes against the table."""
    from types import SimpleNamespace

    bench = load_benchmark()
    run = bench.run_optuna_alone(0, str(SAMPLE), 40, SimpleNamespace(lookup="nearest"), tmp_path)
    curve = run["curve"]
    assert len(curve) == 40 and all(a <= b for a, b in zip(curve, curve[1:]))
    # a table of three configurations answers 40 epochs of proposals: most of them replay one seen before
    assert len(run["revisits"]) == 40 and set(run["revisits"]) == {0, 1} and sum(run["revisits"]) > 20
    recorded = {e["val_acc"] for line in SAMPLE.read_text().splitlines() for e in json.loads(line)["epochs"]}
    assert curve[-1] in recorded and curve[-1] <= load_table(SAMPLE).best()
    runs = [{"strategy": "random+fifo", "seed": 0, "curve": [0.5, 0.7, 0.7, 0.8], "wall_s": 1.0, "epochs": 4,
             "revisits": [0, 0, 0, 0, 1]},
            {"strategy": "optuna-alone", "seed": 0, "curve": [0.7, 0.8, 0.8, 0.8], "wall_s": 1.0, "epochs": 4,
             "revisits": [0, 0, 1, 1]}]
    summary = bench.replay_summary(runs, ["random+fifo", "optuna-alone"], 4, table_best=0.9, table_median=0.5)
    table = summary["table"]
    assert summary["target"] == 0.8 and table["random+fifo"]["median_epochs"] == 4 and table["optuna-alone"]["ratio"] == 2.0
    assert table["optuna-alone"]["regret"] == [pytest.approx(0.25)] and table["optuna-alone"]["rank"] == 1.5
    # the share of the budget's epochs on configurations replayed before (the fifth epoch is past the budget)
    assert table["random+fifo"]["revisited"] == [0.0] and table["optuna-alone"]["revisited"] == [0.5]
    row = next(line for line in bench.format_replay(summary) if line.startswith("| optuna-alone"))
    assert "| 50% |" in row and "| 2.00x [2.00-2.00] |" in row

    # the ratio's bootstrap interval: seeds resampled on both sides; a strategy that never reaches the target is 0
    assert bench.ratio_interval([10] * 5, [5] * 5) == (2.0, 2.0)
    assert bench.ratio_interval([10] * 5, [None] * 5) == (0.0, 0.0)
    lo, hi = bench.ratio_interval([10, 20, 30, 40, 50], [5, 10, 15, 20, 25])
    assert lo < 2.0 < hi and bench.ratio_interval([10, 20, 30, 40, 50], [5, 10, 15, 20, 25]) == (lo, hi)  # seeded



def test_the_replay_benchmark_scores_the_incumbent_without_noise_and_reads_strategy_options(tmp_path):
    """The incumbent is the epoch with the best reported (noisy) val_acc, scored by its recorded value: a lucky
    draw on a worse configuration replaces the incumbent and lowers the score. Strategy options reach the space."""
    bench = load_benchmark()
    table = load_table(write_table(tmp_path))
    good, worse = 4, 0  # lr 1e-3 / width 8 / dropout 0.1 (final 0.607); lr 1e-4, the same (final 0.307)
    rows = [{"val_acc": table.recorded(good, 3) + 0.001, "replay_config_id": good, "epoch": 3},
            {"val_acc": 0.2, "replay_config_id": worse, "epoch": 1},
            {"val_acc": 0.99, "replay_config_id": worse, "epoch": 6}]  # lucky noise on a bad configuration
    assert bench.incumbent_curve(rows, table) == [table.recorded(good, 3)] * 2 + [table.recorded(worse, 6)]
    assert bench.incumbent_curve(rows) == [rows[0]["val_acc"]] * 2 + [0.99]  # without a table: the reported values
    assert table.recorded(worse, 6) == pytest.approx(0.307)
    # an epoch counts as a revisit when another trial reported its configuration first; a trial's own
    # later epochs do not, nor does the first trial of a configuration
    trials = [{"trial_id": t, "replay_config_id": c} for t, c in (("a", 4), ("a", 4), ("b", 0), ("c", 4), ("b", 0), ("c", 4))]
    assert bench.revisits(trials) == [0, 0, 0, 1, 0, 1]

    assert bench.split_strategy("tpe(multivariate=true,n_startup_trials=20)+asha(grace_period=4)") == (
        "tpe", {"multivariate": True, "n_startup_trials": 20}, "asha", {"grace_period": 4})
    data = bench.replay_space_for("tpe(multivariate=true)+asha(grace_period=4,reduction_factor=2)", 3, "t.jsonl", 300, 4, 0.0)
    assert data["searcher"] == {"type": "tpe", "multivariate": True}
    assert data["scheduler"] == {"type": "asha", "max_t": 16, "grace_period": 4, "reduction_factor": 2}
    with pytest.raises(ValueError, match="key=value"):
        bench.split_strategy("tpe(multivariate)+asha")
    # Every scheduler that ends trials early may start as many trials as epochs, so none runs out before its
    # budget. PBT's population is num_samples and Ray's PBT trains it in turn (a member pauses at each
    # perturbation while another waits): 300 members got 4 epochs each; 1.5 x 300 / 16 spends the budget.
    for scheduler in ("asha", "hyperband", "median"):
        assert bench.replay_space_for(f"random+{scheduler}", 0, "t.jsonl", 300, 4, 0.0)["num_samples"] == 300
    assert bench.replay_space_for("random+pbt", 0, "t.jsonl", 300, 4, 0.0)["num_samples"] == 29


def load_benchmark(name: str = "search_efficiency"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.ray
def test_an_interrupted_replay_sweep_resumes_from_another_directory_to_exactly_num_samples(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    from tiny_sweeps import epochs_in_result_json, interrupt_when_ready

    write_table(tmp_path)
    data = replay_space(Path("runs.jsonl"), num_samples=16, max_concurrent_trials=2, time_scale=0.3,  # 0.3-0.6 s an epoch
                        scheduler={"type": "fifo", "max_t": EPOCHS})  # the table's path is read from the current directory
    space_file = write_space(tmp_path, data)
    experiment = tmp_path / "results" / "r"
    sweep = [sys.executable, "-m", "fashion_tune", "sweep", "replay", "--name", "r", "--storage", str(tmp_path / "results"),
             "--num-cpus", "1"]
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([*sweep, "--space", str(space_file)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    assert interrupt_when_ready(driver, lambda: len(list(experiment.glob("trial_*/result.json"))) >= 3, log) == 130
    first = pd.read_csv(experiment / "results.csv")
    assert (first["status"] == "TERMINATED").sum() < 16, first  # trials Tune created may all be listed
    (tmp_path / "elsewhere").mkdir()
    resumed = subprocess.run([*sweep, "--resume"], cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    results, history = pd.read_csv(experiment / "results.csv"), pd.read_csv(experiment / "history.csv")
    assert len(results) == 16 and set(results["status"]) == {"TERMINATED"}
    table, space = load_table(tmp_path / "runs.jsonl"), load_space(experiment / "space.yaml")
    for _, trial in results.iterrows():
        config = {k: trial[f"config/{k}"] for k in ("lr", "width", "dropout")}
        expected = replay_curve({**config, "epochs": EPOCHS}, table, space_params(space))
        rows = history[history["trial_id"] == trial["trial_id"]].sort_values("epoch")
        assert rows["epoch"].tolist() == [r["epoch"] for r in expected], "every epoch replayed, none lost"
        assert rows["val_acc"].tolist() == pytest.approx([-math.inf if r["val_acc"] is None else r["val_acc"]
                                                          for r in expected])
    for path in experiment.glob("trial_*/result.json"):
        epochs_in_result_json(path)  # an epoch may run twice after the restore, none is skipped


@pytest.mark.ray
def test_a_sweep_its_stopper_ends_is_stopped_not_resumable(tmp_path):
    """A Stopper's stop_all ends the search for Ray (a resume would add no trial): the sweep says
    "stopped", not "interrupted" with a resume command that does nothing, and --resume says so without Ray."""
    from ray.tune import Stopper

    from fashion_tune.search.request import SweepRequest
    from fashion_tune.search.sweep import run_sweep

    class AfterFiveResults(Stopper):
        def __init__(self):
            self.seen = 0

        def __call__(self, trial_id, result):
            self.seen += 1
            return False

        def stop_all(self):
            return self.seen >= 5

    write_table(tmp_path)
    space_file = write_space(tmp_path, replay_space(tmp_path / "runs.jsonl", num_samples=12, max_concurrent_trials=2,
                                                    scheduler={"type": "fifo", "max_t": EPOCHS}))
    printed: list[str] = []
    request = SweepRequest("replay", space_file, name="s", storage=tmp_path / "results", num_cpus=1, verbose=0,
                           stop=AfterFiveResults())
    outcome = run_sweep(request, echo=printed.append)
    assert outcome.status == "stopped" and outcome.num_trials < 12, printed
    assert "ended it before its 12 trials (stop_all)" in printed[-1] and "--resume" not in "\n".join(printed)
    info = json.loads((tmp_path / "results" / "s" / "sweep.json").read_text())
    assert info["status"] == "stopped" and info["finished"]

    again: list[str] = []
    resumed = run_sweep(SweepRequest("replay", name="s", storage=tmp_path / "results", resume=True), echo=again.append)
    assert resumed.status == "stopped" and resumed.num_trials == outcome.num_trials
    assert again[0].startswith("s was ended by its stopper already"), again


@pytest.mark.ray
def test_every_result_tune_processed_is_in_result_json_when_trials_pause_and_resume(tmp_path, monkeypatch):
    """The median rule pauses a trial at every epoch while too few others have reached it and trials
    wait, and Tune starts it again a moment later. Ray's JSON logger copied the trial's result.json
    back from storage at each start; storage lags the driver's copy, so lines were lost (results.csv,
    history.csv and the benchmark's curves read that file). Every (trial, epoch) the stopper saw is there."""
    from ray.tune import Stopper

    from fashion_tune.search.request import SweepRequest
    from fashion_tune.search.sweep import run_sweep

    class Seen(Stopper):
        def __init__(self):
            self.pairs = set()

        def __call__(self, trial_id, result):
            self.pairs.add((trial_id, result["epoch"]))
            return False

        def stop_all(self):
            return False

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")  # storage a second behind the driver, not Tune's 10+ s
    write_table(tmp_path)
    space_file = write_space(tmp_path, replay_space(
        tmp_path / "runs.jsonl", num_samples=12, max_concurrent_trials=3, time_scale=0.3,
        # Two trials fit the one CPU, so the third always waits: the rule pauses trials however busy the
        # machine is (with all three running, only a trial caught between two others could be paused).
        resources_per_trial={"cpu": 0.5},
        scheduler={"type": "median", "max_t": EPOCHS, "grace_period": 1}))
    seen = Seen()
    request = SweepRequest("replay", space_file, name="m", storage=tmp_path / "results", num_cpus=1, verbose=0, stop=seen)
    outcome = run_sweep(request, echo=lambda line: None)
    assert outcome.status == "finished"
    written = {(row["trial_id"], row["epoch"]) for path in (tmp_path / "results" / "m").glob("trial_*/result.json")
               for row in map(json.loads, path.read_text().splitlines())}
    paused = sum(len(list(path.parent.glob("events.out.tfevents.*"))) > 1
                 for path in (tmp_path / "results" / "m").glob("trial_*/params.json"))
    assert paused, "no trial was paused and started again: the test no longer exercises the restart"
    assert seen.pairs - written == set(), f"{len(seen.pairs - written)} of {len(seen.pairs)} results missing"


def test_reach_says_from_the_table_alone_how_many_configurations_reach_a_target_and_when(tmp_path, capsys):
    scale = load_benchmark("replay_scale")
    assert scale.main(["reach", "--replay", str(write_table(tmp_path)), "--target", "0.85"]) == 0
    out = capsys.readouterr().out
    # lr 1e-2 ends at 0.853-0.865 (4 of 16 configurations), climbing linearly: only the 6th epoch reaches 0.85
    assert "16 configurations, 6 epochs; target 0.8500" in out
    assert "reach it: 4 (25.0%); first at epoch 6 (min), 6 (median), 6 (max)" in out
    assert "random search meets one in 4.0 configurations on average: 24 epochs of 6-epoch trials" in out
    assert "after  1 epochs: rank correlation" in out and "after  8" not in out
