"""The Ray internals fashion_tune.search.schedulers (and .searcher) rely on, checked so a Ray upgrade fails here, loudly.

Each test names the private field or method, checks it still exists with the same shape, and that a
subclass using it still does its job (restored results replayed, restored trials kept out of
HyperBand's brackets, PBT scores restored). No Ray runtime is needed.
"""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pyarrow.fs
import pytest

from fashion_tune.search.schedulers import WORST_REWARD, SweepASHA, SweepHyperBand, SweepMedian, SweepPBT

UPGRADE = "a Ray upgrade changed what fashion_tune.search.schedulers relies on (see its docstring): "


class FakeTrial(SimpleNamespace):
    """What the schedulers read of a Tune trial; hashable by identity, as Tune's trials are."""

    TERMINATED, ERROR, PENDING, PAUSED = "TERMINATED", "ERROR", "PENDING", "PAUSED"
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def is_finished(self) -> bool:
        return self.status in (self.TERMINATED, self.ERROR)


def fake_trial(tmp_path, trial_id, values, metric="val_acc", status="RUNNING", config=None, checkpoint_epoch=None):
    """A trial as the schedulers see it on restore: its result.json holds `values`, one per epoch; Tune
    restores it from the checkpoint of `checkpoint_epoch` (default: the last epoch; 0: none)."""
    folder = tmp_path / trial_id
    folder.mkdir()
    rows = [{"epoch": e + 1, metric: v} for e, v in enumerate(values)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(folder))
    epoch = len(values) if checkpoint_epoch is None else checkpoint_epoch
    latest = SimpleNamespace(metrics={"epoch": epoch, metric: values[epoch - 1]}) if epoch else None
    return FakeTrial(trial_id=trial_id, storage=storage, status=status, config=dict(config or {}),
                     experiment_tag=trial_id, latest_checkpoint_result=latest)


def parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


def test_asha_fields():
    asha = SweepASHA(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")
    assert (asha._metric, asha._metric_op, asha._time_attr) == ("val_acc", 1.0, "epoch"), UPGRADE + "ASHA's metric fields"
    trial = SimpleNamespace(trial_id="t", storage=None)
    asha.on_trial_add(None, trial)
    assert isinstance(asha._trial_info, dict) and "t" in asha._trial_info, UPGRADE + "ASHA._trial_info by trial id"
    assert parameters(asha._trial_info["t"].on_result) == ["trial", "cur_iter", "cur_rew"], UPGRADE + "bracket.on_result"


def test_median_rule_fields_and_replay(tmp_path):
    median = SweepMedian(time_attr="epoch", grace_period=1, min_samples_required=1)
    median.set_search_properties("val_acc", "max")
    assert (median._metric, median._time_attr) == ("val_acc", "epoch"), UPGRADE + "MedianStoppingRule's fields"
    restored = fake_trial(tmp_path, "a", [0.8, 0.85])
    median.on_trial_add(None, restored)
    assert [r["epoch"] for r in median._results[restored]] == [1, 2], UPGRADE + "MedianStoppingRule._results"
    new = fake_trial(tmp_path, "b", [])
    median.on_trial_add(None, new)
    # Only the replayed results give the rule a median to compare with: a worse new trial stops.
    assert median.on_trial_result(None, new, {"epoch": 2, "val_acc": 0.1}) == "STOP"


def test_hyperband_fields_and_restored_trials_outside_the_brackets(tmp_path):
    hyperband = SweepHyperBand(time_attr="epoch", max_t=4, reduction_factor=2)
    hyperband.set_search_properties("val_acc", "max")
    fresh, restored = fake_trial(tmp_path, "new", []), fake_trial(tmp_path, "old", [0.5, 0.6])
    done = fake_trial(tmp_path, "done", [], status="TERMINATED")
    for trial in (fresh, restored, done):
        hyperband.on_trial_add(None, trial)
    assert isinstance(hyperband._trial_info, dict), UPGRADE + "HyperBandScheduler._trial_info"
    assert fresh in hyperband._trial_info and restored not in hyperband._trial_info and done not in hyperband._trial_info
    assert hyperband.on_trial_result(None, restored, {"epoch": 3, "val_acc": 0.0}) == "CONTINUE"
    hyperband.on_trial_complete(None, restored, {"epoch": 4, "val_acc": 0.0})  # no KeyError from Ray's brackets


class FakeController(SimpleNamespace):
    """What HyperBand calls on Tune's controller: stop_trial (which, as Tune's does for a PAUSED trial,
    marks it TERMINATED and tells the scheduler on_trial_remove) and the snapshot flag."""

    def __init__(self, scheduler):
        super().__init__(scheduler=scheduler, stopped=[], marked=[])

    def stop_trial(self, trial):
        if trial.status in ("TERMINATED", "ERROR"):
            return
        if trial.status == "PAUSED":
            self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)

    def _mark_trial_to_checkpoint(self, trial):
        self.marked.append(trial.trial_id)

    def get_trials(self):
        return list(self.scheduler._trial_info)


