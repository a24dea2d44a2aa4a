"""Replay: a sweep whose trials report recorded learning curves instead of training.

A space file with `kind: replay` and `table: PATH` (the curves `benchmarks/record_curves.py`
records: its `runs.jsonl`, or the `curves.csv` it writes from it) runs through the same `Tuner`,
`SweepOptuna` searcher, scheduler, callbacks and store as a real sweep; only the trainable differs.
Each trial reports, epoch by epoch, the recorded curve of the configuration nearest to its own, so a
500-trial sweep costs seconds to minutes and the searchers and schedulers can be compared at scale.

- **Which curve.** The searchers see the space file's distributions, as in a real sweep (not the
  recorded grid: TPE, GP and CMA-ES would treat 400 scattered values as unordered categories).
  A trial's config is answered by its nearest recorded configuration (1-NN): `choice` parameters
  must match exactly (when no recorded run matches every choice, the fewest mismatches win), range
  parameters are compared in the space's own coordinates, each scaled to [0, 1] over its low..high
  (in log space for `loguniform`). So the replayed objective is piecewise constant: each recorded
  configuration answers the region of the space nearest to it. The run of the lowest recorded seed
  is replayed (the repeats with other seeds give the noise; see `ReplayTable.noise`). Each report
  names the configuration it replays (`replay_config_id`) and how far it was (`replay_distance`).
  With `lookup: interpolate` in the space file, a trial off the table replays instead a blend of
  the `INTERPOLATE_K` nearest recorded configurations that share its choices, each epoch their mean
  weighted by 1 / distance^2 (`ReplayTable.blended`): the objective becomes continuous in the ranges,
  so a searcher that refines around its best trials gets a different answer for each proposal,
  where 1-NN answers every proposal in a recorded configuration's region with the same curve
  (TPE spent 44% of a 300-epoch budget on such repeats; README, "Benchmark on recorded curves").
  A blend never passes its best neighbour, and it smooths peaks, so the table's best is reached
  only on the recorded point.
- **Neighbours are not twins.** Trained for real, two nearby configurations differ at least by
  seed-to-seed noise; replayed, they would report the same curve, and identical curves tie at every
  ASHA rung. So where the table repeats at least `NOISE_PAIRS` configurations with a second seed, a
  trial off the recorded point (distance > 0) replays its curve shifted by z x sd(epoch): sd(epoch) is
  the recorded seed-to-seed standard deviation of that epoch, estimated robustly over the repeated
  configurations (1.4826 x the median |seed b - seed a| / sqrt 2, so the few configurations whose
  first epochs swing by 0.2 between seeds do not set it), and z is one standard normal per trial,
  drawn from a hash of its searched values (the same config always replays the same) and kept for
  every epoch, as a seed's luck persists through training. val_acc moves by +z x sd, val_loss by
  -z x its own sd. `replay_noise` gives z. A trial exactly on a recorded configuration replays it
  unchanged. (Adding one repeated configuration's whole (b - a) / sqrt 2 curve instead, as before,
  moved an epoch-1 value by up to 0.17 and let replays pass the table's best by 0.12.)
- **What it reports.** The recorded `val_acc`, `val_loss`, `train_loss`, `epoch_time_s` and
  `diverged` of each epoch (a recorded run that diverged ends there, as training would),
  `replay_val_acc` (the val_acc before seed noise, which a benchmark scores), `params`,
  `sim_time_s`: the trial's simulated seconds so far (the recorded epoch times summed),
  `reported_at` (the wall clock, finer than Ray's `timestamp`, to order reports across trials) and
  `node_id` (the Ray node it ran on, as a training trial reports it).
- **The clock.** What orders the reports of trials running at once (`clock:` in the space file):
  with `clock: sleep` (the default) the trial sleeps `time_scale` x the recorded seconds of each epoch
  before reporting it (`time_scale:`, default `DEFAULT_TIME_SCALE`), so trials report roughly in the
  order their recorded epochs would have finished, as far as the sleep outweighs Ray's own per-report
  cost (see README, "Replay"), and runs of one seed differ; `time_scale: 0` replays as fast as Ray goes
  (report order then follows Ray, not the recording). With `clock: simulated` nothing sleeps: a clock
  actor grants the reports one at a time in recorded-time order (`fashion_tune.search.sim_clock`), so
  a seeded run is repeatable, and each report carries `sim_clock_s`, its simulated time in the sweep.
- **Checkpoints.** Each epoch saves a tiny checkpoint (`replay.json`: the epoch), so a restarted or
  resumed trial continues where it stopped, and retention and `--resume` work as in a real sweep.
  A replayed trial has no model: it cannot be promoted.

`fixed:` is refused (the recording fixed those values); every parameter of the table must be
searched, every searched parameter must be a column of the table, a choice may only offer values
the table holds, and `max_t` may not pass the recorded epochs. This module imports neither torch
nor the space parser at the top: Ray's workers import it to run a trial, and a replay trial should
cost them a few MB, not a torch import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashion_tune.util.errors import ConfigError

if TYPE_CHECKING:
    from fashion_tune.spaces.space import SearchSpace

CHECKPOINT = "replay.json"
EPOCH_FIELDS = ("val_acc", "val_loss", "train_loss", "epoch_time_s", "diverged")  # as record_curves.py writes them
METRICS = ("val_acc", "val_loss", "train_loss")
_NOT_PARAMS = {"config_id", "seed", "params", "params_count", "epoch", "wall_s", *EPOCH_FIELDS}
INTERPOLATE_K = 4  # neighbours a `lookup: interpolate` replay blends
NOISE_PAIRS = 10  # repeated configurations a table needs before off-table trials get recorded noise
NOISY = {"val_acc": 1.0, "val_loss": -1.0}  # the metrics noise moves, and which way for a lucky seed (z > 0)
_FIX = "record it with benchmarks/record_curves.py (runs.jsonl), or write curves.csv with its --table"


@dataclass(frozen=True)
class RecordedRun:
    """One recorded (configuration, seed) run: its searched values and its per-epoch record."""

    config_id: int
    seed: int
    params: dict[str, Any]
    epochs: dict[str, np.ndarray]  # EPOCH_FIELDS -> one value per epoch (NaN where none was recorded)
    params_count: float = math.nan

    @property
    def length(self) -> int:
        return len(self.epochs["val_acc"])


@dataclass
class ReplayTable:
    """The recorded runs of a table, the one replayed per configuration, and the nearest-config lookup."""

    path: str
    runs: list[RecordedRun]
    param_names: tuple[str, ...]
    sha256: str = ""
    _replayed: dict[int, RecordedRun] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for run in sorted(self.runs, key=lambda r: (r.config_id, r.seed)):
            self._replayed.setdefault(run.config_id, run)  # the lowest seed of each configuration
        self._ids = np.array(sorted(self._replayed))
        self._columns = {name: np.array([self._replayed[i].params[name] for i in self._ids], dtype=object)
                         for name in self.param_names}
        self._coordinates: dict[tuple, tuple[np.ndarray, list]] = {}
        self.noise_sd = self._noise_sd()

    def _noise_sd(self) -> dict[str, np.ndarray]:
        """{metric: robust seed-to-seed sd per epoch} over the configurations recorded with two seeds (their two
        lowest, same length, both finite throughout): 1.4826 x median |b - a| / sqrt 2. Empty below NOISE_PAIRS."""
        by_config: dict[int, list[RecordedRun]] = {}
        for run in sorted(self.runs, key=lambda r: (r.config_id, r.seed)):
            by_config.setdefault(run.config_id, []).append(run)
        diffs: dict[str, list[np.ndarray]] = {m: [] for m in NOISY}
        for runs in by_config.values():
            if len(runs) < 2 or not runs[0].length == runs[1].length == self.max_epochs:
                continue
            pair = {m: runs[1].epochs[m] - runs[0].epochs[m] for m in NOISY}
            if all(np.isfinite(d).all() for d in pair.values()):
                for m, d in pair.items():
                    diffs[m].append(d)
        if len(diffs["val_acc"]) < NOISE_PAIRS:
            return {}
        return {m: 1.4826 * np.median(np.abs(np.array(d)), axis=0) / math.sqrt(2) for m, d in diffs.items()}

    # --- what the table holds ------------------------------------------------------------

    @property
    def configs(self) -> list[RecordedRun]:
        """The replayed run of every configuration (its lowest seed), by config_id."""
        return [self._replayed[i] for i in self._ids]

    @property
    def max_epochs(self) -> int:
        return max(run.length for run in self.runs)

    def values(self, name: str) -> list[Any]:
        """The distinct recorded values of a parameter."""
        return sorted(set(self._columns[name].tolist()), key=lambda v: (str(type(v)), v))

    def recorded(self, config_id: int, epoch: int, metric: str = "val_acc") -> float:
        """The replayed (lowest-seed) run's recorded `metric` of configuration `config_id` at `epoch`, no noise added."""
        return float(self._replayed[int(config_id)].epochs[metric][epoch - 1])

    def best(self, metric: str = "val_acc", mode: str = "max", max_t: int | None = None) -> float:
        """The best value of `metric` any replayed configuration reaches within `max_t` epochs."""
        pick = np.nanmax if mode == "max" else np.nanmin
        finite = [pick(r.epochs[metric][:max_t]) for r in self.configs if np.isfinite(r.epochs[metric][:max_t]).any()]
        return float(pick(finite))

    def noise(self, metric: str = "val_acc", epoch: int | None = None) -> dict[str, float]:
        """Seed-to-seed spread of `metric` at `epoch` (default the last) over the repeated configurations:
        the standard deviation of the difference between two seeds, divided by sqrt 2."""
        by_config: dict[int, list[RecordedRun]] = {}
        for run in self.runs:
            by_config.setdefault(run.config_id, []).append(run)
        diffs = []
        for runs in by_config.values():
            if len(runs) >= 2:
                a, b = (r.epochs[metric][(epoch or r.length) - 1] for r in runs[:2])
                if math.isfinite(a) and math.isfinite(b):
                    diffs.append(a - b)
        sd = float(np.std(diffs, ddof=1) / math.sqrt(2)) if len(diffs) >= 2 else math.nan
        return {"pairs": len(diffs), "sd": sd}

    # --- the nearest recorded configuration ----------------------------------------------

    def nearest(self, config: dict[str, Any], space_params: tuple) -> tuple[RecordedRun, float]:
        """The replayed run of the recorded configuration nearest to `config`, and its distance.

        `space_params` are (name, type, low, high) of the searched parameters: ranges are scaled to
        [0, 1] over low..high (log for loguniform) and compared by Euclidean distance; choices must
        match (each mismatch outweighs any range distance).
        """
        distance, mismatches = self._distances(config, space_params)
        order = np.lexsort((self._ids, distance, mismatches))  # fewest mismatches, then nearest, then lowest id
        i = int(order[0])
        return self._replayed[int(self._ids[i])], float(distance[i] + 1000.0 * mismatches[i])

    def neighbours(self, config: dict[str, Any], space_params: tuple, k: int) -> list[tuple[RecordedRun, float]]:
        """The `k` recorded configurations nearest to `config` that share its choices (or, where none
        does, have the fewest mismatches), nearest first, with their range distances."""
        distance, mismatches = self._distances(config, space_params)
        order = [i for i in np.lexsort((self._ids, distance, mismatches)) if mismatches[i] == mismatches.min()][:k]
        return [(self._replayed[int(self._ids[i])], float(distance[i])) for i in order]

    def blended(self, config: dict[str, Any], space_params: tuple, k: int = INTERPOLATE_K) -> tuple[RecordedRun, float]:
        """`lookup: interpolate`: a run whose every epoch is the inverse-distance-weighted mean (weights
        1 / distance^2) of the `k` nearest recorded configurations with the same choices, and the nearest
        one's distance. On a recorded configuration it is that configuration's run.

        Each field averages the neighbours that recorded it at that epoch; the blend diverges (no
        metrics, as a recorded diverged epoch) at the first epoch where neighbours holding more than
        half the weight have diverged or ended. It
        keeps the nearest configuration's id, seed and parameter count (same choices, same model).
        """
        first, distance = self.nearest(config, space_params)  # the distance as `nearest` reports it
        near = self.neighbours(config, space_params, k)
        if near[0][1] == 0.0 or len(near) == 1:
            return first, distance
        weights = np.array([1.0 / d ** 2 for _, d in near])
        weights /= weights.sum()
        length = max(run.length for run, _ in near)
        epochs: dict[str, np.ndarray] = {}
        for name in EPOCH_FIELDS[:-1]:
            values = np.full((len(near), length), np.nan)
            for row, (run, _) in enumerate(near):
                values[row, :run.length] = run.epochs[name]
            held = np.isfinite(values)
            total = (weights[:, None] * held).sum(axis=0)
            mean = (weights[:, None] * np.where(held, values, 0.0)).sum(axis=0)
            epochs[name] = np.where(total > 0, mean / np.where(total > 0, total, 1.0), np.nan)
        gone = np.zeros(length)  # the weight of neighbours diverged or ended by each epoch
        for w, (run, _) in zip(weights, near):
            flags = np.nan_to_num(run.epochs["diverged"], nan=0.0) > 0
            ended = np.arange(length) >= run.length
            gone += w * (np.maximum.accumulate(np.pad(flags, (0, length - run.length))) | ended)
        epochs["diverged"] = (gone > 0.5).astype(float)
        stop = int(np.argmax(gone > 0.5)) + 1 if (gone > 0.5).any() else length
        epochs = {name: values[:stop] for name, values in epochs.items()}
        if epochs["diverged"][-1]:
            for name in METRICS:  # as a recorded diverged epoch: no metrics
                epochs[name][-1] = np.nan
        return RecordedRun(first.config_id, first.seed, dict(first.params), epochs, first.params_count), distance

    def _distances(self, config: dict[str, Any], space_params: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Per recorded configuration: the range distance to `config` and the number of choices that differ."""
        key = tuple(space_params)
        if key not in self._coordinates:
            self._coordinates[key] = self._scaled(space_params)
        table, ranged = self._coordinates[key]
        query = np.array([_scale(config[name], kind, low, high) for name, kind, low, high in ranged], dtype=float)
        distance = np.sqrt(((table - query) ** 2).sum(axis=1)) if ranged else np.zeros(len(self._ids))
        mismatches = np.zeros(len(self._ids))
        for name, kind, _, _ in space_params:
            if kind == "choice":
                mismatches += np.array([not _same(v, config[name]) for v in self._columns[name]])
        return distance, mismatches

    def _scaled(self, space_params: tuple) -> tuple[np.ndarray, list]:
        ranged = [p for p in space_params if p[1] != "choice"]
        columns = [[_scale(v, kind, low, high) for v in self._columns[name]] for name, kind, low, high in ranged]
        return (np.array(columns, dtype=float).T if ranged else np.zeros((len(self._ids), 0))), ranged


def _scale(value: Any, kind: str, low: float, high: float) -> float:
    if kind == "loguniform":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low)


def _same(a: Any, b: Any) -> bool:
    return a == b and (type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))))


def space_params(space: SearchSpace) -> tuple:
    """What `ReplayTable.nearest` needs of the searched parameters: (name, type, low, high)."""
    return tuple((p.name, p.type if p.type in ("choice", "loguniform") else "range",
                  p.low, p.high) for p in space.all_params())


# --- reading a table -------------------------------------------------------------------------


_CACHE: dict[tuple, ReplayTable] = {}


def load_table(path: str | os.PathLike) -> ReplayTable:
    """Read a recorded table: `runs.jsonl` (one JSON line per run) or `curves.csv` (one row per epoch).

    Errors are one line naming the file, what is wrong and how to fix it. A cut-short last line of a
    runs.jsonl still being recorded is left out. Tables read before are served from memory unless the
    file changed.
    """
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"replay table {path}: cannot read it ({exc.strerror or exc}); give table: the path of "
                          f"a recorded runs.jsonl or curves.csv ({_FIX})") from None
    if path.is_dir():
        found = [p for p in (path / "runs.jsonl", path / "curves.csv") if p.is_file()]
        if not found:
            raise ConfigError(f"replay table {path} is a directory without runs.jsonl or curves.csv; {_FIX}")
        return load_table(found[0])
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        data = path.read_bytes()
        if path.suffix == ".csv":
            runs = _runs_from_csv(path, data)
        elif path.suffix in (".jsonl", ".json"):
            runs = _runs_from_jsonl(path, data)
        else:
            raise ConfigError(f"replay table {path}: unknown format {path.suffix or '(no suffix)'!r}; "
                              "give a runs.jsonl or a curves.csv")
        if not runs:
            raise ConfigError(f"replay table {path} holds no recorded run; {_FIX}")
        names = set(runs[0].params)
        for run in runs:
            if set(run.params) != names:
                raise ConfigError(f"replay table {path}: config {run.config_id} seed {run.seed} has parameters "
                                  f"{sorted(run.params)}, others {sorted(names)}; a table records one space")
        _CACHE.clear()  # one table at a time is what sweeps and benchmarks use
        _CACHE[key] = ReplayTable(path=str(path.resolve()), runs=runs, param_names=tuple(sorted(names)),
                                  sha256=hashlib.sha256(data).hexdigest())
    return _CACHE[key]


def _runs_from_jsonl(path: Path, data: bytes) -> list[RecordedRun]:
    lines = data.decode(errors="replace").splitlines()
    runs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the last line of a recording still being written
            raise ConfigError(f"replay table {path}: line {number} is not JSON; remove it or record the table "
                              "again") from None
        try:
            epochs = record["epochs"]
            columns = {f: np.array([_number(e.get(f)) for e in epochs], dtype=float) for f in EPOCH_FIELDS}
            numbers = [int(e["epoch"]) for e in epochs]
            runs.append(RecordedRun(config_id=int(record["config_id"]), seed=int(record["seed"]),
                                    params=dict(record["params"]), epochs=columns,
                                    params_count=_number(record.get("params_count"))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"replay table {path}: line {number} is not a recorded run ({type(exc).__name__}: "
                              f"{exc}); each line needs config_id, seed, params and epochs") from None
        if numbers != list(range(1, len(numbers) + 1)):
            raise ConfigError(f"replay table {path}: line {number} has epochs {numbers[:5]}...; a run records "
                              "epochs 1, 2, 3, ... in order")
    return runs


def _runs_from_csv(path: Path, data: bytes) -> list[RecordedRun]:
    import io

    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"replay table {path} is not a readable CSV ({exc}); write it again with "
                          "benchmarks/record_curves.py --table") from None
    missing = [c for c in ("config_id", "seed", "epoch", "val_acc") if c not in frame.columns]
    if missing:
        raise ConfigError(f"replay table {path} lacks the column(s) {', '.join(missing)}; write it with "
                          "benchmarks/record_curves.py --table")
    names = [c for c in frame.columns if c not in _NOT_PARAMS]
    runs = []
    for (config_id, seed), rows in frame.sort_values("epoch").groupby(["config_id", "seed"], sort=True):
        if rows["epoch"].tolist() != list(range(1, len(rows) + 1)):
            raise ConfigError(f"replay table {path}: config {config_id} seed {seed} has epochs "
                              f"{rows['epoch'].tolist()[:5]}...; a run records epochs 1, 2, 3, ... once each")
        first = rows.iloc[0]
        runs.append(RecordedRun(
            config_id=int(config_id), seed=int(seed),
            params={n: _plain(first[n]) for n in names},
            epochs={f: (rows[f].map(_number).to_numpy(dtype=float) if f in rows else np.full(len(rows), math.nan))
                    for f in EPOCH_FIELDS},
            params_count=_number(first["params"]) if "params" in rows else math.nan))
    return runs


def _number(value: Any) -> float:
    if value is None or isinstance(value, str):
        return math.nan
    return float(value)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value YAML and Optuna give (a whole float stays a float)."""
    return value.item() if hasattr(value, "item") else value


# --- checking a space against its table ----------------------------------------------------


def check_space(space: SearchSpace) -> ReplayTable:
    """The table of a replay space, read and checked against it; one-line ConfigErrors name the key."""
    from fashion_tune.spaces.params import Checker

    c = Checker(space.path)
    table = load_table(space.table)
    names = {p.name for p in space.all_params()}
    extra = sorted(names - set(table.param_names))
    if extra:
        raise c.fail(f"params.{extra[0]}", f"not a parameter of the replay table {table.path} (it recorded "
                                           f"{', '.join(table.param_names)}); search only those")
    unsearched = [n for n in table.param_names if n not in names]
    if unsearched:
        raise c.fail("params", f"the replay table {table.path} varies {', '.join(unsearched)}, which this space does "
                               "not search; add them under params: (a replay answers each trial by the nearest "
                               "recorded configuration in every recorded parameter)")
    for param in space.all_params():
        recorded = table.values(param.name)
        if param.type == "choice":
            absent = [v for v in param.values if not any(_same(v, r) for r in recorded)]
            if absent:
                raise c.fail(f"params.{param.name}", f"{absent[0]!r} was never recorded (the table has "
                                                     f"{', '.join(map(repr, recorded))}); choose among those")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in recorded):
            raise c.fail(f"params.{param.name}", f"the table records non-numbers for {param.name}; use type: choice")
        elif param.type == "loguniform" and min(recorded) <= 0:
            raise c.fail(f"params.{param.name}", "the table records values <= 0; use a uniform range")
    for metric in [space.metric, *(m for m, _ in space.objectives)]:
        if metric not in (*METRICS, "params"):
            raise c.fail("metric", f"{metric} is not recorded in a replay table; choose one of: "
                                   f"{', '.join(METRICS)} (or params as a further objective)")
    if space.max_t > table.max_epochs:
        raise c.fail("scheduler.max_t", f"{space.max_t} is more than the {table.max_epochs} epochs the table "
                                        f"recorded; use max_t <= {table.max_epochs}")
    return table


