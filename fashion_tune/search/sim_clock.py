"""A simulated clock for replay sweeps (`clock: simulated`): trials report in recorded-time order, one at a time.

With `clock: sleep` a replayed trial sleeps time_scale x its recorded seconds before each report, so
trials running at once report roughly in the order their recorded epochs would have finished; how
roughly depends on Ray's own per-report cost against the sleep, and runs of one seed differ (ASHA's
rungs and TPE's model see results in another order). The simulated clock replaces the sleep with a
discrete-event schedule, as Syne Tune's simulator backend does, but through the real engine: the
same Tuner, searcher, scheduler and callbacks.

- **Events.** Before each report a trial asks the clock for its turn (`SimulatedClock.turn`), giving
  the recorded seconds of that epoch. Its event is at now + seconds, where `now` is the simulated time
  of the last report granted (a trial continuing after its own report, or a trial started in the slot
  another freed, starts at that moment). The clock grants one event at a time, the earliest first
  (ties: the trial the driver created first), and grants the next only once the
  engine has acted on the last one: the granted trial came back for its next turn, or the driver no
  longer lists it as running (stopped, paused or finished) and has had a step to start what it
  starts in its place.
- **When to grant.** The driver tells the clock after every step which trials are running and which
  pending (`ClockCallback`, a Tune callback); a pending trial counts while a slot is free for it. The
  earliest event is granted when every trial that counts is waiting for its turn, and either the
  engine cannot start another (all `slots` are taken: as many as can run at once, by the searcher's
  cap and the cluster's resources; or all of the sweep's `trials`, num_samples, exist and none is
  paused), or the driver's view has not changed for
  `STABLE_STEPS` steps (a scheduler holds trials back: Hyperband's brackets, PBT).
- **Never stuck.** Trials the driver lists as running (or pending with a free slot) that do not ask for
  a turn while `PATIENCE_S` real seconds pass with no other trial coming or going (a scheduler that
  never starts them) are passed over: the earliest waiting
  event is granted anyway and counted in `forced`, which every report carries (`sim_clock_forced`); a
  run with forced grants is not guaranteed repeatable.
- **Stopped while waiting.** When the driver stops trials that wait for their turn (a stopper's
  stop_all, Ctrl-C), the clock lets them return at once (a None time), so Ray stops their actors
  without waiting out its timeouts.
- **What a report carries.** `sim_clock_s`: the simulated time of the report across the whole sweep
  (where `sim_time_s` is the trial's own recorded seconds), so a benchmark orders reports and measures
  simulated wall time to a target from it. A trial's checkpoint keeps it: a resumed sweep's new clock
  starts each restored trial where it was.

The result: no sleeping (a 300-epoch replay costs what Ray costs per report), and a run is repeatable:
the same seed gives the same reports in the same order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

STABLE_STEPS = 2  # driver steps with nothing changed before a grant with slots free
PATIENCE_S = 60.0  # real seconds with no listed trial asking for its turn before the absent ones are passed over

_DRIVER_CLOCK: Any = None  # the clock actor of the sweep this driver process runs (see ClockCallback)


class SimulatedClock:
    """The clock actor (an asyncio Ray actor: every method runs on one event loop, so each is atomic)."""

    def __init__(self, slots: int, trials: int | None = None):
        self.slots = max(1, int(slots))
        self.trials = trials  # the sweep's num_samples: once that many exist, the searcher adds none
        self.paused = 0  # trials the driver holds paused (Hyperband, PBT): it may start them in a free slot
        self.now = 0.0
        self.waiting: dict[str, tuple[float, asyncio.Future]] = {}
        self.granted: str | None = None  # granted, and the engine has not yet acted on its report
        self.live: frozenset[str] = frozenset()  # the driver's running trials at its last step, and pending ones with a slot
        self.same_steps = 0  # driver steps in a row that found nothing changed
        self.last_view: tuple | None = None
        self.created: dict[str, int] = {}  # trial id -> its place in the driver's list (creation order): ties
        self.grants = 0
        self.forced = 0
        self.blocked_since: float | None = None  # real time since when waiting trials wait on the same absent ones
        self.blocked_on: frozenset[str] = frozenset()

    async def turn(self, trial_id: str, seconds: float, floor: float = 0.0) -> tuple[float | None, int]:
        """Wait for the trial's next report, `seconds` of recorded time from now (from `floor` where that is
        later: a restored trial's own time). Returns the report's simulated time and the forced grants so far;
        the time is None where the driver stopped the trial while it waited (it should return)."""
        at = max(self.now, floor) + max(float(seconds), 0.0)
        future = asyncio.get_running_loop().create_future()
        self.waiting[trial_id] = (at, future)
        if self.granted == trial_id:
            self.granted = None  # it continued: the engine acted on its report
        self._grant(full_only=True)
        return await future

    def sync(self, running: list[str], pending: list[str], paused: int = 0) -> None:
        """The driver's running and pending trials after a step (ClockCallback.on_step_end), each in the order
        the driver created them. A pending trial counts only while a slot is free for it to start in."""
        self.paused = paused
        free = max(self.slots - len(running), 0)
        self.live = frozenset(running) | frozenset(pending[:free])
        for trial_id in [*running, *pending]:
            self.created.setdefault(trial_id, len(self.created))
        if self.granted is not None and self.granted not in self.live:
            self.granted = None  # stopped, paused or ended after its report
        listed = {*running, *pending}
        for trial_id in [t for t in self.waiting if t not in listed]:
            at, future = self.waiting.pop(trial_id)  # the driver stopped it while it waited (the sweep ends):
            future.set_result((None, self.forced))  # let it return, so Ray stops its actor at once
        view = (self.live, frozenset(self.waiting), self.grants, self.granted)
        self.same_steps = self.same_steps + 1 if view == self.last_view else 0
        self.last_view = view
        self._grant(full_only=self.same_steps < STABLE_STEPS)

    def _all_started(self) -> bool:
        """Whether the driver can start nothing more: every trial of the sweep exists and none is paused."""
        return self.trials is not None and len(self.created) >= self.trials and not self.paused

    def _grant(self, full_only: bool) -> None:
        if self.granted is not None or not self.waiting:
            return
        absent = self.live - self.waiting.keys()
        if absent:
            now = time.monotonic()
            if absent != self.blocked_on:  # another trial came (or went): the driver is not stuck
                self.blocked_on, self.blocked_since = frozenset(absent), now
            if now - self.blocked_since < PATIENCE_S:
                return
            self.forced += 1  # a listed trial never asked: go on without it
        elif full_only and len(self.waiting) < self.slots and not self._all_started():
            return
        self.blocked_on, self.blocked_since = frozenset(), None
        trial_id = min(self.waiting, key=lambda t: (self.waiting[t][0], self.created.get(t, len(self.created)), t))
        at, future = self.waiting.pop(trial_id)
        self.now = max(self.now, at)
        self.granted = trial_id
        self.grants += 1
        future.set_result((at, self.forced))


def start_clock(slots: int, trials: int | None = None):
    """A new clock actor for the sweep this process drives (the one ClockCallback syncs); returns its handle."""
    import ray

    global _DRIVER_CLOCK
    stop_clock()
    _DRIVER_CLOCK = ray.remote(num_cpus=0, max_concurrency=10_000)(SimulatedClock).remote(slots, trials)
    return _DRIVER_CLOCK


def stop_clock() -> None:
    import ray

    global _DRIVER_CLOCK
    if _DRIVER_CLOCK is not None:
        try:
            ray.kill(_DRIVER_CLOCK)
        except Exception:  # noqa: BLE001 - Ray already shut down: the actor went with it
            pass
        _DRIVER_CLOCK = None


class ClockCallback(Callback):
    """Tells the driver's clock, after each step, which trials are running and which pending.

    It holds no handle (a resumed sweep unpickles it with the experiment state): it syncs whatever clock this
    process started, and does nothing where none was (`clock: sleep`)."""

    def on_step_end(self, iteration: int, trials: list, **info):
        if _DRIVER_CLOCK is not None:
            _DRIVER_CLOCK.sync.remote([t.trial_id for t in trials if t.status == Trial.RUNNING],
                                      [t.trial_id for t in trials if t.status == Trial.PENDING],
                                      sum(t.status == Trial.PAUSED for t in trials))

    def on_experiment_end(self, trials: list, **info):
        stop_clock()
