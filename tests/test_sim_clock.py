"""The simulated clock of replay sweeps (fashion_tune/search/sim_clock.py): its grant rule on its own, then through
the real engine, where a seeded replay sweep must report the same epochs in the same order every run."""

import asyncio
import json
from pathlib import Path

import pytest

from fashion_tune.search import sim_clock
from fashion_tune.search.sim_clock import SimulatedClock
from test_replay import EPOCHS, replay_space, write_space, write_table
from tiny_sweeps import no_ray_left_running  # noqa: F401  (autouse: Ray shut down after each test)


def run(coroutine):
    return asyncio.run(coroutine)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_earliest_event_is_granted_once_every_slot_waits_and_the_engine_acted_on_the_last():
    async def scenario():
        clock = SimulatedClock(slots=2)
        clock.sync(["a", "b"], [])
        a = asyncio.ensure_future(clock.turn("a", 5.0))
        await settle()
        assert not a.done(), "b has not asked yet: its event may come first"
        b = asyncio.ensure_future(clock.turn("b", 3.0))
        await settle()
        assert b.done() and b.result() == (3.0, 0) and not a.done()
        assert clock.now == 3.0 and clock.granted == "b"

        # b's report is with the engine: nothing else is granted until b comes back for its next epoch ...
        clock.sync(["a", "b"], [])
        await settle()
        assert not a.done()
        b2 = asyncio.ensure_future(clock.turn("b", 3.0))  # ... at 3 + 3 = 6, after a's 5
        await settle()
        assert a.done() and a.result() == (5.0, 0) and not b2.done()

        # a is stopped after its report (the driver no longer lists it) and a new trial c takes its slot at 5
        clock.sync(["b"], ["c"])
        await settle()
        assert not b2.done(), "c is pending with a free slot: it starts before anything later is granted"
        c = asyncio.ensure_future(clock.turn("c", 0.5))
        await settle()
        assert c.done() and c.result() == (5.5, 0) and not b2.done()
        clock.sync(["b", "c"], [])
        c2 = asyncio.ensure_future(clock.turn("c", 0.5))
        await settle()
        assert b2.result() == (6.0, 0) and not c2.done(), "a tie (6.0) goes to the trial the driver created first"
        assert clock.created == {"a": 0, "b": 1, "c": 2}
        b3 = asyncio.ensure_future(clock.turn("b", 3.0))
        await settle()
        assert c2.result() == (6.0, 0) and not b3.done()

    run(scenario())


def test_with_a_slot_free_the_clock_waits_until_the_driver_has_added_nothing_for_a_few_steps():
    async def scenario():
        clock = SimulatedClock(slots=4)  # the search has ended: two trials left, two slots free
        clock.sync(["a", "b"], [])
        a = asyncio.ensure_future(clock.turn("a", 1.0))
        asyncio.ensure_future(clock.turn("b", 2.0))
        await settle()
        for step in range(sim_clock.STABLE_STEPS):
            assert not a.done(), f"granted after {step} quiet driver steps"
            clock.sync(["a", "b"], [])
            await settle()
        clock.sync(["a", "b"], [])
        await settle()
        assert a.result() == (1.0, 0)

    run(scenario())


def test_once_every_trial_of_the_sweep_exists_and_none_is_paused_a_free_slot_stays_free():
    async def scenario():
        clock = SimulatedClock(slots=4, trials=2)
        clock.sync(["a", "b"], [], paused=1)  # a paused trial may be started in a free slot: wait for the driver
        a = asyncio.ensure_future(clock.turn("a", 1.0))
        asyncio.ensure_future(clock.turn("b", 2.0))
        await settle()
        assert not a.done()
        clock.sync(["a", "b"], [], paused=0)  # nothing paused, nothing left to create: no need to wait
        await settle()
        assert a.result() == (1.0, 0)

    run(scenario())


def test_a_listed_trial_that_never_asks_is_passed_over_and_counted(monkeypatch):
    monkeypatch.setattr(sim_clock, "PATIENCE_S", 0.05)

    async def scenario():
        clock = SimulatedClock(slots=2)
        clock.sync(["a", "ghost"], [])
        a = asyncio.ensure_future(clock.turn("a", 1.0))
        await settle()
        assert not a.done()
        await asyncio.sleep(0.1)
        clock.sync(["a", "ghost"], [])
        await settle()
        assert a.result() == (1.0, 1) and clock.forced == 1

    run(scenario())


def test_a_trial_the_driver_stops_while_it_waits_is_let_go_at_once():
    async def scenario():
        clock = SimulatedClock(slots=2)
        clock.sync(["a", "b"], [])
        a = asyncio.ensure_future(clock.turn("a", 1.0))
        await settle()
        clock.sync([], [])  # the stopper ended the sweep: a is no longer running
        await settle()
        assert a.result() == (None, 0) and not clock.waiting

    run(scenario())


def test_a_restored_trial_starts_from_its_own_simulated_time():
    async def scenario():
        clock = SimulatedClock(slots=1)
        clock.sync(["a"], [])
        assert await clock.turn("a", 2.0, floor=40.0) == (42.0, 0)

    run(scenario())


# --- through the real engine --------------------------------------------------------------------


def report_order(experiment: Path) -> list[tuple]:
    rows = [json.loads(line) for path in experiment.glob("trial_*/result.json") for line in path.read_text().splitlines()]
    rows.sort(key=lambda r: (r["sim_clock_s"], r["reported_at"]))
    return [(r["sim_clock_s"], r["epoch"], r["config"]["lr"], r["config"]["dropout"], r["sim_clock_forced"]) for r in rows]


@pytest.mark.ray
@pytest.mark.parametrize("scheduler", [
    {"type": "asha", "max_t": EPOCHS, "grace_period": 1, "reduction_factor": 3},
    {"type": "pbt", "max_t": EPOCHS, "perturbation_interval": 2, "mutate": ["lr", "dropout"]},
], ids=["asha", "pbt"])
def test_a_seeded_replay_sweep_on_the_simulated_clock_reports_the_same_epochs_in_the_same_order(tmp_path, scheduler):
    from fashion_tune.search.request import SweepRequest
    from fashion_tune.search.sweep import run_sweep

    write_table(tmp_path)
    space_file = write_space(tmp_path, replay_space(tmp_path / "runs.jsonl", clock="simulated", num_samples=10,
                                                    max_concurrent_trials=3, scheduler=scheduler,
                                                    resources_per_trial={"cpu": 0.3}))  # 3 at once on 1 CPU (PBT too)
    orders = []
    for name in ("first", "second"):
        outcome = run_sweep(SweepRequest("replay", space_file, name=name, storage=tmp_path / "results", num_cpus=1,
                                         verbose=0), echo=lambda line: None)
        assert outcome.status == "finished"
        orders.append(report_order(tmp_path / "results" / name))
    first, second = orders
    assert first == second
    assert all(forced == 0 for *_, forced in first)
    times = [t for t, *_ in first]
    assert times == sorted(times) and times[0] > 0
    # The synthetic table's epochs take width / 8 recorded seconds (1 or 2): the clock is the recorded time,
    # three trials at once, not the wall clock.
    assert max(times) <= 10 * EPOCHS * 2 / 3 + 2 * EPOCHS
    info = json.loads((tmp_path / "results" / "first" / "sweep.json").read_text())
    assert info["replay"]["clock"] == "simulated"
