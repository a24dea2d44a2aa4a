"""Sweeps on a real (local) Ray: Optuna proposes, ASHA stops, results land on disk, interrupted sweeps resume.

Tiny models on small subsets; the CNN sweep is shared with test_analysis.py (tests/tiny_sweeps.py).
"""

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.fs
import pytest
import yaml

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.training.checkpoint import load_checkpoint
from fashion_tune.reports.analysis import best_trial, load_history, load_results, read_sweep_info
from tiny_sweeps import no_ray_left_running  # noqa: F401  (autouse: Ray shut down after each test)
from tiny_sweeps import TINY_CNN_SPACE, epochs_in_result_json, interrupt_when_ready, tiny_cnn_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return tiny_cnn_sweep(tmp_path_factory)


@pytest.mark.ray
def test_optuna_proposes_and_asha_stops_trials_early(sweep):
    outcome, printed = sweep
    assert outcome.status == "finished", printed
    results = outcome.results
    assert len(results) == 6 and set(results["status"]) == {"TERMINATED"}
    max_t = TINY_CNN_SPACE["scheduler"]["max_t"]
    stopped = results[results["stop_reason"] == "asha"]
    assert len(stopped) >= 1, results[["trial_id", "epochs", "val_acc"]]
    assert (stopped["epochs"] < max_t).all() and stopped["stopped_early"].all()
    assert (results["epochs"] == max_t).any(), "the best trials run to max_t"
    assert results["epochs"].sum() < 6 * max_t

    study = outcome.study  # the Optuna study behind OptunaSearch holds every proposed trial
    assert len(study.trials) == 6
    assert study.trials[0].params == TINY_CNN_SPACE["points_to_evaluate"][0], "the known-good point goes first"
    proposed = sorted(t.params["lr"] for t in study.trials)
    assert proposed == sorted(results["config/lr"]), "every trial ran the config Optuna proposed"
    by_lr = results.set_index("config/lr")
    history = load_history(outcome.experiment_dir)
    for trial in study.trials:
        row = by_lr.loc[trial.params["lr"]]
        # ASHA's stops are PRUNED, with every epoch's value; a finished trial is told its best value.
        assert trial.state.name == ("PRUNED" if row["stop_reason"] == "asha" else "COMPLETE"), row["stop_reason"]
        epochs = history[history["trial_id"] == row["trial_id"]]
        assert trial.intermediate_values == dict(zip(epochs["epoch"], epochs["val_acc"]))
        if trial.state.name == "COMPLETE":
            assert trial.value == row["best_val_acc"]


@pytest.mark.ray
def test_results_and_history_are_written_with_ray_fields(sweep):
    outcome, printed = sweep
    directory = Path(outcome.experiment_dir)
    for stem in ("results", "history"):
        assert (directory / f"{stem}.csv").is_file() and (directory / f"{stem}.parquet").is_file()
    results = pd.read_parquet(directory / "results.parquet")
    history = pd.read_parquet(directory / "history.parquet")
    assert len(results) == 6 and len(history) == results["epochs"].sum()
    for column in ("hostname", "node_ip", "pid"):
        assert results[column].notna().all() and history[column].notna().all()
    for trial_id, rows in history.groupby("trial_id"):
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1))
    assert list(pd.read_csv(directory / "results.csv")["trial_id"]) == list(results["trial_id"])

    info = read_sweep_info(directory)
    assert info["status"] == "finished" and info["num_samples"] == 6 and info["max_t"] == 4
    assert info["kind"] == "cnn" and info["metric"] == "val_acc" and info["created"] and info["finished"]
    assert yaml.safe_load((directory / info["space_copy"]).read_text()) == TINY_CNN_SPACE
    assert any(line.startswith("best trial ") for line in printed)


