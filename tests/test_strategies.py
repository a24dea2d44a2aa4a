"""Search strategies: every searcher and scheduler runs a tiny sweep, is interrupted and resumes;
invalid combinations are refused before Ray starts; multi-objective sweeps, warm starts and PBT's
lineage and mutations.

The sweeps share one local Ray (started once for the module) and are sized to seconds: 200
training images, width 8, 3-4 epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from fashion_tune.util.errors import ConfigError, FashionTuneError
from fashion_tune.spaces.space import parse_space
from fashion_tune.search.request import SweepRequest
from fashion_tune.search.searcher import optuna_searcher
from fashion_tune.search.sources import resolve_sources

FIXED = {"depth": 1, "batch_size": 50, "subset": 200, "val_subset": 100, "device": "cpu", "precision": "fp32"}
BASE = {
    "kind": "cnn",
    "num_samples": 4,
    "max_concurrent_trials": 2,
    "seed": 0,
    "scheduler": {"max_t": 3, "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1},
    "fixed": {**FIXED, "width": 8},
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-2},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "flip": {"type": "choice", "values": [True, False]},
    },
}


def space(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --- refusals, before Ray starts -------------------------------------------------------------------

NO_CHOICE = {"lr": BASE["params"]["lr"], "dropout": BASE["params"]["dropout"]}
MO = [{"metric": "val_acc", "mode": "max"}, {"metric": "params", "mode": "min"}]
REFUSED = {
    "cmaes with a choice": (dict(searcher={"type": "cmaes"}), ["params.flip", "cmaes cannot sample choice", "gp"]),
    "grid with a range": (dict(searcher={"type": "grid"}), ["params.lr", "grid needs a finite set", "quniform"]),
    "grid larger than the sweep": (
        dict(searcher={"type": "grid"}, num_samples=9,
             params={"flip": {"type": "choice", "values": [True, False]}, "crop_pad": {"type": "randint", "low": 0, "high": 2}}),
        ["num_samples", "more than the grid's 4 points", "num_samples: 4"]),
    "cmaes with objectives": (dict(searcher={"type": "cmaes"}, params=NO_CHOICE, objectives=MO),
                              ["searcher.type", "single objective", "nsga2"]),
    "unknown searcher": (dict(searcher={"type": "bohb"}), ["searcher.type", "'bohb' is not allowed", "nsga2"]),
    "searcher option of another": (dict(searcher={"type": "random", "population_size": 4}),
                                   ["searcher.population_size", "unknown key"]),
    "constant_liar not a flag": (dict(searcher={"type": "tpe", "constant_liar": "yes"}),
                                 ["searcher.constant_liar", "'yes' must be true or false"]),
    "unknown scheduler": (dict(scheduler={"type": "bohb", "max_t": 3}), ["scheduler.type", "asha, hyperband"]),
    "asha key on fifo": (dict(scheduler={"type": "fifo", "max_t": 3, "grace_period": 1}),
                         ["scheduler.grace_period", "unknown key", "allowed keys: type, max_t"]),
    "pbt without mutate": (dict(scheduler={"type": "pbt", "max_t": 3}), ["scheduler.mutate", "mutate: [lr"]),
    "pbt mutating the architecture": (dict(scheduler={"type": "pbt", "max_t": 3, "mutate": ["width"]}),
                                      ["scheduler.mutate", "'width' cannot change", "allowed: lr, weight_decay, dropout"]),
    "pbt mutating an unsearched key": (dict(scheduler={"type": "pbt", "max_t": 3, "mutate": ["weight_decay"]}),
                                       ["scheduler.mutate", "weight_decay is not a top-level searched parameter"]),
    "pbt interval past max_t": (dict(scheduler={"type": "pbt", "max_t": 3, "mutate": ["lr"], "perturbation_interval": 3}),
                                ["scheduler.perturbation_interval", "use 1..2"]),
    "one objective": (dict(objectives=MO[:1]), ["objectives", "at least two", "metric: and mode:"]),
    "objective of the wrong mode": (dict(objectives=[MO[0], {"metric": "params", "mode": "max"}]),
                                    ["objectives[1].mode", "use mode: min"]),
    "cost first": (dict(objectives=MO[::-1]), ["objectives[0].metric", "not a validation metric"]),
    "metric against objectives": (dict(objectives=MO, metric="val_loss"), ["metric", "differs from the first objective"]),
    "warm start from nowhere": (dict(warm_start="ray_results/none-such"), ["warm_start", "not a directory"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_invalid_strategies_are_one_line_errors_naming_file_and_key(name):
    changes, expected = REFUSED[name]
    with pytest.raises(ConfigError) as caught:
        resolve_sources(parse_space(space(**changes), "spaces/s.yaml"))  # warm_start is read as a sweep starts
    message = str(caught.value)
    assert "\n" not in message and message.startswith("spaces/s.yaml: "), message
    for part in expected:
        assert part in message, message


def test_defaults_are_tpe_and_asha_and_old_files_keep_their_meaning():
    parsed = parse_space(space(), "s.yaml")
    assert (parsed.searcher, parsed.scheduler, parsed.objectives) == ("tpe", "asha", ())
    assert (parsed.max_t, parsed.grace_period, parsed.reduction_factor) == (3, 1, 2)
    typed = parse_space(space(scheduler={"type": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2}), "s.yaml")
    assert typed == parsed


def test_tpe_options_reach_the_sampler():
    from fashion_tune.search.strategies import make_sampler

    sampler = make_sampler(parse_space(space(searcher={"type": "tpe", "constant_liar": False, "n_startup_trials": 3}), "s.yaml"))
    assert (sampler._constant_liar, sampler._n_startup_trials) == (False, 3)
    assert make_sampler(parse_space(space(), "s.yaml"))._constant_liar is True  # Optuna 5's default


def test_every_searcher_proposes_configs_inside_the_space_without_ray():
    from fashion_tune.search.strategies import make_searcher

    grid_params = {"flip": {"type": "choice", "values": [True, False]},
                   "dropout": {"type": "quniform", "low": 0.0, "high": 0.4, "q": 0.2}}
    for kind, params in [("tpe", None), ("gp", None), ("cmaes", NO_CHOICE), ("random", None), ("qmc", None),
                         ("nsga2", None), ("grid", grid_params)]:
        parsed = parse_space(space(searcher={"type": kind}, params=params or BASE["params"]), "s.yaml")
        searcher = make_searcher(parsed).searcher  # the ConcurrencyLimiter inside the SearchGenerator
        seen = []
        for i in range(4):
            config = searcher.suggest(f"t{i}")
            assert config is not None, kind
            parsed.trial_config(config)  # inside the space and a valid training config
            seen.append(config)
            searcher.on_trial_complete(f"t{i}", {"val_acc": 0.1 * i, "epoch": 3, "training_iteration": 3})
        assert len({json.dumps(c, sort_keys=True) for c in seen}) == 4, (kind, seen)


@pytest.mark.parametrize("kind", ["tpe", "gp", "cmaes", "random", "qmc", "nsga2", "grid"])
def test_every_searcher_pickles_as_tune_saves_it_and_the_copy_goes_on(kind, tmp_path):
    """`tune.Tuner(...)` pickles the search algorithm into tuner.pkl, and Tune's snapshots pickle it
    again; Optuna 5.1's NSGA-II held a thread lock that refused that (the Tuner never started)."""
    import ray.cloudpickle

    from fashion_tune.search.strategies import make_searcher

    params = {"flip": {"type": "choice", "values": [True, False]},
              "dropout": {"type": "quniform", "low": 0.0, "high": 0.4, "q": 0.2}} if kind == "grid" else (
        NO_CHOICE if kind == "cmaes" else BASE["params"])
    parsed = parse_space(space(searcher={"type": kind}, params=params), "s.yaml")
    generator = make_searcher(parsed, tmp_path, "pickled")  # its study in a journal, as a sweep's is
    searcher = generator.searcher
    for i in range(2):
        assert searcher.suggest(f"t{i}") is not None
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.1 * i, "epoch": 3, "training_iteration": 3})
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(generator))
    config = copy.searcher.suggest("t2")
    assert config is not None, kind
    parsed.trial_config(config)