def describe(table: ReplayTable, space: SearchSpace) -> str:
    """One line about the table, for the sweep's first lines and --dry-run."""
    return (f"replay of {len(table.configs)} recorded configurations ({len(table.runs)} runs, up to "
            f"{table.max_epochs} epochs) from {table.path}; "
            + ("simulated clock; " if space.clock == "simulated" else f"time scale {space.time_scale:g}; ")
            + ("nearest recorded configuration" if space.lookup == "nearest"
               else f"interpolated between the {INTERPOLATE_K} nearest"))


def info(space: SearchSpace) -> dict[str, Any]:
    """What sweep.json records about the replay (the table is read once per process: see load_table)."""
    table = load_table(space.table)
    return {"table": table.path, "sha256": table.sha256, "configs": len(table.configs), "runs": len(table.runs),
            "time_scale": space.time_scale, "lookup": space.lookup, "clock": space.clock}


# --- the trainable ---------------------------------------------------------------------------


def replay_curve(config: dict[str, Any], table: ReplayTable, params: tuple, start: int = 0,
                 lookup: str = "nearest") -> list[dict[str, Any]]:
    """The reports of a trial with `config` from epoch `start` + 1 to config["epochs"] (the recorded run's end at
    most): the recorded (or, with lookup "interpolate", blended) values, `params`, `sim_time_s`, which
    configuration answered (the nearest) and `replay_val_acc`, the val_acc before seed noise. Runs without Ray."""
    run, distance = table.blended(config, params) if lookup == "interpolate" else table.nearest(config, params)
    last = min(int(config["epochs"]), run.length)
    times = np.nan_to_num(run.epochs["epoch_time_s"], nan=0.0)
    z = _noise_z(config, params, table) if distance > 0 else None
    rows = []
    for epoch in range(start + 1, last + 1):
        row = {"epoch": epoch, **{f: _value(run.epochs[f][epoch - 1]) for f in EPOCH_FIELDS}}
        row["diverged"] = bool(row["diverged"]) if row["diverged"] is not None else False
        clean = row["val_acc"]
        if z is not None:
            for metric, direction in NOISY.items():
                sd = table.noise_sd[metric]
                if row[metric] is not None and epoch <= len(sd):
                    shifted = row[metric] + direction * z * float(sd[epoch - 1])
                    row[metric] = min(max(shifted, 0.0), 1.0) if metric == "val_acc" else max(shifted, 0.0)
        row.update(params=run.params_count, sim_time_s=float(times[:epoch].sum()),
                   replay_config_id=run.config_id, replay_seed=run.seed, replay_distance=round(distance, 6),
                   replay_noise=None if z is None else round(z, 4), replay_val_acc=clean)
        rows.append(row)
        if row["diverged"]:
            break  # training stops at a non-finite loss; so does its replay
    return rows