def test_hyperband_stops_the_trials_a_bracket_paused_when_its_last_trial_ends_on_its_own(tmp_path):
    """Three trials in a bracket that runs them to max_t: the first two reach max_t and are PAUSED to
    wait for the third, which then ends on its own (its last result done). Ray leaves the two paused
    forever (the sweep never ends); the bracket's end must stop them."""
    hyperband = SweepHyperBand(time_attr="epoch", max_t=4, reduction_factor=2)
    hyperband.set_search_properties("val_acc", "max")
    controller = FakeController(hyperband)
    trials = [fake_trial(tmp_path, f"t{i}", [], status="PENDING") for i in range(3)]
    for trial in trials:
        trial.is_saving = False
        hyperband.on_trial_add(controller, trial)
    bracket, _ = hyperband._trial_info[trials[0]]
    assert [hyperband._trial_info[t][0] for t in trials] == [bracket] * 3 and bracket._halves == 0, \
        UPGRADE + "HyperBand's first bracket for max_t 4, reduction factor 2"
    for trial in trials:
        trial.status = "RUNNING"
    for trial, value in zip(trials[:2], (0.5, 0.6)):
        assert hyperband.on_trial_result(controller, trial, {"epoch": 4, "val_acc": value}) == "PAUSE"
        trial.status = "PAUSED"
    hyperband.on_trial_complete(controller, trials[2], {"epoch": 4, "val_acc": 0.7, "done": True})
    trials[2].status = "TERMINATED"
    assert sorted(controller.stopped) == ["t0", "t1"], [t.status for t in trials]
    assert {"t0", "t1", "t2"} <= set(controller.marked)  # each stop reaches the experiment snapshot


def test_hyperband_stops_a_trial_whose_pause_was_still_saving_when_its_bracket_ended(tmp_path):
    """As above, but the first trial's pause is still saving its checkpoint (Tune keeps it RUNNING
    until the save lands) when the third trial ends the bracket: the bracket's cleanup passes it by,
    and once PAUSED nothing would wake it (a CI run waited 900 s on this). Tune's next request for a
    trial to run must stop it."""
    hyperband = SweepHyperBand(time_attr="epoch", max_t=4, reduction_factor=2)
    hyperband.set_search_properties("val_acc", "max")
    controller = FakeController(hyperband)
    trials = [fake_trial(tmp_path, f"t{i}", [], status="PENDING") for i in range(3)]
    for trial in trials:
        hyperband.on_trial_add(controller, trial)
        trial.status = "RUNNING"
    for trial, value in zip(trials[:2], (0.5, 0.6)):
        assert hyperband.on_trial_result(controller, trial, {"epoch": 4, "val_acc": value}) == "PAUSE"
    trials[1].status = "PAUSED"  # t0's save is still in flight: RUNNING
    hyperband.on_trial_complete(controller, trials[2], {"epoch": 4, "val_acc": 0.7, "done": True})
    trials[2].status = "TERMINATED"
    assert controller.stopped == ["t1"]
    trials[0].status = "PAUSED"  # the save landed
    assert hyperband.choose_trial_to_run(controller) is None
    assert controller.stopped == ["t1", "t0"] and {t.status for t in trials} == {"TERMINATED"}
    assert "t0" in controller.marked