# --- tiny sweeps: every searcher and scheduler, interrupted and resumed ----------------------------

GRID = {"flip": {"type": "choice", "values": [True, False]},
        "dropout": {"type": "quniform", "low": 0.0, "high": 0.4, "q": 0.4}}
WIDTHS = {**BASE["params"], "width": {"type": "choice", "values": [8, 16]}}
SWEEPS = {
    "tpe+pbt": space(scheduler={"type": "pbt", "max_t": 6, "perturbation_interval": 1, "mutate": ["lr", "dropout"],
                                "quantile_fraction": 0.5, "resample_probability": 0.5}),
    "gp+asha": space(searcher={"type": "gp", "n_startup_trials": 2}),
    "cmaes+median": space(searcher={"type": "cmaes"}, params=NO_CHOICE,
                          scheduler={"type": "median", "max_t": 3, "grace_period": 1, "min_samples_required": 1}),
    "random+fifo": space(searcher={"type": "random"}, scheduler={"type": "fifo", "max_t": 2}),
    "qmc+hyperband": space(searcher={"type": "qmc"}, num_samples=5,
                           scheduler={"type": "hyperband", "max_t": 4, "reduction_factor": 2}),
    "nsga2+asha, accuracy vs parameters": space(searcher={"type": "nsga2"}, objectives=MO, num_samples=5,
                                                fixed={**FIXED}, params=WIDTHS),
    "grid+fifo": space(searcher={"type": "grid"}, params=GRID, scheduler={"type": "fifo", "max_t": 2}),
}
_DONE: dict[str, str] = {}  # sweep name -> experiment directory, for the tests that read a finished sweep


