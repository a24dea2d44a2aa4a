"""Search efficiency: which strategy finds a good CNN in the fewest training epochs.

    python benchmarks/search_efficiency.py                 # the measured run (sized for < 1 hour, 2 cores)
    python benchmarks/search_efficiency.py --quick         # minutes: proves the pipeline end to end
    python benchmarks/search_efficiency.py --seeds 5 --strategies random+fifo,tpe+asha
    python benchmarks/search_efficiency.py --replay benchmarks/results/curves/runs.jsonl   # recorded curves

`--replay TABLE` replays recorded learning curves (benchmarks/record_curves.py) instead of training:
see REPLAY_DOC below (or `--replay TABLE --help`) for what it runs and reports.

Every strategy searches the same CNN space (`SPACE` below, a variant of search_spaces/cnn_quick.yaml)
on the same data with the same budget: training epochs summed over its trials (FIFO runs
`--trials` trials to max_t; the others may propose more trials and stop when the sweep has
trained that many epochs). Strategies: random + FIFO (the baseline), random + ASHA, TPE + FIFO,
TPE + ASHA, GP + ASHA and PBT (a random initial population, lr / weight decay / dropout mutated),
each with `--seeds` seeds (the searcher's and PBT's; the data and the models' initialisation stay fixed).

For each run, the best validation accuracy found is followed against the epochs trained so far
(every epoch any trial trains counts, re-trained PBT epochs included). The target is the median,
over seeds, of random + FIFO's final best (lower medians throughout: with an even number of seeds
the middle value below, so the target is one a baseline seed reached). Printed and written to OUT/table.md: per strategy the
final best, the epochs needed to reach the target (median and range over seeds; "-" where a seed
never reached it), the ratio of random + FIFO's median epochs to the strategy's (higher is
better), and wall time. OUT/curves.png draws median and min-max band per strategy;
OUT/summary.json holds every number and OUT/runs/ every sweep.

Sizing of the default (not the --quick) run, for this project's 2-core CPU: the space trains a
width 8-24, depth-1 CNN on 3,000 images (1,000 validation images), 6 epochs per trial, 2 trials at
a time. One epoch costs about 2-3 s of one core there, so a budget of 8 trials x 6 epochs = 48
epochs is about 1 min of training per sweep on 2 cores, plus 15-25 s of Ray and trial start-up:
6 strategies x 3 seeds = 18 sweeps, about 30-45 min on a quiet machine. --quick shrinks it to
500 images, 3 epochs, 4 trials and 2 seeds.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

SPACE = {
    "kind": "cnn",
    "metric": "val_acc",
    "mode": "max",
    "max_concurrent_trials": 2,
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "fixed": {"subset": 3000, "val_subset": 1000, "depth": 1, "scheduler": "cosine", "precision": "fp32",
              "device": "cpu"},
    "params": {
        "lr": {"type": "loguniform", "low": 3.0e-4, "high": 3.0e-2},
        "weight_decay": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "width": {"type": "choice", "values": [8, 16, 24]},
        "batch_size": {"type": "choice", "values": [64, 128]},
        "crop_pad": {"type": "randint", "low": 0, "high": 4},
        "erase_prob": {"type": "uniform", "low": 0.0, "high": 0.5},
    },
}
DEFAULT = {"trials": 8, "max_t": 6, "seeds": 3, "subset": 3000, "val_subset": 1000}
QUICK = {"trials": 4, "max_t": 3, "seeds": 2, "subset": 500, "val_subset": 200}
# name -> (searcher, scheduler); the searchers' model-based phase starts after the same few random trials.
STRATEGIES = {
    "random+fifo": ("random", "fifo"),
    "random+asha": ("random", "asha"),
    "tpe+fifo": ("tpe", "fifo"),
    "tpe+asha": ("tpe", "asha"),
    "gp+asha": ("gp", "asha"),
    "qmc+asha": ("qmc", "asha"),
    "pbt": ("random", "pbt"),
}
BASELINE = "random+fifo"
RAY_PATTERN = "*/result.json"  # the result files of a Tuner run outside the product (Ray names its trial folders)


@functools.lru_cache(maxsize=4)
def load_table(path: str):
    """A replay table, read once per benchmark run."""
    from fashion_tune.search.replay import load_table as read

    return read(path)
MAX_TRIALS_FACTOR = 4  # strategies that stop trials early may propose up to this many times --trials


def space_for(name: str, seed: int, sizes: dict) -> dict:
    """The shared space with one strategy's searcher and scheduler, and the sizes of this run. A strategy
    may carry options of its sections, as in the replay: `tpe(n_startup_trials=4)+asha(reduction_factor=4)`."""
    searcher, scheduler = STRATEGIES[base_strategy(name)]
    _, searcher_options, _, scheduler_options = split_strategy(name) if "(" in name else (None, {}, None, {})
    data = copy.deepcopy(SPACE)
    data["fixed"].update(subset=sizes["subset"], val_subset=sizes["val_subset"])  # the same data for every run
    data["seed"] = seed
    max_t, trials = sizes["max_t"], sizes["trials"]
    data["searcher"] = {"type": searcher}
    if searcher in ("tpe", "gp"):  # the model-based ones; QMC's sequence has no start-up phase
        data["searcher"]["n_startup_trials"] = max(2, trials // 2)
    if scheduler == "fifo":
        data["scheduler"], data["num_samples"] = {"type": "fifo", "max_t": max_t}, trials
    elif scheduler == "pbt":
        data["scheduler"] = {"type": "pbt", "max_t": max_t, "perturbation_interval": max(1, max_t // 3),
                             "mutate": ["lr", "weight_decay", "dropout"]}
        # A clone takes over its donor's epoch count, so `trials` trials reach max_t before they have trained
        # the budget: more may start as others finish, and the budget stops the sweep.
        data["num_samples"] = trials * MAX_TRIALS_FACTOR
    else:
        data["scheduler"] = {"type": "asha", "max_t": max_t, "grace_period": 1, "reduction_factor": 2}
        data["num_samples"] = trials * MAX_TRIALS_FACTOR
    data["searcher"].update(searcher_options)
    data["scheduler"].update(scheduler_options)
    return data


def base_strategy(name: str) -> str:
    """`tpe(n_startup_trials=4)+asha(reduction_factor=4)` -> `tpe+asha`, a key of STRATEGIES."""
    return re.sub(r"\([^)]*\)", "", name)


class EpochBudget:
    """A Tune stopper that ends the sweep once its trials have trained `budget` epochs in all.

    Tune also passes the final result a finished trial returns with; counting (trial, iteration)
    pairs counts each epoch once (a PBT clone's iterations go on counting up, so they count too).
    """

    def __init__(self, budget: int):
        self.budget, self.seen = budget, set()

    def __call__(self, trial_id, result) -> bool:
        self.seen.add((trial_id, result.get("training_iteration")))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget


def run_one(name: str, seed: int, sizes: dict, out: Path, data_dir) -> dict:
    """One sweep; returns its best-so-far curve over cumulative epochs and its wall time."""
    from ray.tune import Stopper

    from fashion_tune.search.sweep import run_sweep

    class Budget(EpochBudget, Stopper):
        pass

    folder = out / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    run_name = run_folder(name, seed)
    space = folder / f"{run_name}.yaml"
    space.write_text(yaml.safe_dump(space_for(name, seed, sizes), sort_keys=False))
    budget = sizes["trials"] * sizes["max_t"]
    started = time.perf_counter()
    outcome = run_sweep("cnn", space, name=run_name, storage=folder, data_dir=data_dir, verbose=0,
                        stop=Budget(budget), echo=lambda line: None)
    wall = time.perf_counter() - started
    curve = best_so_far(Path(outcome.experiment_dir))[:budget]
    return {"strategy": name, "seed": seed, "wall_s": wall, "epochs": len(curve), "curve": curve,
            "final": curve[-1] if curve else math.nan, "trials": outcome.num_trials}


def best_so_far(directory: Path, table=None, pattern: str = "trial_*/result.json") -> list[float]:
    """Best validation accuracy after each epoch trained, in the order the epochs finished.

    With a replay `table`, the incumbent (the epoch with the best reported, noisy, val_acc so far) is
    scored by its recorded value without the replay's seed noise: a search that keeps drawing near the
    best config cannot win by drawing lucky noise.
    """
    return incumbent_curve(ordered_rows(directory, pattern), table)


def ordered_rows(directory: Path, pattern: str = "trial_*/result.json") -> list[dict]:
    """Every epoch trained, as reported, in the order the epochs finished.

    Every line of every trial's result.json is one epoch trained (a PBT clone's re-trained
    epochs included); the simulated clock's time (`clock: simulated`), else Ray's timestamp and the
    trial's time, orders them across trials.
    """
    rows = []
    for path in directory.glob(pattern):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            # A replayed trial's `reported_at` orders epochs finer than Ray's whole-second timestamp.
            wall = row.get("reported_at", row.get("timestamp", 0))
            rows.append((row.get("sim_clock_s", wall), wall, row.get("time_total_s", 0.0), row))
    return [row for *_, row in sorted(rows, key=lambda r: r[:3])]


def incumbent_curve(rows: list[dict], table=None) -> list[float]:
    """Per reported epoch, in order: the best val_acc so far, or with a replay table the val_acc before seed
    noise (`replay_val_acc`: recorded, or blended) of the epoch that reported it (see best_so_far)."""
    best, score, curve = -math.inf, math.nan, []
    for row in rows:
        value = row.get("val_acc", math.nan)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > best:
            best = value
            if table is not None:  # the value before seed noise (runs from before replay_val_acc: the table's)
                value = row.get("replay_val_acc", table.recorded(row["replay_config_id"], row["epoch"]))
            score = value
        curve.append(score)
    return curve


def revisits(rows: list[dict]) -> list[int]:
    """Per reported epoch of a replay, in order: 1 where its trial replays a recorded configuration that
    another trial reported before it, else 0.

    A proposal off the table is answered by the nearest recorded configuration, so a searcher that
    refines around its best trials keeps drawing configurations it has already seen: the table cannot
    answer a refinement with anything new, only with the same curve and fresh seed noise.
    """
    first: dict = {}
    return [int(first.setdefault(row.get("replay_config_id"), row.get("trial_id")) != row.get("trial_id"))
            for row in rows]


def trained(rows: list[dict]) -> int:
    """Trials that reported at least one epoch (Tune also lists trials it created but never started before a
    stopper ended the sweep)."""
    return len({row.get("trial_id") for row in rows})


def epochs_to(curve: list[float], target: float) -> int | None:
    """The first cumulative epoch at which the best-so-far reaches `target`, or None."""
    return next((i + 1 for i, value in enumerate(curve) if value >= target), None)


def summarize(runs: list[dict], names: list[str]) -> tuple[dict, float]:
    """Per strategy: finals, epochs to the baseline's target, the ratio against the baseline, wall times."""
    baseline = [r["final"] for r in runs if r["strategy"] == BASELINE]
    # Lower medians: with an even number of seeds the target is a value a baseline seed reached.
    target = statistics.median_low(baseline)
    table = {}
    for name in names:
        mine = [r for r in runs if r["strategy"] == name]
        reached = [epochs_to(r["curve"], target) for r in mine]
        hits = [e for e in reached if e is not None]
        # A seed that never reached the target counts as infinitely slow, so the median is honest.
        median = statistics.median_low([e if e is not None else math.inf for e in reached])
        table[name] = {"finals": [r["final"] for r in mine], "epochs_to_target": reached,
                       "median_epochs": median, "reached": len(hits), "seeds": len(mine),
                       "range": [min(hits), max(hits)] if hits else None,
                       "wall_s": [r["wall_s"] for r in mine], "epochs": [r["epochs"] for r in mine]}
    base = table[BASELINE]["median_epochs"]
    for row in table.values():
        finite = math.isfinite(base) and math.isfinite(row["median_epochs"])
        row["ratio"] = base / row["median_epochs"] if finite else math.nan
    return table, target


