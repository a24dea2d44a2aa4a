"""Record real learning curves once, for replaying search strategies at thousands of trials.

    python benchmarks/record_curves.py                      # the whole table (hours; resumable)
    python benchmarks/record_curves.py --workers 1          # one core, leaving the other free
    python benchmarks/record_curves.py --configs 4 --repeats 1 --out /tmp/curves   # minutes: a check
    python benchmarks/record_curves.py --table              # write the table from what is recorded

Every configuration of a fixed, seeded sample of `benchmarks/replay_cnn_space.yaml` (scrambled
Sobol points through the space's own parameter definitions, so the table covers the space evenly)
is trained with the project's training loop (`fashion_tune.training.loop.fit`, what the sweep's trainable
runs) on real Fashion-MNIST, to the space's max_t, in fp32 with one thread per run (the figures must
not depend on which CPU recorded them). Each epoch's validation accuracy and loss, training loss and
seconds are kept. The first `--repeats` configurations are trained again with other seeds (the
model's initialisation, the batch order and the training subset change), so the table also gives
the noise of one measurement.

Runs are appended to OUT/runs.jsonl as they finish, one line per (configuration, seed); a run
already there is not trained again, so the script resumes where it was stopped. `--table` (and the
end of a full recording) writes OUT/curves.csv: one row per (config_id, seed, epoch), with the
configuration's searched values, plus OUT/recording.json (the space, sizes, machine and command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPACE_FILE = HERE / "replay_cnn_space.yaml"
DEFAULT_OUT = HERE / "results" / "curves"
CONFIGS, REPEATS, REPEAT_SEEDS = 400, 40, (1,)
RUNS, TABLE, RECORDING = "runs.jsonl", "curves.csv", "recording.json"
_DATA: dict[str | None, Any] = {}  # Fashion-MNIST as read, per data_dir, in each worker process
EPOCH_FIELDS = ("val_acc", "val_loss", "train_loss", "epoch_time_s", "diverged")


def sample_configs(space, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` searched-parameter dicts: scrambled Sobol points through the space's parameter definitions."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    study = optuna.create_study(sampler=sampler)
    configs = []
    for _ in range(count):
        trial = study.ask()
        space.suggest(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def plan(space, configs: int, repeats: int) -> list[dict[str, Any]]:
    """Every run to record: each configuration with seed 0, the first `repeats` again with REPEAT_SEEDS."""
    sampled = sample_configs(space, configs, space.seed)
    runs = [{"config_id": i, "seed": 0, "params": params} for i, params in enumerate(sampled)]
    runs += [{"config_id": i, "seed": seed, "params": sampled[i]} for seed in REPEAT_SEEDS for i in range(min(repeats, configs))]
    return runs


def train_one(run: dict[str, Any], space_file: str, data_dir: str | None) -> dict[str, Any]:
    """Train one configuration to max_t with the project's training loop; its per-epoch record."""
    import torch

    torch.set_num_threads(1)
    from fashion_tune.data.datafiles import load_fashion_mnist
    from fashion_tune.data.splits import make_splits
    from fashion_tune.training.loop import fit
    from fashion_tune.spaces.space import load_space

    space = load_space(space_file)
    config = space.trial_config({**run["params"], "seed": run["seed"], "epochs": space.max_t})
    if data_dir not in _DATA:  # read once per worker process
        _DATA[data_dir] = load_fashion_mnist(data_dir)
    splits = make_splits(_DATA[data_dir], val_size=config["val_size"], split_seed=config["split_seed"],
                         subset=config["subset"], val_subset=config["val_subset"], subset_seed=config["seed"])
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    fit("cnn", config, splits=splits,
        reporter=lambda metrics, state: epochs.append({"epoch": metrics["epoch"],
                                                       **{k: metrics.get(k) for k in EPOCH_FIELDS}}))
    return {**run, "epochs": epochs, "params_count": _params(config), "wall_s": round(time.perf_counter() - started, 2)}


def _params(config: dict[str, Any]) -> int:
    from fashion_tune.training.loop import training_cost

    return int(training_cost("cnn", config)["params"])


def recorded(out: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(config_id, seed) -> run, for the runs already in OUT/runs.jsonl (a line cut short is ignored)."""
    done = {}
    path = out / RUNS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed recording
            done[(run["config_id"], run["seed"])] = run
    return done


def write_table(out: Path, space) -> Path:
    """OUT/curves.csv from OUT/runs.jsonl: one row per (config_id, seed, epoch)."""
    import pandas as pd

    rows = []
    for (config_id, seed), run in sorted(recorded(out).items()):
        for epoch in run["epochs"]:
            rows.append({"config_id": config_id, "seed": seed, **run["params"], "params": run.get("params_count"),
                         **epoch})
    frame = pd.DataFrame(rows)
    target = out / TABLE
    partial = target.with_suffix(".csv.partial")
    frame.to_csv(partial, index=False)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where runs.jsonl and curves.csv go (default {DEFAULT_OUT})")
    parser.add_argument("--configs", type=int, default=CONFIGS, help=f"configurations to record (default {CONFIGS})")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"of them trained again with seed 1 (default {REPEATS})")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once, one thread each (default 2)")
    parser.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    parser.add_argument("--table", action="store_true", help="only write curves.csv from what is recorded")
    args = parser.parse_args(argv)
    if args.configs < 1 or args.repeats < 0 or args.workers < 1:
        parser.error("--configs and --workers must be >= 1, --repeats >= 0")

    from fashion_tune.spaces.space import load_space

    space = load_space(SPACE_FILE)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / RECORDING).write_text(json.dumps({
        "space": str(SPACE_FILE.relative_to(HERE.parent)), "configs": args.configs, "repeats": args.repeats,
        "repeat_seeds": list(REPEAT_SEEDS), "max_t": space.max_t,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/record_curves.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }, indent=2) + "\n")
    if args.table:
        print(write_table(args.out, space))
        return 0
    done = recorded(args.out)
    todo = [run for run in plan(space, args.configs, args.repeats) if (run["config_id"], run["seed"]) not in done]
    print(f"{len(done)} runs recorded, {len(todo)} to go, {args.workers} at a time -> {args.out / RUNS}", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool, open(args.out / RUNS, "a") as log:
        futures = [pool.submit(train_one, run, str(SPACE_FILE), args.data_dir) for run in todo]
        for n, future in enumerate(as_completed(futures), 1):
            run = future.result()
            log.write(json.dumps(run) + "\n")
            log.flush()
            last = run["epochs"][-1] if run["epochs"] else {}
            elapsed = time.perf_counter() - started
            print(f"[{n}/{len(todo)}] config {run['config_id']} seed {run['seed']}: val_acc {last.get('val_acc')} "
                  f"after {len(run['epochs'])} epochs, {run['wall_s']:.0f} s; about {elapsed / n * (len(todo) - n) / 60:.0f} min left",
                  flush=True)
    print(write_table(args.out, space))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