def test_hyperband_flags_a_stopped_paused_trial_for_the_experiment_snapshot(tmp_path):
    from ray.tune.execution.tune_controller import TuneController

    assert parameters(TuneController._mark_trial_to_checkpoint) == ["trial"], \
        UPGRADE + "TuneController._mark_trial_to_checkpoint(trial)"
    hyperband = SweepHyperBand(time_attr="epoch", max_t=4, reduction_factor=2)
    hyperband.set_search_properties("val_acc", "max")
    controller = FakeController(hyperband)
    paused, restored = fake_trial(tmp_path, "cut", [], status="PAUSED"), fake_trial(tmp_path, "old", [0.5])
    hyperband.on_trial_add(controller, paused)
    hyperband.on_trial_add(controller, restored)
    hyperband.on_trial_remove(controller, paused)  # what TuneController.stop_trial calls for a PAUSED trial
    hyperband.on_trial_remove(controller, restored)  # outside the brackets: flagged all the same
    assert controller.marked == ["cut", "old"]


def test_pbt_fields_and_restored_scores(tmp_path):
    from ray.tune.schedulers.pbt import PopulationBasedTraining, _fill_config, _PBTTrialState

    pbt = SweepPBT(time_attr="epoch", max_t=4, perturbation_interval=1, hyperparam_mutations={"lr": [1e-3, 1e-2]},
                   quantile_fraction=0.5, resample_probability=0.5)
    pbt.set_search_properties("val_acc", "max")
    assert pbt._metric_op == 1.0 and set(pbt._hyperparam_mutations) == {"lr"}, UPGRADE + "PBT's fields"
    trials = [fake_trial(tmp_path, name, values, config={"lr": 1e-3})
              for name, values in (("a", [0.5, 0.6]), ("b", [0.2, 0.3]), ("c", [0.4]), ("end", [0.1] * 4))]
    for trial in trials:
        pbt.on_trial_add(None, trial)
    state = pbt._trial_state[trials[0]]
    assert isinstance(state, _PBTTrialState), UPGRADE + "PBT._trial_state holds _PBTTrialState"
    assert (state.last_score, state.last_train_time, state.last_perturbation_time) == (0.6, 2, 2)
    assert state.last_result["val_acc"] == 0.6
    lower, upper = pbt._quantiles()  # Ray's: [end, b] and [c, a] by score; "end" is at max_t
    assert (lower, upper) == ([trials[1]], [trials[2], trials[0]]), "a trial at max_t is neither cloned nor replaced"
    assert parameters(PopulationBasedTraining._log_config_on_step) == [
        "trial_state", "new_state", "trial", "trial_to_clone", "new_config"], UPGRADE + "PBT._log_config_on_step"
    config: dict = {}
    _fill_config(config, "lr", [1e-3])
    assert config == {"lr": 1e-3}, UPGRADE + "pbt._fill_config"