@pytest.mark.ray
def test_best_trial_is_chosen_by_validation_and_its_checkpoint_matches(sweep):
    outcome, _ = sweep
    pick = best_trial(outcome.experiment_dir)
    results = load_results(outcome.experiment_dir)
    assert pick.kind == "cnn" and (pick.metric, pick.mode) == ("val_acc", "max")
    assert pick.value == results["best_val_acc"].max()
    assert pick.trial_id == results.loc[results["best_val_acc"].idxmax(), "trial_id"]
    state = load_checkpoint(pick.checkpoint, kind="cnn")
    assert state["epoch"] == pick.epoch and state["metrics"]["val_acc"] == pick.value
    assert state["config"] == pick.config and pick.config["epochs"] == 4 and pick.config["width"] == 8

    by_loss = best_trial(outcome.experiment_dir, metric="val_loss")
    history = load_history(outcome.experiment_dir)
    assert by_loss.mode == "min" and by_loss.value == history["val_loss"].min()

    with pytest.raises(FashionTuneError, match="'train_loss' is not a validation metric"):
        best_trial(outcome.experiment_dir, metric="train_loss")
    with pytest.raises(FashionTuneError, match="not a fashion-tune experiment directory"):
        best_trial(Path(outcome.experiment_dir).parent)


@pytest.mark.ray
def test_results_agree_with_rays_own_view(sweep):
    from ray.tune import ExperimentAnalysis

    outcome, _ = sweep
    ray_frame = ExperimentAnalysis(outcome.experiment_dir).dataframe()
    ours = load_results(outcome.experiment_dir).set_index("trial_id")
    assert sorted(ray_frame["trial_id"]) == sorted(ours.index)
    for _, row in ray_frame.iterrows():
        assert ours.loc[row["trial_id"], "val_acc"] == row["val_acc"]
        assert ours.loc[row["trial_id"], "epochs"] == row["epoch"]


# --- resume and a diverging trial ----------------------------------------------------------------

RESUME_SPACE = {
    "kind": "vae",
    "num_samples": 5,
    "max_concurrent_trials": 1,
    "seed": 1,
    "scheduler": {"max_t": 4, "grace_period": 4, "reduction_factor": 2},  # no early stops: trials last
    "fixed": {"depth": 1, "latent_dim": 8, "embed_dim": 8, "batch_size": 50, "subset": 600, "val_subset": 200,
              "grad_clip": 0.0, "device": "cpu"},
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e6},
        "beta_schedule": {"type": "choice", "values": ["constant", "linear"]},
        "width": {"type": "choice", "values": [8, 24]},
    },
    # Every trial is a fixed point. Ctrl-C comes once the second has reported, and Tune takes a few
    # seconds to act on it: the third is wide (slow) so that it is still training then. The second
    # point's learning rate makes the loss NaN in its first epoch.
    "points_to_evaluate": [
        {"lr": 2.0e-3, "beta_schedule": "linear", "width": 8},
        {"lr": 1.0e6, "beta_schedule": "constant", "width": 8},
        {"lr": 2.0e-3, "beta_schedule": "linear", "width": 24},
        {"lr": 1.0e-3, "beta_schedule": "constant", "width": 8},
        {"lr": 3.0e-3, "beta_schedule": "linear", "width": 8},
    ],
}


def result_texts(directory: Path, trial_ids) -> dict[str, str]:
    return {t: (directory / f"trial_{t}" / "result.json").read_text() for t in trial_ids}


def reporting_trials(directory: Path) -> int:
    return sum(1 for path in directory.glob("trial_*/result.json") if path.stat().st_size > 0)