def format_table(table: dict, target: float) -> list[str]:
    lines = [f"target: {target:.4f} validation accuracy (median final best of {BASELINE})", "",
             "| strategy | final best: median [min-max] | epochs to target: median [range], reached | "
             f"ratio vs {BASELINE} | wall time per run (median) |", "|---|---|---|---|---|"]
    for name, row in table.items():
        finals = row["finals"]
        spread = f"[{row['range'][0]}-{row['range'][1]}]" if row["range"] else "[-]"
        median = f"{row['median_epochs']:g}" if math.isfinite(row["median_epochs"]) else "not reached"
        lines.append(f"| {name} | {statistics.median_low(finals):.4f} [{min(finals):.4f}-{max(finals):.4f}] | "
                     f"{median} {spread}, {row['reached']}/{row['seeds']} | "
                     f"{'n/a' if math.isnan(row['ratio']) else format(row['ratio'], '.2f') + 'x'} | "
                     f"{statistics.median(row['wall_s']):.0f} s |")
    return lines


def plot(runs: list[dict], names: list[str], target: float, target_path: Path) -> Path:
    """Best validation accuracy against cumulative epochs: median line and min-max band per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        curves = [r["curve"] for r in runs if r["strategy"] == name and r["curve"]]
        length = max(len(c) for c in curves)
        grid = [[c[min(i, len(c) - 1)] for c in curves] for i in range(length)]  # a finished run stays at its best
        x = list(range(1, length + 1))
        median = [statistics.median_low(v) if all(map(math.isfinite, v)) else math.nan for v in grid]
        line, = ax.plot(x, median, label=name, drawstyle="steps-post")
        ax.fill_between(x, [min(v) for v in grid], [max(v) for v in grid], step="post", alpha=0.15,
                        color=line.get_color())
    ax.axhline(target, color="grey", linestyle=":", label=f"target ({BASELINE} median final)")
    ax.set_xlabel("training epochs, summed over trials")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Search efficiency: median and min-max over seeds")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(target_path, dpi=110)
    plt.close(fig)
    return target_path


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--replay" in argv or any(a.startswith("--replay=") for a in argv):
        return replay_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: small data, 2 seeds, 4 trials")
    parser.add_argument("--seeds", type=int, help="seeds per strategy (default 3; --quick 2)")
    parser.add_argument("--trials", type=int, help="trials of a FIFO sweep; the budget is trials x max_t epochs")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated (default all; {BASELINE} is always run)")
    parser.add_argument("--out", type=Path, default=Path("ray_results/search-efficiency"), help="where runs, curves.png and table.md go")
    parser.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else DEFAULT)
    sizes.update({k: v for k, v in (("seeds", args.seeds), ("trials", args.trials)) if v})
    names = [BASELINE] + [n for n in args.strategies.split(",") if n != BASELINE]
    unknown = [n for n in names if base_strategy(n) not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; pass another --out")
    return run(names, sizes, args.out, args.data_dir)


def run(names: list[str], sizes: dict, out: Path, data_dir) -> int:
    import ray

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    runs = []
    try:
        for name in names:
            for seed in range(sizes["seeds"]):
                run = run_one(name, seed, sizes, out, data_dir)
                runs.append(run)
                print(f"{name} seed {seed}: best {run['final']:.4f} after {run['epochs']} epochs, "
                      f"{run['trials']} trials, {run['wall_s']:.0f} s", flush=True)
    finally:
        ray.shutdown()
    total = time.perf_counter() - started
    table, target = summarize(runs, names)
    lines = format_table(table, target)
    lines += ["", f"budget {sizes['trials']} x {sizes['max_t']} = {sizes['trials'] * sizes['max_t']} epochs per run, "
                  f"{sizes['seeds']} seeds, {sizes['subset']} training / {sizes['val_subset']} validation images; "
                  f"benchmark wall time {total / 60:.1f} min", f"command: {' '.join(['python', *sys.argv])}"]
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(runs, names, target, out / "curves.png")
    (out / "summary.json").write_text(json.dumps({"sizes": sizes, "target": target, "table": table, "runs": runs,
                                                  "wall_s": total}, indent=2, default=str) + "\n")
    print(f"wrote {out / 'table.md'}, {out / 'curves.png'}, {out / 'summary.json'}")
    return 0



# --- replay: every strategy on recorded curves -------------------------------------------------

REPLAY_DOC = """Search efficiency on recorded curves: every searcher x scheduler of the product, and two peers.

    python benchmarks/search_efficiency.py --replay TABLE                       # the full run (hours)
    python benchmarks/search_efficiency.py --replay TABLE --seeds 3 --budgets 100,300 \\
        --strategies random+fifo,tpe+asha,random+asha,ray-default,optuna-alone   # minutes