def interrupt_after(marker: Path, results: int):
    """A Tune stopper that presses Ctrl-C once, after `results` results: a resumable interruption.

    Tune pickles the stopper with the experiment and restores it on resume; the marker file (not
    the object's state) says it has fired, so the resumed sweep runs to the end.
    """
    from ray.tune import Stopper

    class InterruptAfter(Stopper):
        def __init__(self):
            self.seen = 0

        def __call__(self, trial_id, result) -> bool:
            self.seen += 1
            if self.seen >= results and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT)
            return False

        def stop_all(self) -> bool:
            return False

    return InterruptAfter()


def ray_terminated(directory: Path) -> list[str]:
    """The trials Ray's newest experiment state holds as TERMINATED (what a resume must not run again)."""
    state = sorted(directory.glob("experiment_state-*.json"))[-1]
    trials = [json.loads(t) for t, _ in json.loads(state.read_text())["trial_data"]]
    return [t["trial_id"] for t in trials if t["status"] == "TERMINATED"]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


def assert_ray_idle(within_s: float = 30.0) -> None:
    """A finished sweep leaves the shared Ray with every CPU free (no trial actor left holding one):
    else the next sweep's trials would wait for resources forever."""
    import time

    import ray

    deadline = time.monotonic() + within_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() > deadline:
            try:
                from ray.util.state import list_actors
                alive = [(a.class_name, a.state) for a in list_actors(filters=[("state", "!=", "DEAD")])]
            except Exception as exc:  # the state API needs parts of Ray this test runtime may lack
                alive = f"not listed ({type(exc).__name__})"
            pytest.fail(f"the sweep left Ray busy after {within_s:.0f} s: {ray.available_resources()} free of "
                        f"{ray.cluster_resources()}; live actors: {alive}")
        time.sleep(0.5)


def result_texts(directory: Path, trial_ids) -> dict[str, str]:
    return {t: (directory / f"trial_{t}" / "result.json").read_text() for t in trial_ids}


def assert_one_study_entry_per_trial(directory: Path, info: dict, results) -> None:
    """The resumed sweep continued the study of sweep.json in the same journal: every Tune trial in it
    once, as COMPLETE or (stopped early) PRUNED, and nothing left running."""
    from optuna.trial import TrialState

    from fashion_tune.search.study import JOURNAL_FILE, TUNE_TRIAL_ID, open_study

    assert info["journal"] == str(directory / JOURNAL_FILE)
    study = open_study(directory)
    assert study.study_name == info["study_name"]
    ended = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in ended) == sorted(results["trial_id"]), \
        [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    pruned = {t.user_attrs[TUNE_TRIAL_ID] for t in ended if t.state == TrialState.PRUNED}
    stopped = results["stop_reason"].isin(["asha", "hyperband", "median", "stopped"])  # by the scheduler
    assert pruned == set(results.loc[stopped, "trial_id"])
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.ray
@pytest.mark.parametrize("name", list(SWEEPS))
def test_every_strategy_sweeps_and_resumes_after_an_interruption(name, local_ray, tmp_path_factory):
    from fashion_tune.search.sweep import run_sweep
    from fashion_tune.reports.analysis import load_results, read_sweep_info

    data = SWEEPS[name]
    root = tmp_path_factory.mktemp("strategy")
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    printed: list[str] = []
    request = SweepRequest("cnn", path, name="s", storage=root / "results", verbose=0,
                           stop=interrupt_after(root / "interrupted", 3))
    first = run_sweep(request, echo=printed.append)
    assert first.status == "interrupted", printed
    directory = Path(first.experiment_dir)
    before = load_results(directory)
    finished = ray_terminated(directory)
    texts = result_texts(directory, finished)

    again = run_sweep(dataclasses.replace(request, space_file=None, stop=None, resume=True), echo=printed.append)
    assert again.status == "finished", "\n".join(printed)
    results = load_results(directory)
    assert len(results) == data["num_samples"] and set(results["status"]) == {"TERMINATED"}, results
    assert set(before["trial_id"]) <= set(results["trial_id"])
    assert result_texts(directory, finished) == texts, "a trial finished before the interruption ran again"
    info = read_sweep_info(directory)
    assert_one_study_entry_per_trial(directory, info, results)
    scheduler = data["scheduler"].get("type", "asha")
    assert (info["searcher"], info["scheduler"]) == (data.get("searcher", {}).get("type", "tpe"), scheduler)
    max_t = data["scheduler"]["max_t"]
    if scheduler in ("fifo", "pbt"):
        assert (results["epochs"] == max_t).all(), results[["trial_id", "epochs"]]
    else:
        assert results["epochs"].between(1, max_t).all()
        assert set(results.loc[results["stopped_early"], "stop_reason"]) <= {scheduler}
    if scheduler != "pbt":  # PBT continues a cloned trial from an earlier epoch, by design
        for path in directory.glob("trial_*/result.json"):
            epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]
            # The epoch in flight at Ctrl-C may run twice (its checkpoint was not yet registered); no more.
            assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (path, epochs)
            assert len(epochs) - len(set(epochs)) <= 1 and epochs == sorted(epochs), (path, epochs)
    _DONE[name] = str(directory)
    assert_ray_idle()