def test_asha_ranks_non_finite_results_as_the_worst_finite_reward():
    asha = SweepASHA(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_loss", "min")
    trial = SimpleNamespace(trial_id="t", storage=None)
    asha.on_trial_add(None, trial)
    asha.on_trial_result(None, trial, {"epoch": 1, "val_loss": float("inf")})
    assert asha._brackets[0]._rungs[-1][1] == {"t": WORST_REWARD}, UPGRADE + "ASHA's rungs"


def test_optuna_search_fields_the_searcher_relies_on():
    """OptunaSearch's `_ot_trials`, `_completed_trials`, `_space`, `_metric`, `_mode`; SearchGenerator's
    public state with its "counter"; ConcurrencyLimiter's `live_trials` and `num_unfinished_live_trials`."""
    import optuna

    from fashion_tune.spaces.space import parse_space
    from fashion_tune.search.searcher import optuna_searcher, reconcile
    from fashion_tune.search.strategies import make_searcher

    space = parse_space({"kind": "cnn", "num_samples": 3, "max_concurrent_trials": 2, "scheduler": {"max_t": 2},
                         "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, "s.yaml")
    generator = make_searcher(space)
    limiter, searcher = generator.searcher, optuna_searcher(generator)
    assert callable(searcher._space) and (searcher._metric, searcher._mode) == ("val_acc", "max"), UPGRADE + "OptunaSearch"
    limiter.suggest("a")
    assert isinstance(searcher._ot_trials["a"], optuna.Trial), UPGRADE + "OptunaSearch._ot_trials"
    assert isinstance(searcher._completed_trials, set), UPGRADE + "OptunaSearch._completed_trials"
    assert limiter.live_trials == {"a"} and limiter.num_unfinished_live_trials == 1, UPGRADE + "ConcurrencyLimiter"
    assert generator.get_state()["counter"] == 0  # Tune counts through next_trial, not suggest
    reconcile(generator, [SimpleNamespace(trial_id="a", status="RUNNING", config={}, relative_logdir=None)] * 3,
              lambda t: [])
    assert generator.get_state()["counter"] == 3 and generator.is_finished(), UPGRADE + "SearchGenerator's counter"


@pytest.mark.parametrize("name", ["SweepASHA", "SweepMedian", "SweepHyperBand", "SweepPBT"])
def test_each_subclass_overrides_methods_ray_still_calls(name):
    import fashion_tune.search.schedulers as schedulers

    cls = getattr(schedulers, name)
    for method, body in vars(cls).items():
        if callable(body) and not method.startswith("__"):
            base = next((getattr(b, method) for b in cls.__mro__[1:] if method in vars(b)), None)
            if base is None:
                continue  # our own helper
            assert parameters(body) == parameters(base), UPGRADE + f"{name}.{method} no longer matches Ray's signature"


def test_trial_latest_checkpoint_result_is_what_the_replay_reads():
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    assert isinstance(inspect.getattr_static(Trial, "latest_checkpoint_result"), property), UPGRADE + "Trial.latest_checkpoint_result"
    assert parameters(_TrainingResult.__init__) == ["checkpoint", "metrics"], UPGRADE + "_TrainingResult(checkpoint, metrics)"


def test_asha_stops_a_trial_again_at_the_rung_it_was_stopped_at_after_the_last_snapshot(tmp_path):
    """A trial ASHA stopped at epoch 4 after the last snapshot is restored from its epoch-2 checkpoint
    and runs epochs 3-4 again; only epochs 1-2 are replayed, so rung 4 judges it again, as before."""
    asha = SweepASHA(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")
    for name in ("a", "b", "c"):  # finished: their rows all count
        asha.on_trial_add(None, fake_trial(tmp_path, name, [0.7, 0.8, 0.85, 0.9] + [0.9] * 4, status="TERMINATED"))
    cut = fake_trial(tmp_path, "cut", [0.3, 0.35, 0.4, 0.42], status="PENDING", checkpoint_epoch=2)
    asha.on_trial_add(None, cut)
    assert asha.on_trial_result(None, cut, {"epoch": 3, "val_acc": 0.4}) == "CONTINUE"
    assert asha.on_trial_result(None, cut, {"epoch": 4, "val_acc": 0.42}) == "STOP"
    # A trial restored with no checkpoint starts over: nothing of its lost run is replayed.
    fresh = fake_trial(tmp_path, "fresh", [0.95, 0.96], status="PENDING", checkpoint_epoch=0)
    asha.on_trial_add(None, fresh)
    assert asha.on_trial_result(None, fresh, {"epoch": 1, "val_acc": 0.1}) == "STOP"


def test_the_median_rule_after_a_resume_holds_what_the_uninterrupted_run_held(tmp_path):
    """Fed live, Ray's rule appends each result and an ended trial's last result once more; the
    replay from result.json gives the same lists, re-run epochs once, a live trial up to its checkpoint."""
    histories = {"done": ([0.5, 0.6, 0.7], "TERMINATED"), "stopped": ([0.2, 0.25], "TERMINATED"),
                 "running": ([0.4, 0.5], "PENDING")}
    controller = SimpleNamespace(get_live_trials=lambda: [])  # nothing waits, so the rule never pauses
    live = SweepMedian(time_attr="epoch", grace_period=1, min_samples_required=5)
    live.set_search_properties("val_acc", "max")
    trials = {}
    for name, (values, status) in histories.items():
        trials[name] = trial = FakeTrial(trial_id=name, status="RUNNING", storage=None)
        live.on_trial_add(None, trial)
        for epoch, value in enumerate(values, 1):
            live.on_trial_result(controller, trial, {"epoch": epoch, "val_acc": value})
        if status == "TERMINATED":
            live.on_trial_complete(None, trial, {"epoch": len(values), "val_acc": values[-1]})
    # The kill: "running" had reported epochs 3-4 after the snapshot that names its epoch-2 checkpoint,
    # and epoch 3 once more (a retry re-ran it); it runs them again after the resume, live.
    replayed = SweepMedian(time_attr="epoch", grace_period=1, min_samples_required=5)
    replayed.set_search_properties("val_acc", "max")
    restored = {}
    for name, (values, status) in histories.items():
        extra = [0.55, 0.55] if name == "running" else []
        restored[name] = trial = fake_trial(tmp_path, name, values + extra, status=status,
                                            checkpoint_epoch=len(values))
        if extra:  # the same epoch written twice to result.json
            with open(tmp_path / name / "result.json", "a") as f:
                f.write(json.dumps({"epoch": 3, "val_acc": 0.55}) + "\n")
        replayed.on_trial_add(None, trial)

    def held(rule, by_name):
        return {name: [(r["epoch"], r["val_acc"]) for r in rule._results[t]] for name, t in by_name.items()}

    assert held(replayed, restored) == held(live, trials)
    # A restored trial with nothing to replay gets no entry: Ray's rule reads every entry's last result.
    empty = fake_trial(tmp_path, "empty", [], status="PENDING")
    replayed.on_trial_add(None, empty)
    assert empty not in replayed._results
    assert replayed.on_trial_result(controller, empty, {"epoch": 1, "val_acc": 0.3}) == "CONTINUE"


def test_pbt_lineage_written_before_a_resume_survives_the_first_exploit_in_a_new_driver(tmp_path):
    """PBT appends its logs in the driver's staging folder, which Ray uploads over the experiment's; a
    resumed driver has a fresh staging folder, so they are first copied back from the experiment."""
    from ray.tune.schedulers.pbt import _PBTTrialState

    from fashion_tune.search.schedulers import LINEAGE_FILE

    experiment, staging = tmp_path / "experiment", tmp_path / "staging-of-the-new-driver"
    experiment.mkdir()
    staging.mkdir()  # Ray makes it as the driver starts
    before = [json.dumps({"trial_id": "b", "cloned_from": "a", "at_epoch": e}) + "\n" for e in (2, 4)]
    (experiment / LINEAGE_FILE).write_text("".join(before))
    (experiment / "pbt_global.txt").write_text('["b", "a", 2, 2, {}, {}]\n')
    (experiment / "pbt_policy_b.txt").write_text('["b", "a", 2, 2, {}, {}]\n')
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(experiment))
    pbt = SweepPBT(time_attr="epoch", max_t=8, perturbation_interval=2, hyperparam_mutations={"lr": [1e-3, 1e-2]})
    pbt.set_search_properties("val_acc", "max")
    trials = [FakeTrial(trial_id=name, storage=storage, local_experiment_path=str(staging), local_dir=str(staging), status="PENDING",
                        config={"lr": 1e-3}, experiment_tag=name, last_result={"training_iteration": 6},
                        relative_logdir=None)
              for name in ("a", "b")]
    for trial in trials:
        pbt.on_trial_add(None, trial)
    a, b = trials
    pbt._log_config_on_step(_PBTTrialState(b), _PBTTrialState(a), b, a, {"lr": 1e-2})
    lines = (staging / LINEAGE_FILE).read_text().splitlines(keepends=True)
    assert lines[:2] == before and len(lines) == 3 and json.loads(lines[2])["cloned_from"] == "a"
    assert len((staging / "pbt_global.txt").read_text().splitlines()) == 2
    assert len((staging / "pbt_policy_b.txt").read_text().splitlines()) == 2