TABLE is what benchmarks/record_curves.py records (runs.jsonl or curves.csv). Each product strategy is
a `fashion-tune sweep replay` (fashion_tune.search.replay: the real Tuner, SweepOptuna searcher and
scheduler; each trial replays the recorded curve nearest its config) on the recorded space
(benchmarks/replay_cnn_space.yaml's parameters, max_t 16), `--max-concurrent` trials at once; the
sweep is stopped once its trials have reported the largest budget's epochs. Searchers: every one
the space allows (cmaes refuses its choice parameters, grid its ranges); schedulers: asha (grace 1,
reduction 3), hyperband (reduction 3), median (grace 1), pbt (lr, weight_decay and dropout
mutated every 4 epochs; a clone continues the recorded curve of its new config from the epoch it
cloned; a population of 1.5 x budget / 16 trials, trained in turn) and fifo. The searchers' start-up trials are the product's default (10 for these sizes).
Peers on the same table: `ray-default`, Ray Tune with its own default searcher (random search,
BasicVariantGenerator) and ASHAScheduler with its defaults (grace 1, reduction 4), through the same
replay trainable; and `optuna-alone`, Optuna's `study.optimize` with TPESampler and HyperbandPruner
(min resource 1, max resource 16), one trial at a time, the curve read from the table in-process.

A strategy may carry options of its searcher and scheduler sections, to try other defaults:
`tpe(multivariate=true,n_startup_trials=20)+asha(grace_period=4,reduction_factor=2)`.
`--lookup interpolate` answers every strategy's off-table configs with a blend of the nearest
recorded curves instead of the nearest one (the replay space's `lookup:`; see fashion_tune.search.replay).

Every Ray run is on the simulated clock (`--clock simulated`, the replay space's `clock:`; see
fashion_tune.search.sim_clock): reports come one at a time in recorded-time order, so a (strategy,
seed) run gives the same curve every time, and two benchmark processes may share the machine without
changing any result. `--clock sleep` runs the trials on real sleeps of `--time-scale` x the recorded
seconds instead (the earlier benchmark; not repeatable where trials run at once).

Scoring: the incumbent after each epoch is the epoch with the best reported val_acc so far (what
`fashion-tune promote` would pick), and it scores its recorded val_acc without the replay's seed noise
(fashion_tune.search.replay adds z x the seed sd to off-table trials; with --lookup interpolate the
blend's value before noise): a strategy that keeps drawing
near the best configuration cannot win by drawing lucky noise, only by finding good configurations.

One run per (strategy, seed) at the largest budget; each smaller budget is a prefix of it (no
strategy's settings depend on the budget: num_samples is the largest budget for every strategy
that stops trials early, so none runs out of trials before its budget). For each budget B and seed: the best validation accuracy after B
epochs; the target is random+fifo's median (lower) final best at B; reported per strategy: the epochs
to reach the target (median, range, seeds that reached it; ratio = random+fifo's median / the
strategy's, with the 5th-95th percentiles of that ratio when both strategies' seeds are resampled
with replacement, 2,000 times), normalized regret (table best - found) / (table best - the table's median
configuration's best), median and interquartile range, the average rank of the found best
across strategies (per seed index; ties share the mean rank), and the share of the budget's epochs
spent on a recorded configuration another trial had already replayed (median over seeds): the
table answers a proposal with its nearest recorded configuration, so a searcher that refines around
its best trials is answered with curves it has seen, plus fresh seed noise. OUT/runs.jsonl lists the finished runs;
`--resume` with the same --out scores those again from their folders and runs the rest. OUT/curves.png: best so far against
epochs, median and interquartile band per strategy; OUT/table.md, OUT/summary.json.
"""
MAX_T_REPLAY = 16
REPLAY_SPACE = Path(__file__).resolve().parent / "replay_cnn_space.yaml"
SEARCHERS = ("tpe", "gp", "random", "qmc", "nsga2", "cmaes", "grid")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
PEERS = ("ray-default", "optuna-alone")
REPLAY_DEFAULT = {"seeds": 20, "budgets": (100, 300, 1000), "max_concurrent": 4, "time_scale": 0.01, "clock": "simulated"}


def replay_strategies(table_path: str) -> tuple[list[str], dict[str, str]]:
    """Every searcher+scheduler pair the replay space accepts, then the peers; and the refused ones with why."""
    from fashion_tune.util.errors import ConfigError

    names, refused = [], {}
    for searcher in SEARCHERS:
        for scheduler in SCHEDULERS:
            name = f"{searcher}+{scheduler}"
            try:
                _replay_space_obj(name, 0, table_path, 1000, 4, 0.0)
            except ConfigError as exc:
                refused[name] = str(exc).split(": ", 2)[-1]
                continue
            names.append(name)
    return names + list(PEERS), refused


def split_strategy(name: str) -> tuple[str, dict, str, dict]:
    """`tpe(multivariate=true)+asha(grace_period=2,reduction_factor=4)` -> ("tpe", {...}, "asha", {...}):
    a product strategy, with options of the searcher and scheduler sections where it names them."""
    parts = []
    for part in re.split(r"\+(?![^(]*\))", name):
        base, _, options = part.partition("(")
        pairs = [kv.split("=", 1) for kv in options.rstrip(")").split(",") if kv]
        if any(len(kv) != 2 for kv in pairs):
            raise ValueError(f"strategy {name!r}: options are key=value, e.g. tpe(multivariate=true)+asha(grace_period=2)")
        parts += [base, {k.strip(): yaml.safe_load(v) for k, v in pairs}]
    if len(parts) != 4:
        raise ValueError(f"strategy {name!r}: expected searcher+scheduler, e.g. tpe+asha")
    return parts[0], parts[1], parts[2], parts[3]


def replay_space_for(name: str, seed: int, table_path: str, budget: int, max_concurrent: int,
                     time_scale: float, lookup: str = "nearest", clock: str = "sleep") -> dict:
    """The replay space of one product strategy (`searcher+scheduler`, each with options: see split_strategy)."""
    searcher, searcher_options, scheduler, scheduler_options = split_strategy(name)
    recorded = yaml.safe_load(REPLAY_SPACE.read_text())
    trials = math.ceil(budget / MAX_T_REPLAY)
    data = {"kind": "replay", "table": str(Path(table_path).resolve()), "time_scale": time_scale, "lookup": lookup,
            "clock": clock,
            "metric": "val_acc", "mode": "max", "seed": seed, "max_concurrent_trials": max_concurrent,
            # every strategy runs at most max_concurrent trials at once (HyperBand and PBT are not capped by
            # the searcher, so the resources do it), on the 2 CPUs the benchmark's Ray has
            "resources_per_trial": {"cpu": round(2 / max_concurrent, 4)},
            "searcher": {"type": searcher}, "params": recorded["params"]}
    if scheduler == "fifo":
        data.update(num_samples=trials, scheduler={"type": "fifo", "max_t": MAX_T_REPLAY})
    elif scheduler == "pbt":
        # PBT's population is num_samples, and Ray's PBT trains it in turn: at each perturbation it pauses a
        # member while any other waits. With one trial per epoch (as the schedulers below) every member got
        # its first 4 epochs and no more (tpe+pbt stuck at epoch-4 accuracy, 0/20 seeds at the target).
        # A clone takes over its donor's epoch count (a trial exploiting at epoch 8 a donor at 12 goes on
        # at 13), so budget / max_t members reach max_t short of the budget; 1.5 x that spends it.
        data.update(num_samples=pbt_population(budget), scheduler={
            "type": "pbt", "max_t": MAX_T_REPLAY, "perturbation_interval": 4, "mutate": ["lr", "weight_decay", "dropout"]})
    else:
        # ASHA with reduction 3 stops most trials after 1 epoch: as many trials as epochs lets any strategy
        # spend the whole budget (TPE's start-up trials stay 10: default_startup caps them)
        data["num_samples"] = budget
        data["scheduler"] = {"type": scheduler, "max_t": MAX_T_REPLAY}
        if scheduler in ("asha", "median"):
            data["scheduler"]["grace_period"] = 1
        if scheduler in ("asha", "hyperband"):
            data["scheduler"]["reduction_factor"] = 3
    data["searcher"].update(searcher_options)
    data["scheduler"].update(scheduler_options)
    return data


def pbt_population(budget: int) -> int:
    """PBT's trials in a replay run of `budget` epochs: 1.5 x the trials of max_t epochs the budget holds."""
    return math.ceil(1.5 * budget / MAX_T_REPLAY)


def _variant_of(name: str, every: list[str]) -> bool:
    """Whether `name` is an offered product strategy with options, e.g. tpe(multivariate=true)+asha."""
    try:
        searcher, searcher_options, scheduler, scheduler_options = split_strategy(name)
    except ValueError:
        return False
    return (searcher_options or scheduler_options) and f"{searcher}+{scheduler}" in every


def _replay_space_obj(name, seed, table_path, budget, max_concurrent, time_scale):
    from fashion_tune.spaces.space import parse_space

    return parse_space(replay_space_for(name, seed, table_path, budget, max_concurrent, time_scale), f"<{name}>")


def run_replay_product(name: str, seed: int, table_path: str, budget: int, args, out: Path) -> dict:
    """One replay sweep of a product strategy, stopped after `budget` reported epochs."""
    from ray.tune import Stopper

    from fashion_tune.search.sweep import run_sweep

    class Budget(EpochBudget, Stopper):
        pass

    folder = out / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    run_name = run_folder(name, seed)
    discard_cut_short(folder / run_name)
    space = folder / f"{run_name}.yaml"
    space.write_text(yaml.safe_dump(replay_space_for(name, seed, table_path, budget, args.max_concurrent,
                                                     args.time_scale, args.lookup, args.clock), sort_keys=False))
    started = time.perf_counter()
    outcome = run_sweep("replay", space, name=run_name, storage=folder, verbose=0, stop=Budget(budget),
                        echo=lambda line: None)
    rows = ordered_rows(Path(outcome.experiment_dir))
    return {"wall_s": time.perf_counter() - started, "curve": incumbent_curve(rows, load_table(table_path))[:budget],
            "revisits": revisits(rows)[:budget], "trials": trained(rows)}


def run_ray_default(seed: int, table_path: str, budget: int, args, out: Path) -> dict:
    """Ray Tune's own defaults on the same replay trainable: random search (BasicVariantGenerator) + ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from fashion_tune.search.replay import make_trainable
    from fashion_tune.search.sweep import clock_callbacks
    from fashion_tune.spaces.space import parse_space

    class Budget(EpochBudget, tune.Stopper):
        pass

    data = replay_space_for("random+asha", seed, table_path, budget, args.max_concurrent, args.time_scale, args.lookup,
                            args.clock)
    space = parse_space(data, "<ray-default>")
    domains = {p.name: _tune_domain(p) for p in space.params}
    folder = out / "runs"
    discard_cut_short(folder / f"ray-default-seed{seed}")
    started = time.perf_counter()
    tuner = tune.Tuner(
        make_trainable(space), param_space={**domains, "epochs": MAX_T_REPLAY},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=data["num_samples"],
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t=MAX_T_REPLAY),
                                    search_alg=tune.search.BasicVariantGenerator(random_state=seed),
                                    max_concurrent_trials=args.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"ray-default-seed{seed}", storage_path=str(folder.resolve()),
                                  stop=Budget(budget), verbose=0, callbacks=clock_callbacks(space)),
    )
    tuner.fit()
    rows = ordered_rows(folder / f"ray-default-seed{seed}", RAY_PATTERN)  # Ray names the trial folders
    return {"wall_s": time.perf_counter() - started, "trials": trained(rows),
            "curve": incumbent_curve(rows, load_table(table_path))[:budget], "revisits": revisits(rows)[:budget]}


def _tune_domain(param):
    from ray import tune

    if param.type == "choice":
        return tune.choice(param.values)
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    return tune.uniform(param.low, param.high)


def run_optuna_alone(seed: int, table_path: str, budget: int, args, out: Path) -> dict:
    """Optuna by itself: study.optimize with TPE + HyperbandPruner, one trial at a time, the table read in-process."""
    import optuna

    from fashion_tune.search.replay import replay_curve, space_params
    from fashion_tune.spaces.space import parse_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = parse_space(replay_space_for("tpe+asha", seed, table_path, budget, 1, 0.0, args.lookup), "<optuna-alone>")
    table, params = load_table(table_path), space_params(space)
    rows: list[dict] = []

    def objective(trial):
        space.suggest(trial)
        value = -math.inf
        for row in replay_curve({**trial.params, "epochs": MAX_T_REPLAY}, table, params, lookup=space.lookup):
            if len(rows) >= budget:
                trial.study.stop()
                break
            rows.append({**row, "trial_id": trial.number})
            acc = row["val_acc"] if row["val_acc"] is not None else -math.inf
            value = max(value, acc)
            trial.report(acc, row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(study_name=f"optuna-alone-seed{seed}", direction="maximize",  # Hyperband hashes the name
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=MAX_T_REPLAY))
    started = time.perf_counter()
    study.optimize(objective, n_trials=budget)  # stops itself at the budget
    return {"wall_s": time.perf_counter() - started, "curve": incumbent_curve(rows, table)[:budget],
            "revisits": revisits(rows)[:budget], "trials": len(study.trials)}


def discard_cut_short(folder: Path) -> None:
    """A run's folder that runs.jsonl does not list is one an earlier benchmark process left cut short (killed
    mid-run): it is run again from the start, in the same folder."""
    if folder.exists():
        shutil.rmtree(folder)


def run_folder(name: str, seed: int) -> str:
    """The experiment folder (under OUT/runs) of one run."""
    if name == "ray-default":
        return f"ray-default-seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") + f"-seed{seed}"


def _finished_runs(path: Path) -> dict[tuple[str, int], dict]:
    """(strategy, seed) -> its record, for the runs a benchmark's runs.jsonl lists as finished."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["strategy"], r["seed"]): r for r in records}


def rescore(record: dict, table_path: str, budget: int, out: Path) -> dict:
    """A finished run's curve, read again from its folder (wall time and trials as recorded)."""
    folder = out / "runs" / run_folder(record["strategy"], record["seed"])
    rows = ordered_rows(folder, RAY_PATTERN if record["strategy"] == "ray-default" else "trial_*/result.json")
    return {"wall_s": record["wall_s"], "trials": record["trials"],
            "curve": incumbent_curve(rows, load_table(table_path))[:budget], "revisits": revisits(rows)[:budget]}


def replay_summary(runs: list[dict], names: list[str], budget: int, table_best: float, table_median: float) -> dict:
    """Per strategy at one budget: finals, epochs to random+fifo's median final, ratio, normalized regret, rank."""
    at = [{**r, "curve": r["curve"][:budget], "final": _final(r["curve"][:budget])} for r in runs]
    table, target = summarize(at, names)
    seeds = sorted({r["seed"] for r in at})
    ranks: dict[str, list[float]] = {n: [] for n in names}
    for seed in seeds:
        finals = {r["strategy"]: r["final"] for r in at if r["seed"] == seed}
        for name, value in finals.items():
            better = sum(1 for v in finals.values() if v > value)
            ties = sum(1 for v in finals.values() if v == value)
            ranks[name].append(better + (ties + 1) / 2)
    for name in names:
        regrets = [(table_best - f) / (table_best - table_median) for f in table[name]["finals"]]
        table[name]["regret"] = regrets
        table[name]["ratio_90"] = ratio_interval(table[BASELINE]["epochs_to_target"], table[name]["epochs_to_target"])
        table[name]["revisited"] = [sum(r["revisits"][:budget]) / len(r["revisits"][:budget])
                                    for r in at if r["strategy"] == name and r.get("revisits")]
        table[name]["rank"] = statistics.mean(ranks[name]) if ranks[name] else math.nan
    return {"budget": budget, "target": target, "table": table}


def ratio_interval(base: list[int | None], mine: list[int | None], draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """The 5th and 95th percentiles of the epochs-to-target ratio when both strategies' seeds are resampled
    with replacement (a percentile bootstrap): how far the ratio could move with other seeds.

    `base` and `mine` are each seed's epochs to the target, None where it never got there (infinitely slow,
    as in the median). A resample whose strategy median is never reached has ratio 0, whose baseline
    median is never reached, inf.
    """
    import random

    rng = random.Random(seed)
    slow = [math.inf if e is None else e for e in base], [math.inf if e is None else e for e in mine]
    ratios = []
    for _ in range(draws):
        b = statistics.median_low(rng.choices(slow[0], k=len(slow[0])))
        m = statistics.median_low(rng.choices(slow[1], k=len(slow[1])))
        ratios.append(0.0 if math.isinf(m) else math.inf if math.isinf(b) else b / m)
    ratios.sort()
    return ratios[int(0.05 * (draws - 1))], ratios[int(0.95 * (draws - 1))]


def _final(curve: list[float]) -> float:
    finite = [v for v in curve if isinstance(v, float) and math.isfinite(v)]
    return finite[-1] if finite else -math.inf


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def format_replay(summary: dict) -> list[str]:
    budget, target, table = summary["budget"], summary["target"], summary["table"]
    lines = [f"### budget {budget} epochs: target {target:.4f} (median final best of {BASELINE})", "",
             "| strategy | final best: median [IQR] | epochs to target: median [range], reached | "
             f"ratio vs {BASELINE} [90% bootstrap] | normalized regret: median [IQR] | average rank | "
             "epochs on a configuration replayed before: median | wall s per run |",
             "|---|---|---|---|---|---|---|---|"]
    order = sorted(table, key=lambda n: table[n]["rank"])
    for name in order:
        row = table[name]
        lo, mid, hi = _quartiles(row["finals"])
        rlo, rmid, rhi = _quartiles(row["regret"])
        spread = f"[{row['range'][0]}-{row['range'][1]}]" if row["range"] else "[-]"
        median = f"{row['median_epochs']:g}" if math.isfinite(row["median_epochs"]) else "not reached"
        ratio = "n/a" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}x"
        if row.get("ratio_90"):
            ratio += " [" + "-".join(f"{r:.2f}" for r in row["ratio_90"]) + "]"
        revisited = f"{statistics.median(row['revisited']):.0%}" if row.get("revisited") else "n/a"
        lines.append(f"| {name} | {mid:.4f} [{lo:.4f}-{hi:.4f}] | {median} {spread}, {row['reached']}/{row['seeds']} | "
                     f"{ratio} | {rmid:.3f} [{rlo:.3f}-{rhi:.3f}] | {row['rank']:.2f} | {revisited} | "
                     f"{statistics.median(row['wall_s']):.1f} |")
    return lines


def plot_replay(runs: list[dict], names: list[str], budgets: list[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in names:
        curves = [r["curve"] for r in runs if r["strategy"] == name and r["curve"]]
        if not curves:
            continue
        length = max(budgets)
        grid = [[c[min(i, len(c) - 1)] for c in curves] for i in range(length)]
        x = list(range(1, length + 1))
        quart = [_quartiles([v if math.isfinite(v) else 0.0 for v in values]) for values in grid]
        style = "--" if name in PEERS else "-"
        line, = ax.plot(x, [q[1] for q in quart], style, label=name, drawstyle="steps-post", linewidth=1.2)
        ax.fill_between(x, [q[0] for q in quart], [q[2] for q in quart], step="post", alpha=0.08, color=line.get_color())
    for b in budgets:
        ax.axvline(b, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0.6)
    ax.set_xlabel("epochs reported, summed over trials (log)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Replay of recorded curves: median and interquartile band over seeds")
    ax.legend(loc="lower right", fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replay_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=REPLAY_DOC.splitlines()[0], epilog=REPLAY_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay", required=True, metavar="TABLE", help="recorded curves: runs.jsonl or curves.csv")
    parser.add_argument("--seeds", type=int, default=REPLAY_DEFAULT["seeds"], help="seeds per strategy (default 20)")
    parser.add_argument("--budgets", default=",".join(map(str, REPLAY_DEFAULT["budgets"])),
                        help="epoch budgets, comma-separated (default 100,300,1000)")
    parser.add_argument("--strategies", help="comma-separated (default: every searcher+scheduler the space allows, "
                                             f"and {', '.join(PEERS)}; {BASELINE} is always run)")
    parser.add_argument("--max-concurrent", type=int, default=REPLAY_DEFAULT["max_concurrent"],
                        help="trials at once in every Ray run (default 4)")
    parser.add_argument("--clock", choices=("simulated", "sleep"), default=REPLAY_DEFAULT["clock"],
                        help="simulated (default): reports in recorded-time order, one at a time, no sleep, "
                             "repeatable; sleep: each report after --time-scale x its recorded seconds")
    parser.add_argument("--time-scale", type=float, default=REPLAY_DEFAULT["time_scale"],
                        help="with --clock sleep: real seconds slept per recorded second (default 0.01)")
    from fashion_tune.spaces.search_space import LOOKUPS

    parser.add_argument("--lookup", choices=LOOKUPS, default=LOOKUPS[0],
                        help="how a config off the table is answered: the nearest recorded configuration (default), "
                             "or a blend of the nearest few (the replay space's lookup:)")
    parser.add_argument("--out", type=Path, default=Path("ray_results/search-efficiency-replay"))
    parser.add_argument("--resume", action="store_true",
                        help="continue a run in --out: the (strategy, seed) runs its runs.jsonl lists are scored "
                             "again from their folders, not re-run (optuna-alone, in-process, is re-run); a run cut "
                             "short (its folder there, its line not) is run again from the start")
    args = parser.parse_args(argv)
    table = load_table(args.replay)  # one line naming the problem if it is unreadable
    budgets = sorted(int(b) for b in args.budgets.split(","))
    every, refused = replay_strategies(args.replay)
    names = [BASELINE] + [n for n in (re.split(r",(?![^(]*\))", args.strategies) if args.strategies else every) if n != BASELINE]
    unknown = [n for n in names if n not in every and not _variant_of(n, every)]
    if unknown:
        parser.error(f"unknown or refused strategy {unknown[0]!r}"
                     + (f" ({refused[unknown[0]]})" if unknown[0] in refused else "") + f"; choose from {', '.join(every)}")
    from fashion_tune.util.errors import ConfigError

    for name in names:
        if name not in every:  # a variant: its options must make a valid space
            try:
                _replay_space_obj(name, 0, args.replay, budgets[-1], args.max_concurrent, 0.0)
            except ConfigError as exc:
                parser.error(f"strategy {name!r}: {exc}")
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        parser.error(f"{args.out} is not empty; pass another --out, or --resume to continue it")
    args.out.mkdir(parents=True, exist_ok=True)
    done = _finished_runs(args.out / "runs.jsonl") if args.resume else {}
    import ray

    os_started = time.perf_counter()
    # log_to_driver off: Ray's workers print a SIGTERM trace as each sweep's actors are stopped
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runs = []
    try:
        for name in names:
            for seed in range(args.seeds):
                if (name, seed) in done and name != "optuna-alone":
                    run = rescore(done[name, seed], args.replay, budgets[-1], args.out)
                elif name == "ray-default":
                    run = run_ray_default(seed, args.replay, budgets[-1], args, args.out)
                elif name == "optuna-alone":
                    run = run_optuna_alone(seed, args.replay, budgets[-1], args, args.out)
                else:
                    run = run_replay_product(name, seed, args.replay, budgets[-1], args, args.out)
                run.update(strategy=name, seed=seed, epochs=len(run["curve"]), final=_final(run["curve"]))
                runs.append(run)
                if (name, seed) not in done:
                    with open(args.out / "runs.jsonl", "a") as f:
                        f.write(json.dumps({k: run[k] for k in ("strategy", "seed", "wall_s", "trials")}) + "\n")
                print(f"{name} seed {seed}: best {run['final']:.4f} after {run['epochs']} epochs, {run['trials']} trials, "
                      f"{run['wall_s']:.1f} s", flush=True)
    finally:
        ray.shutdown()
    total = time.perf_counter() - os_started
    finals = sorted(max((v for v in r.epochs["val_acc"][:MAX_T_REPLAY] if math.isfinite(v)), default=0.1)
                    for r in table.configs)
    best, median = finals[-1], statistics.median(finals)
    summaries = [replay_summary(runs, names, b, best, median) for b in budgets]
    lines = [f"table: {table.path} ({len(table.configs)} configurations, {len(table.runs)} runs); best {best:.4f}, "
             f"median configuration {median:.4f}; seed-to-seed sd {table.noise()['sd']:.4f} "
             f"({table.noise()['pairs']} repeated configurations)", ""]
    for summary in summaries:
        lines += format_replay(summary) + [""]
    if refused:
        why = {n.split("+")[0]: reason for n, reason in refused.items()}
        lines += ["not run (the space refuses them, with every scheduler): "
                  + "; ".join(f"{searcher}: {reason.split(';')[0]}" for searcher, reason in why.items()), ""]
    timing = "simulated clock" if args.clock == "simulated" else f"time scale {args.time_scale:g}"
    lines += [f"{args.seeds} seeds, {args.max_concurrent} trials at once, {timing}, "
              f"lookup {args.lookup}; "
              f"benchmark wall time {total / 60:.1f} min", f"command: {' '.join(['python', 'benchmarks/search_efficiency.py', *argv])}"]
    print("\n".join(lines))
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    plot_replay(runs, names, budgets, args.out / "curves.png")
    (args.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "summaries": summaries, "runs": runs, "wall_s": total},
                                                      indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'table.md'}, {args.out / 'curves.png'}, {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