# --- PBT's trainable side, without Ray ----------------------------------------------------------------


def test_a_mutated_lr_and_weight_decay_apply_on_continuing_and_the_weights_do_not_change():
    import torch

    from fashion_tune.training.loop import fit

    config = {**FIXED, "width": 8, "epochs": 3, "lr": 2e-3, "weight_decay": 1e-4, "dropout": 0.3}
    states = []
    fit("cnn", config, reporter=lambda metrics, state: states.append(state))
    saved = states[0]  # after epoch 1
    weights = {k: v.clone() for k, v in saved["model"].items()}
    mutated = {**config, "lr": 4e-3, "weight_decay": 5e-4, "dropout": 0.1}
    seen = {}

    def spy(metrics, state):
        seen.setdefault("lr", metrics["lr"])
        seen.setdefault("groups", [dict(g) for g in state["optimizer"]["param_groups"]])

    fit("cnn", mutated, reporter=spy, checkpoint=saved)
    fresh = []
    fit("cnn", {**mutated, "epochs": 2}, reporter=lambda m, s: fresh.append(m["lr"]))
    assert seen["lr"] == pytest.approx(fresh[1]), "epoch 2's lr is what the new lr's schedule gives there"
    assert all(g["weight_decay"] == 5e-4 for g in seen["groups"])
    assert all(torch.equal(weights[k], saved["model"][k]) for k in weights), "the checkpoint is not modified"


def test_pareto_front_keeps_the_trials_no_other_beats_on_both():
    import pandas as pd

    from fashion_tune.reports.tradeoffs import pareto_front

    history = pd.DataFrame([
        {"trial_id": "a", "epoch": 1, "val_acc": 0.70, "params": 100},
        {"trial_id": "a", "epoch": 2, "val_acc": 0.80, "params": 100},
        {"trial_id": "b", "epoch": 2, "val_acc": 0.85, "params": 400},
        {"trial_id": "c", "epoch": 2, "val_acc": 0.75, "params": 400},  # worse and bigger than b
        {"trial_id": "d", "epoch": 2, "val_acc": 0.80, "params": 200},  # as good as a, bigger
        {"trial_id": "e", "epoch": 1, "val_acc": float("nan"), "params": 50},
    ])
    front = pareto_front(history, [("val_acc", "max"), ("params", "min")])
    assert list(front["trial_id"]) == ["b", "a", "d", "c"]
    assert dict(zip(front["trial_id"], front["pareto"])) == {"a": True, "b": True, "c": False, "d": False}
    assert front.set_index("trial_id").loc["a", "epoch"] == 2


# --- reading the finished sweeps: Pareto front, promotion under a budget, warm start, PBT lineage ------


def finished(name: str) -> Path:
    if name not in _DONE:
        pytest.skip(f"needs the {name} sweep of test_every_strategy_sweeps_and_resumes_after_an_interruption")
    return Path(_DONE[name])