@pytest.mark.ray
def test_interrupted_sweep_resumes_to_exactly_num_samples_and_a_nan_trial_does_not_stop_it(tmp_path):
    space = tmp_path / "resume.yaml"
    space.write_text(yaml.safe_dump(RESUME_SPACE, sort_keys=False))
    storage = tmp_path / "results"
    directory = storage / "resume"
    log = (tmp_path / "first.log").open("w")
    command = [sys.executable, "-m", "fashion_tune", "sweep", "vae", "--space", str(space), "--name", "resume",
               "--storage", str(storage)]
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    rc = interrupt_when_ready(driver, lambda: reporting_trials(directory) >= 2, log)
    first = (tmp_path / "first.log").read_text()
    assert rc == 130, first
    interrupted = load_results(directory)
    finished = list(interrupted.loc[interrupted["status"] == "TERMINATED", "trial_id"])
    assert 2 <= len(finished) < 5, interrupted[["trial_id", "status", "epochs"]]
    before = result_texts(directory, finished)
    lines = first.splitlines()
    hint = lines.index(next(line for line in lines if "resume it with:" in line))
    resume = shlex.split(lines[hint + 1].strip())
    assert resume == ["fashion-tune", "sweep", "vae", "--name", "resume", "--storage", str(storage), "--resume"]
    assert read_sweep_info(directory)["status"] == "interrupted"
    assert (directory / "results.csv").is_file(), "an interrupted sweep exports what it has"

    result = subprocess.run([sys.executable, "-m", "fashion_tune", *resume[1:]], capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = load_results(directory)
    assert len(results) == 5 and set(results["status"]) == {"TERMINATED"}, results[["trial_id", "status"]]
    assert set(interrupted["trial_id"]) <= set(results["trial_id"])
    for trial_id, text in result_texts(directory, finished).items():
        assert text == before[trial_id], f"{trial_id} finished before the interruption and must not run again"
    for path in directory.glob("trial_*/result.json"):
        epochs_in_result_json(path)  # an epoch may run twice after the restore, none is skipped
    info = read_sweep_info(directory)
    assert info["status"] == "finished" and len(info["resumed"]) == 1

    poisoned = results[results["config/lr"] == 1.0e6]
    assert len(poisoned) == 1
    nan_trial = poisoned.iloc[0]
    assert nan_trial["diverged"] and nan_trial["stop_reason"] == "diverged" and nan_trial["epochs"] == 1
    assert nan_trial["val_neg_elbo"] == math.inf
    assert (results["epochs"] > 0).all(), "every trial after the NaN one still ran"
    pick = best_trial(directory)
    assert pick.trial_id != nan_trial["trial_id"] and math.isfinite(pick.value)


# --- ASHA across a restore ---------------------------------------------------------------------


def test_asha_replays_the_results_a_restored_trial_stored(tmp_path):
    from fashion_tune.search.schedulers import SweepASHA

    def fake_trial(trial_id, values):
        folder = tmp_path / trial_id
        folder.mkdir()
        rows = [{"epoch": e + 1, "val_neg_elbo": v} for e, v in enumerate(values)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "val_')
        storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(folder))
        # Ended trials: every stored row counts (test_schedulers.py covers trials that run again).
        return SimpleNamespace(trial_id=trial_id, storage=storage, status="TERMINATED", TERMINATED="TERMINATED",
                               ERROR="ERROR")

    asha = SweepASHA(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_neg_elbo", "min")
    asha.on_trial_add(None, fake_trial("a", [100.0, 90.0, 85.0]))
    asha.on_trial_add(None, fake_trial("b", [120.0, math.inf]))
    asha.on_trial_add(None, fake_trial("new", []))
    rungs = {milestone: recorded for milestone, recorded in asha._brackets[0]._rungs}
    assert rungs[1] == {"a": -100.0, "b": -120.0}
    assert rungs[2]["a"] == -90.0 and rungs[2]["b"] == -1e30  # a diverged result ranks last, finitely
    new = SimpleNamespace(trial_id="new")
    assert asha.on_trial_result(None, new, {"epoch": 1, "val_neg_elbo": 130.0}) == "STOP"
    new2 = fake_trial("new2", [])
    asha.on_trial_add(None, new2)
    assert asha.on_trial_result(None, new2, {"epoch": 1, "val_neg_elbo": 95.0}) == "CONTINUE"
    nan_trial = fake_trial("diverged", [])
    asha.on_trial_add(None, nan_trial)
    assert asha.on_trial_result(None, nan_trial, {"epoch": 1, "val_neg_elbo": math.inf}) == "STOP"
    assert rungs[1]["diverged"] == -1e30


def test_asha_ranks_a_diverged_trial_last_when_higher_is_better():
    from fashion_tune.search.schedulers import SweepASHA

    asha = SweepASHA(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")
    for trial_id, value in [("a", 0.8), ("b", -math.inf), ("c", 0.7)]:
        trial = SimpleNamespace(trial_id=trial_id, storage=None)
        asha.on_trial_add(None, trial)
        asha.on_trial_result(None, trial, {"epoch": 1, "val_acc": value})
    assert asha._brackets[0]._rungs[-1][1] == {"a": 0.8, "b": -1e30, "c": 0.7}


# --- refusals before anything starts -----------------------------------------------------------


def test_resume_refuses_flags_it_would_ignore(tmp_path):
    from fashion_tune.util.errors import ConfigError
    from fashion_tune.search.sweep import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(RESUME_SPACE, sort_keys=False))
    (tmp_path / "results" / "done").mkdir(parents=True)
    (tmp_path / "results" / "done" / "sweep.json").write_text(json.dumps(
        {"kind": "vae", "num_samples": 5, "max_concurrent_trials": 1, "max_failures": 3, "keep_checkpoints": 3}))
    resume = dict(name="done", storage=tmp_path / "results", resume=True)
    with pytest.raises(ConfigError, match="--restart-errored only applies with --resume"):
        run_sweep("vae", space, name="new", storage=tmp_path / "results", restart_errored=True)
    with pytest.raises(ConfigError, match="--space cannot be given with --resume"):
        run_sweep("vae", space, **resume)
    with pytest.raises(ConfigError, match=r"--max-failures cannot change on --resume \(it was started with --max-failures 3\)"):
        run_sweep("vae", max_failures=5, **resume)
    with pytest.raises(ConfigError, match="--keep-checkpoints cannot change on --resume"):
        run_sweep("vae", keep_checkpoints=1, **resume)


def test_sweep_refuses_to_overwrite_or_to_resume_what_is_not_there(tmp_path):
    from fashion_tune.util.errors import ConfigError
    from fashion_tune.search.sweep import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(RESUME_SPACE, sort_keys=False))
    (tmp_path / "results" / "taken").mkdir(parents=True)
    (tmp_path / "results" / "taken" / "sweep.json").write_text("{}")
    with pytest.raises(FashionTuneError, match="a sweep named 'taken' already exists at .*; continue it with --resume"):
        run_sweep("vae", space, name="taken", storage=tmp_path / "results")
    with pytest.raises(FashionTuneError, match=r"no sweep to resume at .*/results/other \(no sweep.json\)"):
        run_sweep("vae", name="other", storage=tmp_path / "results", resume=True)
    with pytest.raises(ConfigError, match="--resume needs --name"):
        run_sweep("vae", storage=tmp_path / "results", resume=True)
    with pytest.raises(ConfigError, match="--space FILE is required"):
        run_sweep("vae", storage=tmp_path / "results")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["taken"]


def test_resume_refuses_a_sweep_whose_optuna_journal_is_gone(tmp_path):
    from fashion_tune.search.sweep import run_sweep

    (tmp_path / "results" / "moved").mkdir(parents=True)
    (tmp_path / "results" / "moved" / "sweep.json").write_text(json.dumps(
        {"kind": "vae", "num_samples": 5, "max_concurrent_trials": 1, "max_failures": 3, "keep_checkpoints": 3,
         "journal": str(tmp_path / "elsewhere" / "optuna.journal")}))
    with pytest.raises(FashionTuneError, match=r"elsewhere/optuna.journal, the Optuna journal of .*moved, is missing; "
                                               r"a sweep resumes with the journal it started with"):
        run_sweep("vae", name="moved", storage=tmp_path / "results", resume=True)


# --- the searcher after a restore -------------------------------------------------------------


def lr_searcher(max_t: int, concurrency: int):
    """The sweep's searcher (ConcurrencyLimiter over SweepOptuna) for a one-parameter CNN space, maximizing val_acc."""
    from fashion_tune.spaces.space import parse_space
    from fashion_tune.search.searcher import optuna_searcher
    from fashion_tune.search.sweep import make_searcher

    space = parse_space({"kind": "cnn", "num_samples": 4, "max_concurrent_trials": concurrency, "scheduler": {"max_t": max_t},
                         "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, "space.yaml")
    generator = make_searcher(space)
    generator.searcher.set_search_properties("val_acc", "max", {})
    return generator, generator.searcher, optuna_searcher(generator)


def test_restored_searcher_agrees_with_the_trials_tune_restored():
    """Retried and restarted trials are adopted and count against max_concurrent; a RUNNING Optuna
    trial no Tune trial stands for becomes FAIL; ASHA's stops are PRUNED, finished trials told their best."""
    from fashion_tune.search.searcher import reconcile

    generator, limiter, optuna_search = lr_searcher(max_t=3, concurrency=2)
    configs = {t: limiter.suggest(t) for t in ("a", "b")}
    assert limiter.suggest("x") is None  # two at a time

    def trial(trial_id, status, lr):
        return SimpleNamespace(trial_id=trial_id, status=status, config={"lr": lr}, relative_logdir=None)

    stored = {"a": [{"epoch": 1, "val_acc": 0.5, "config": {}}]}
    # Tune restored "a" (running) and "c" (a restarted trial Optuna never asked for); "b" was lost.
    counts = reconcile(generator, [trial("a", "PENDING", configs["a"]["lr"]), trial("c", "PENDING", 2e-3)],
                       lambda t: stored.get(t.trial_id, []))
    assert counts == {"adopted": 1, "told": 0, "failed": 1, "live": 2}
    assert limiter.live_trials == {"a", "c"} and generator.get_state()["counter"] == 2
    assert limiter.suggest("y") is None  # the two restored trials fill max_concurrent
    limiter.on_trial_result("c", {"epoch": 1, "val_acc": 0.7, "config": {"lr": 2e-3}})
    limiter.on_trial_complete("c", {"epoch": 3, "val_acc": 0.6, "best_epoch": 1, "config": {"lr": 2e-3}})
    limiter.on_trial_complete("a", {"epoch": 2, "val_acc": 0.4, "config": {}})  # stopped by ASHA before max_t
    states = {t.params["lr"]: (t.state.name, t.value, t.intermediate_values) for t in optuna_search.study.trials}
    assert states[configs["b"]["lr"]][0] == "FAIL"
    assert states[configs["a"]["lr"]] == ("PRUNED", 0.4, {1: 0.5, 2: 0.4})
    assert states[2e-3] == ("COMPLETE", 0.7, {1: 0.7, 3: 0.6})  # the best value, not the last


def test_a_paused_trial_the_scheduler_stops_is_told_pruned():
    """Tune's stop_trial on a PAUSED trial (HyperBand's cut) tells the searcher no result: it is judged at
    the last epoch it reported, PRUNED before max_t; one that reached max_t is COMPLETE at its best."""
    from fashion_tune.spaces.space import parse_space
    from fashion_tune.search.searcher import optuna_searcher
    from fashion_tune.search.sweep import make_searcher

    space = parse_space({"kind": "cnn", "num_samples": 2, "max_concurrent_trials": 2, "scheduler": {"max_t": 3},
                         "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, "space.yaml")
    generator = make_searcher(space)
    limiter = generator.searcher
    limiter.set_search_properties("val_acc", "max", {})
    configs = {t: limiter.suggest(t) for t in ("cut", "full")}
    for epoch, value in [(1, 0.5), (2, 0.4)]:
        limiter.on_trial_result("cut", {"epoch": epoch, "val_acc": value, "config": {}})
    for epoch, value in [(1, 0.3), (2, 0.6), (3, 0.5)]:
        limiter.on_trial_result("full", {"epoch": epoch, "val_acc": value, "config": {}})
    limiter.on_trial_complete("cut")
    limiter.on_trial_complete("full")
    states = {t.params["lr"]: (t.state.name, t.value) for t in optuna_searcher(generator).study.trials}
    assert states[configs["cut"]["lr"]] == ("PRUNED", 0.4)
    assert states[configs["full"]["lr"]] == ("COMPLETE", 0.6)


def test_a_trial_folder_discarded_twice_is_kept_both_times_and_the_resume_goes_on(tmp_path):
    """A trial the snapshot holds as PENDING ran before a kill: its folder goes to .discarded/. Killed
    again before a snapshot records its restart, the next resume discards the same folder name again;
    that rename onto a non-empty folder used to raise in the callback and end the resumed driver."""
    from fashion_tune.search.callbacks import DISCARDED, _move_aside_unknown_trials

    root = tmp_path / "exp"
    for run in (1, 2, 3):
        (root / "trial_b").mkdir(parents=True)
        (root / "trial_b" / "result.json").write_text(f'{{"epoch": {run}}}\n')
        (root / "trial_a").mkdir(exist_ok=True)
        storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(root))
        _move_aside_unknown_trials([SimpleNamespace(storage=storage, relative_logdir="trial_a"),
                                    SimpleNamespace(storage=storage, relative_logdir=None)])
    kept = sorted(p.name for p in (root / DISCARDED).iterdir())
    assert kept == ["trial_b", "trial_b.2", "trial_b.3"]
    assert [(root / DISCARDED / name / "result.json").read_text() for name in kept] == [
        '{"epoch": 1}\n', '{"epoch": 2}\n', '{"epoch": 3}\n']
    assert (root / "trial_a").is_dir() and not (root / "trial_b").exists()


def test_resume_without_name_lists_the_unfinished_sweeps_and_a_finished_one_is_not_run_again(tmp_path, capsys):
    from fashion_tune.util.errors import ConfigError
    from fashion_tune.search.sweep import run_sweep

    root = tmp_path / "results"
    sweeps = {"old-cut": ("cnn", "interrupted", "2026-01-01T00:00:00+00:00"),
              "new-cut": ("cnn", "errored", "2026-02-01T00:00:00+00:00"),
              "done": ("cnn", "finished", "2026-03-01T00:00:00+00:00"),
              "a-vae": ("vae", "interrupted", "2026-04-01T00:00:00+00:00")}
    for name, (kind, status, created) in sweeps.items():
        (root / name).mkdir(parents=True)
        (root / name / "sweep.json").write_text(json.dumps(
            {"kind": kind, "status": status, "created": created, "num_samples": 2, "max_concurrent_trials": 1,
             "max_failures": 3, "keep_checkpoints": 3, "finished": "2026-03-02T00:00:00+00:00",
             "trials": {"TERMINATED": 2},
             "best": {"trial_id": "abc", "metric": "val_acc", "value": 0.875, "epoch": 3}}))
    with pytest.raises(ConfigError, match=r"--resume needs --name .*; resumable here: new-cut, old-cut$"):
        run_sweep("cnn", storage=root, resume=True)
    with pytest.raises(ConfigError, match="there is no unfinished vae sweep there"):
        run_sweep("vae", storage=tmp_path / "empty", resume=True)
    before = (root / "done" / "sweep.json").read_text()
    outcome = run_sweep("cnn", name="done", storage=root, resume=True)  # no Ray, no space, no data needed
    assert (outcome.status, outcome.num_trials) == ("finished", 2)
    out = capsys.readouterr().out
    assert "done finished already" in out and "best trial abc: val_acc 0.8750 at epoch 3" in out
    assert f"fashion-tune analyze {root / 'done'}" in out
    assert (root / "done" / "sweep.json").read_text() == before and not (root / "done" / "space.yaml").exists()


def test_an_experiment_is_found_by_its_name_in_the_default_storage(tmp_path, monkeypatch):
    from fashion_tune.store.experiment import Experiment

    (tmp_path / "ray_results" / "mine").mkdir(parents=True)
    (tmp_path / "ray_results" / "mine" / "sweep.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASHION_TUNE_STORAGE", raising=False)
    assert Experiment.open("mine").location == str(tmp_path / "ray_results" / "mine")
    (tmp_path / "shared" / "theirs").mkdir(parents=True)
    (tmp_path / "shared" / "theirs" / "sweep.json").write_text("{}")
    monkeypatch.setenv("FASHION_TUNE_STORAGE", str(tmp_path / "shared"))
    assert Experiment.open("theirs").location == str(tmp_path / "shared" / "theirs")
    with pytest.raises(FashionTuneError, match=r"mine is not a directory; .*or just NAME"):
        Experiment.open("mine")


def test_the_searcher_reads_results_as_tune_hands_them_flattened():
    """Tune passes a searcher `flatten_dict(result)` (`config/early_stop_patience`, not `config: {...}`).
    A trial its own patience stopped is COMPLETE at its best value, live as after a resume (where the
    nested rows of result.json are replayed); ASHA's stop stays PRUNED; a trial adopted live (one
    this searcher never suggested) keeps its params."""
    from ray.tune.utils import flatten_dict  # what TuneController calls

    _, limiter, optuna_search = lr_searcher(max_t=10, concurrency=4)
    configs = {t: limiter.suggest(t) for t in ("patient", "asha")}

    def run(trial_id, values, config, best_epoch, searcher=limiter):
        for epoch, value in enumerate(values, 1):
            searcher.on_trial_result(trial_id, flatten_dict({"epoch": epoch, "val_acc": value, "config": config}))
        last = {"epoch": len(values), "val_acc": values[-1], "best_epoch": best_epoch, "config": config}
        searcher.on_trial_complete(trial_id, flatten_dict(last))

    patience = {"early_stop_patience": 2}
    run("patient", [0.6, 0.8, 0.7, 0.75], {**configs["patient"], **patience}, best_epoch=2)  # 4 - 2 >= 2
    run("asha", [0.5, 0.55], {**configs["asha"], **patience}, best_epoch=2)  # stopped by the scheduler
    run("adopted", [0.3, 0.4], {"lr": 2e-3}, best_epoch=2, searcher=optuna_search)  # as after a restore
    states = {t.params.get("lr"): (t.state.name, t.value) for t in optuna_search.study.trials}
    assert states[configs["patient"]["lr"]] == ("COMPLETE", 0.8)
    assert states[configs["asha"]["lr"]] == ("PRUNED", 0.55)  # Optuna keeps a pruned trial's last value
    assert states[2e-3][0] == "PRUNED"


def test_an_exploited_pbt_trial_is_told_its_best_over_the_epochs_as_they_last_stood():
    """After a PBT exploit a trial goes on from another trial's checkpoint and reports epochs again;
    the study gets the best of the epochs as results.csv keeps them (the last report of each)."""
    _, limiter, optuna_search = lr_searcher(max_t=6, concurrency=2)
    lr = limiter.suggest("t")["lr"]
    # Epochs 1-4 on its own; exploited at 4, it continues from a checkpoint at epoch 2 and re-reports 3-4.
    for epoch, value in [(1, 0.5), (2, 0.6), (3, 0.9), (4, 0.91), (3, 0.7), (4, 0.72), (5, 0.74), (6, 0.75)]:
        limiter.on_trial_result("t", {"epoch": epoch, "val_acc": value, "config/lr": lr})
    limiter.on_trial_complete("t", {"epoch": 6, "val_acc": 0.75, "best_epoch": 6, "config/lr": lr})
    [trial] = optuna_search.study.trials
    assert (trial.state.name, trial.value) == ("COMPLETE", 0.75)
    assert trial.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.9, 4: 0.91, 5: 0.74, 6: 0.75}  # one per step


def test_experiment_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """sweep.json, results and history are written beside the old file and renamed over it: a write that
    fails midway (a full disk, a kill) leaves the previous file as it was, and no partial file behind."""
    from fashion_tune.store.experiment import Experiment

    store = Experiment(tmp_path)
    store.write_info({"status": "running", "trials": {"TERMINATED": 3}})
    before = (tmp_path / "sweep.json").read_bytes()

    class DiskFull:
        def __init__(self, real):
            self.real = real

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

        def write(self, data):
            self.real.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    real_open = store.fs.open_output_stream
    monkeypatch.setattr(store, "fs", SimpleNamespace(
        open_output_stream=lambda path: DiskFull(real_open(path)), create_dir=store.fs.create_dir,
        move=store.fs.move, delete_file=store.fs.delete_file))
    with pytest.raises(OSError, match="No space left"):
        store.write_info({"status": "finished", "trials": {"TERMINATED": 4}})
    assert (tmp_path / "sweep.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]


def test_rays_own_resume_hint_is_left_out_while_a_sweep_runs():
    """After Ctrl-C Ray logs "Resume experiment with: Tuner.restore(...)"; the sweep prints its own command."""
    import logging

    from fashion_tune.search.sweep import without_rays_resume_hint

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    ray_log, kept = logging.getLogger("ray.tune.tune"), Kept()  # Ray's loggers do not propagate
    hint = ("Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/x", trainable=...)')  # as ray/tune/tune.py words it
    ray_log.addHandler(kept)
    try:
        with without_rays_resume_hint():
            ray_log.warning(hint)
            ray_log.warning("another warning")
        ray_log.warning(hint)  # outside a sweep, Ray's logging is as it was
    finally:
        ray_log.removeHandler(kept)
    assert kept.messages == ["another warning", hint]
