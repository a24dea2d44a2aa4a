"""Search efficiency: which strategy finds a good CNN in the fewest training epochs.

    python benchmarks/search_efficiency.py                 # the measured run (sized for < 1 hour, 2 cores)
    python benchmarks/search_efficiency.py --quick         # minutes: proves the pipeline end to end
    python benchmarks/search_efficiency.py --seeds 5 --strategies random+fifo,tpe+asha

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
import json
import math
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
    "pbt": ("random", "pbt"),
}
BASELINE = "random+fifo"
MAX_TRIALS_FACTOR = 4  # strategies that stop trials early may propose up to this many times --trials


def space_for(name: str, seed: int, sizes: dict) -> dict:
    """The shared space with one strategy's searcher and scheduler, and the sizes of this run."""
    searcher, scheduler = STRATEGIES[name]
    data = copy.deepcopy(SPACE)
    data["fixed"].update(subset=sizes["subset"], val_subset=sizes["val_subset"])  # the same data for every run
    data["seed"] = seed
    max_t, trials = sizes["max_t"], sizes["trials"]
    data["searcher"] = {"type": searcher}
    if searcher != "random":
        data["searcher"]["n_startup_trials"] = max(2, trials // 2)
    if scheduler == "fifo":
        data["scheduler"], data["num_samples"] = {"type": "fifo", "max_t": max_t}, trials
    elif scheduler == "pbt":
        data["scheduler"] = {"type": "pbt", "max_t": max_t, "perturbation_interval": max(1, max_t // 3),
                             "mutate": ["lr", "weight_decay", "dropout"]}
        data["num_samples"] = trials  # the population; clones re-train epochs, and the budget counts them
    else:
        data["scheduler"] = {"type": "asha", "max_t": max_t, "grace_period": 1, "reduction_factor": 2}
        data["num_samples"] = trials * MAX_TRIALS_FACTOR
    return data


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
    space = folder / f"{name}-seed{seed}.yaml"
    space.write_text(yaml.safe_dump(space_for(name, seed, sizes), sort_keys=False))
    budget = sizes["trials"] * sizes["max_t"]
    started = time.perf_counter()
    outcome = run_sweep("cnn", space, name=f"{name}-seed{seed}", storage=folder, data_dir=data_dir, verbose=0,
                        stop=Budget(budget), echo=lambda line: None)
    wall = time.perf_counter() - started
    curve = best_so_far(Path(outcome.experiment_dir))[:budget]
    return {"strategy": name, "seed": seed, "wall_s": wall, "epochs": len(curve), "curve": curve,
            "final": curve[-1] if curve else math.nan, "trials": outcome.num_trials}


def best_so_far(directory: Path) -> list[float]:
    """Best validation accuracy after each epoch trained, in the order the epochs finished.

    Every line of every trial's result.json is one epoch trained (a PBT clone's re-trained
    epochs included); Ray's timestamp and the trial's time orders them across trials.
    """
    rows = []
    for path in directory.glob("trial_*/result.json"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append((row.get("timestamp", 0), row.get("time_total_s", 0.0), row.get("val_acc", math.nan)))
    best, curve = -math.inf, []
    for _, _, value in sorted(rows):
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = max(best, value)
        curve.append(best if math.isfinite(best) else math.nan)
    return curve


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
    unknown = [n for n in names if n not in STRATEGIES]
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


if __name__ == "__main__":
    sys.exit(main())