@pytest.mark.ray
def test_multi_objective_sweep_draws_its_pareto_front_and_promotes_under_a_parameter_budget(tmp_path):
    from fashion_tune.promotion.promote import promote_best_trial
    from fashion_tune.reports.analysis import analyze, load_results, read_sweep_info

    directory = finished("nsga2+asha, accuracy vs parameters")
    info = read_sweep_info(directory)
    assert info["objectives"] == [["val_acc", "max"], ["params", "min"]] and info["metric"] == "val_acc"
    printed: list[str] = []
    files = analyze(directory, out=tmp_path / "analysis", echo=printed.append)
    assert files["pareto"].is_file() and files["pareto"].stat().st_size > 10_000
    text = "\n".join(printed)
    assert "Pareto front (" in text and "## Pareto front" in files["summary"].read_text()

    results = load_results(directory)
    small = results[results["params"] < results["params"].max()]
    budget = float(small["params"].max())
    chosen = small.loc[small["best_val_acc"].idxmax(), "trial_id"]
    done = promote_best_trial(directory, kind="cnn", models_dir=tmp_path / "models", limits={"params": budget},
                              echo=printed.append)
    assert done.trial_id == chosen and done.promoted
    with pytest.raises(FashionTuneError) as caught:
        promote_best_trial(directory, kind="cnn", models_dir=tmp_path / "models", limits={"params": 10},
                           echo=printed.append)
    assert "no trial" in str(caught.value) and "params <= 10" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.ray
def test_warm_start_tells_the_searcher_every_finished_trial_and_refuses_what_does_not_fit(tmp_path):
    from fashion_tune.search.strategies import make_searcher
    from fashion_tune.reports.analysis import load_results

    directory = finished("random+fifo")
    results = load_results(directory)
    wider = space(warm_start=str(directory), scheduler={"type": "fifo", "max_t": 2},
                  params={**BASE["params"], "lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-1}})
    parsed = resolve_sources(parse_space(wider, tmp_path / "w.yaml"))
    assert len(parsed.warm_trials) == len(results)
    searcher = make_searcher(parsed)
    study = optuna_searcher(searcher).study
    told = {round(t.params["lr"], 12): t.value for t in study.trials}
    for _, row in results.iterrows():
        assert told[round(row["config/lr"], 12)] == row["best_val_acc"]
    config = optuna_searcher(searcher).suggest("new")
    assert config["lr"] not in list(results["config/lr"])

    narrow = dict(wider, params={**BASE["params"], "lr": {"type": "loguniform", "low": 1.0e-4, "high": 2.0e-4}})
    with pytest.raises(ConfigError, match=r"w.yaml: warm_start: trial \w+ of .* has lr=.*outside this space's lr"):
        resolve_sources(parse_space(narrow, tmp_path / "w.yaml"))
    other_data = dict(wider, fixed={**FIXED, "width": 8, "subset": 300})
    with pytest.raises(ConfigError, match=r"warm_start: trial \w+ .* has subset=200 but this space gives subset=300, "
                                          r"so it trained on other data"):
        resolve_sources(parse_space(other_data, tmp_path / "w.yaml"))
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "sweep.json").write_text(json.dumps({"kind": "vae", "metric": "val_neg_elbo", "mode": "min", "max_t": 2}))
    with pytest.raises(ConfigError, match=r"warm_start: .*vae is a vae sweep and this space is for cnn"):
        resolve_sources(parse_space(dict(wider, warm_start=str(vae)), tmp_path / "w.yaml"))


@pytest.mark.ray
def test_pbt_mutates_running_trials_and_analyze_shows_their_lineage(tmp_path):
    from fashion_tune.reports.analysis import analyze, load_results
    from fashion_tune.reports.tradeoffs import lineage

    directory = finished("tpe+pbt")
    steps = lineage(directory)
    assert len(steps) >= 1, sorted(p.name for p in directory.iterdir())
    results = load_results(directory).set_index("trial_id")
    for step in steps.itertuples():
        assert step.trial_id in results.index and step.cloned_from in results.index
        assert step.trial_id != step.cloned_from and step.from_epoch < 6
        for key, value in step.after.items():
            low, high = BASE["params"][key]["low"], BASE["params"][key]["high"]
            assert low <= value <= high, (key, value)
    last = steps.groupby("trial_id").tail(1).set_index("trial_id")
    for trial_id, step in last.iterrows():
        assert results.loc[trial_id, "config/lr"] == pytest.approx(step.after["lr"]), "the trial ran the mutated config"
    printed: list[str] = []
    files = analyze(directory, out=tmp_path / "analysis", echo=printed.append)
    assert any(line.startswith("PBT lineage (") for line in printed)
    assert "## PBT lineage" in files["summary"].read_text() and " cloned " in files["summary"].read_text()