def _noise_z(config: dict[str, Any], params: tuple, table: ReplayTable) -> float | None:
    """The standard normal z of an off-table config, from a hash of its searched values; None when the table
    has too few repeats to say how large seed noise is."""
    if not table.noise_sd:
        return None
    searched = json.dumps({name: _plain(config[name]) for name, *_ in params}, sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(searched.encode()).digest()[:8], "big")
    return statistics.NormalDist().inv_cdf((digest + 0.5) / 2 ** 64)


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def replay_trial(config: dict[str, Any], table: ReplayTable, params: tuple, metric: str, mode: str,
                 time_scale: float, lookup: str = "nearest", clock=None) -> None:
    """One Ray Tune trial of a replay sweep: the recorded curve, one report (and tiny checkpoint) per epoch,
    each after `time_scale` x its recorded seconds of real sleep, or, given the sweep's `clock` actor
    (`clock: simulated`), when the clock grants it."""
    import ray
    from ray import tune

    from fashion_tune.search.trial_reports import quiet, worst_if_missing

    quiet()
    node_id = ray.get_runtime_context().get_node_id()  # as a training trial reports it: where each epoch ran
    start, sim_clock = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = json.loads((Path(directory) / CHECKPOINT).read_text())
            start, sim_clock = int(saved["epoch"]), float(saved.get("sim_clock_s") or 0.0)
    trial_id = tune.get_context().get_trial_id()
    for row in replay_curve(config, table, params, start, lookup):
        if clock is not None:
            at, forced = ray.get(clock.turn.remote(trial_id, row["epoch_time_s"] or 0.0, sim_clock))
            if at is None:
                return  # the driver stopped this trial while it waited for its turn
            row.update(sim_clock_s=at, sim_clock_forced=forced)
            sim_clock = at
        elif time_scale > 0:
            time.sleep(time_scale * (row["epoch_time_s"] or 0.0))
        with tempfile.TemporaryDirectory(prefix="fashion-tune-replay-") as directory:
            (Path(directory) / CHECKPOINT).write_text(json.dumps({"epoch": row["epoch"], "sim_clock_s": sim_clock}))
            row = worst_if_missing({**row, "node_id": node_id, "reported_at": time.time()}, metric, mode)  # reported_at orders reports across trials
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))


def running_at_most(space: SearchSpace) -> int:
    """How many trials of the space can run at once on the Ray this process is connected to: the searcher's
    cap (max_concurrent_trials; num_samples under Hyperband and PBT), and what the cluster's resources hold."""
    import ray

    from fashion_tune.search.strategies import concurrency

    slots = concurrency(space)
    resources = ray.cluster_resources()
    for name, need in (("CPU", space.cpu), ("GPU", space.gpu)):
        if need:
            slots = min(slots, int(resources.get(name, 0.0) / need + 1e-9))
    return max(slots, 1)


def make_trainable(space: SearchSpace):
    """The replay trainable with the table in Ray's object store once, and the space's (logical) resources."""
    from ray import tune

    table = check_space(space)
    clock = None
    if space.clock == "simulated":
        from fashion_tune.search.sim_clock import start_clock

        clock = start_clock(running_at_most(space), space.num_samples)
    trainable = tune.with_parameters(replay_trial, table=table, params=space_params(space), metric=space.metric,
                                     mode=space.mode, time_scale=space.time_scale, lookup=space.lookup, clock=clock)
    return tune.with_resources(trainable, {"cpu": space.cpu, "gpu": space.gpu})
