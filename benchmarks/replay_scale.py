"""The engine at scale, made cheap by replay: a sweep of thousands of replayed trials, and how its
simulated wall time falls with the number of trials at once.

    python benchmarks/replay_scale.py sweep --replay TABLE --trials 2000       # one big sweep: driver cost
    python benchmarks/replay_scale.py workers --replay TABLE --workers 1,4,16,64 --trials 200
    python benchmarks/replay_scale.py repeat --replay TABLE --trials 40 --clock sleep   # do two runs agree?
    python benchmarks/replay_scale.py reach --replay TABLE --target 0.8604               # how hard is a target?

`sweep` runs one `fashion-tune sweep replay` (TPE with 40 start-up trials + the ASHA of
search_spaces/replay_cnn.yaml, `time_scale` 0 so only the engine's own cost is timed) of `--trials`
trials, 16 at a time, as a separate process, and samples that driver process every second: its RSS, its
CPU time and how many trials have finished (result.json files whose last line says done, counted as Ray
writes them). With `--kill-at N` it SIGKILLs the driver's whole process group (the driver and the Ray
it started) once N trials have finished, runs `fashion-tune sweep replay --name ... --resume`, and checks
that every trial finished before the kill has the same rows afterwards and the sweep ends with exactly
`--trials` terminated trials (exit 1 otherwise); times and RSS then cover both runs. It reports the wall
time, the driver time per trial, the RSS when 25%, 50% and 100% of the trials had finished (500,
1,000, 2,000 for --trials 2000), and Optuna's TPE sampling time per trial as the study grows (the
sweep's own trials added to a fresh study, then 5 `ask()` + suggest timed at each size).

`workers` runs the same TPE + ASHA replay with 1, 4, 16 and 64 trials at once (`max_concurrent_trials`
and `resources_per_trial.cpu` = 2 / workers, so 64 logical workers share 2 cores) and reports the
simulated wall time to a target (default: the 95th percentile of the recorded configurations' best
accuracy): when the first epoch whose recorded val_acc (without the replay's seed noise) reaches it
ends. On the simulated clock (`--clock simulated`, the default) that is the epoch's `sim_clock_s`; with
`--clock sleep` (`time_scale` 0.01) the trials are laid out afterwards on that many simulated workers in
the order Tune started them, each as long as the recorded seconds of the epochs it ran. `--resume`
reads the sweeps its workers.jsonl lists again instead of re-running them. ASHA's promise is that this falls nearly as 1 / workers.

`reach` reads the table only (no Ray): how many recorded configurations ever reach `--target`, at which
epoch they first do, how well the accuracy after k epochs ranks the configurations by their final best
(Spearman), and how many of the top quarter after k epochs reach the target. It bounds what early
stopping can save: no strategy reaches the target before a configuration that does has trained that long.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SPACE = HERE.parent / "search_spaces" / "replay_cnn.yaml"
TPE = {"type": "tpe", "n_startup_trials": 40}  # the replay space's searcher until QMC replaced it


def space_file(out: Path, table: str, trials: int, workers: int, time_scale: float, seed: int = 0,
               clock: str = "sleep") -> Path:
    data = yaml.safe_load(SPACE.read_text())
    # TPE, whatever the shipped replay space's searcher: these benchmarks measure the engine with Optuna's
    # model-based sampler in the loop (its cost grows with the study), as their recorded results did
    data["searcher"] = dict(TPE)
    data.update(table=str(Path(table).resolve()), num_samples=trials, max_concurrent_trials=workers,
                time_scale=time_scale, clock=clock, seed=seed, resources_per_trial={"cpu": round(2 / max(workers, 2), 4)})
    path = out / f"space-{trials}x{workers}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def finished_trials(experiment: Path) -> int:
    return sum(_is_done(path) for path in experiment.glob("trial_*/result.json"))


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds so far) of a live process, from /proc; (nan, nan) once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan, math.nan
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), math.nan)
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def drive(command: list[str], log: Path, experiment: Path, kill_at: int | None = None) -> dict:
    """Run a sweep command in its own process group, sampling its driver every second; with `kill_at`,
    SIGKILL the whole group (driver and the Ray it started) once that many trials have finished."""
    samples: list[tuple[float, float, int]] = []  # (seconds since start, driver RSS MiB, finished trials)
    started = time.perf_counter()
    cpu = 0.0
    with open(log, "w") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        while driver.poll() is None:
            time.sleep(1.0)
            rss, seconds = proc_stats(driver.pid)
            cpu = seconds if math.isfinite(seconds) else cpu
            done = finished_trials(experiment)
            samples.append((time.perf_counter() - started, rss, done))
            if kill_at is not None and done >= kill_at:
                os.killpg(driver.pid, signal.SIGKILL)
                killed = True
                break
        status = driver.wait()
    return {"wall_s": time.perf_counter() - started, "driver_cpu_s": cpu, "samples": samples, "status": status,
            "killed_at": samples[-1][2] if killed else None}


def trial_rows(experiment: Path) -> dict[str, list[tuple]]:
    """Each trial's reported (epoch, val_acc) rows, from its result.json."""
    rows = {}
    for path in experiment.glob("trial_*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[path.parent.name] = [(r["epoch"], r.get("val_acc")) for r in lines]
    return rows


def run_big_sweep(args) -> int:
    import pandas as pd

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = f"scale-{args.trials}"
    experiment = out / name
    space = space_file(out, args.replay, args.trials, 16, 0.0)
    sweep = [sys.executable, "-m", "fashion_tune", "sweep", "replay", "--name", name, "--storage", str(out),
             "--num-cpus", "2"]
    phases = [drive([*sweep, "--space", str(space)], out / "first.log", experiment, args.kill_at)]
    before_kill = None
    if args.kill_at is not None:
        if phases[0]["killed_at"] is None:
            raise SystemExit(f"the sweep ended (exit {phases[0]['status']}) before {args.kill_at} trials had finished")
        before_kill = {t: rows for t, rows in trial_rows(experiment).items() if _is_done(experiment / t / "result.json")}
        phases.append(drive([*sweep, "--resume"], out / "resume.log", experiment))
    if phases[-1]["status"] != 0:
        raise SystemExit(f"the sweep failed (exit {phases[-1]['status']}); see {out}")
    results = pd.read_csv(experiment / "results.csv")
    after = trial_rows(experiment)
    lost = [t for t, rows in (before_kill or {}).items() if after.get(t) != rows]
    samples, offset = [], 0.0
    for phase in phases:
        samples += [(t + offset, rss, done) for t, rss, done in phase["samples"]]
        offset += phase["wall_s"]
    wall, cpu = sum(p["wall_s"] for p in phases), sum(p["driver_cpu_s"] for p in phases)
    marks = {}
    for fraction in (0.25, 0.5, 1.0):
        count = int(args.trials * fraction)
        hit = next((s for s in samples if s[2] >= count), samples[-1])
        marks[count] = {"seconds": round(hit[0], 1), "driver_rss_mib": round(hit[1], 1)}
    tpe = tpe_cost(experiment, [int(args.trials * f) for f in (0.25, 0.5, 1.0)])
    summary = {"trials": len(results), "terminated": int((results["status"] == "TERMINATED").sum()),
               "epochs": int(results["epochs"].sum()), "wall_s": round(wall, 1),
               "wall_per_trial_ms": round(1000 * wall / len(results), 1),
               "driver_cpu_s": round(cpu, 1), "driver_cpu_per_trial_ms": round(1000 * cpu / len(results), 1),
               "peak_driver_rss_mib": round(max(s[1] for s in samples if math.isfinite(s[1])), 1), "at": marks,
               "tpe_ask_ms": tpe, "phases": [{k: v for k, v in p.items() if k != "samples"} for p in phases],
               "command": "python benchmarks/replay_scale.py " + " ".join(sys.argv[1:])}
    if before_kill is not None:
        summary["kill"] = {"finished_before": len(before_kill), "lost_or_changed": len(lost), "lost": lost[:10]}
    print(json.dumps(summary, indent=1))
    (out / "scale.json").write_text(json.dumps({**summary, "samples": samples}, indent=1) + "\n")
    return 0 if not lost and summary["terminated"] == args.trials else 1


def _is_done(path: Path) -> bool:
    """Whether a trial's result.json ends with its done line (only its tail is read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4000))
            last = f.read().splitlines()[-1]
    except (OSError, IndexError):
        return False
    return b'"done": true' in last


def tpe_cost(experiment: Path, sizes: list[int]) -> dict[int, float]:
    """Milliseconds per TPE `ask()` + suggest with the sweep's first n trials in the study."""
    import optuna

    from fashion_tune.search.study import open_study
    from fashion_tune.spaces.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [t for t in open_study(str(experiment)).trials if t.state.is_finished()]
    space = load_space(experiment / "space.yaml")
    cost = {}
    for n in sizes:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
        study.add_trials(done[:n])
        started = time.perf_counter()
        for _ in range(5):
            trial = study.ask()
            space.suggest(trial)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        cost[n] = round(1000 * (time.perf_counter() - started) / 5, 1)
    return cost


def simulated_time_to(experiment: Path, workers: int, target: float, table) -> tuple[float, float]:
    """(simulated seconds until an epoch reaches `target`, simulated seconds until the sweep ends): read from the
    simulated clock (`sim_clock_s`, --clock simulated), else with the trials laid out on `workers` simulated
    workers in the order Tune started them. An epoch reaches the target by its recorded val_acc, without the
    replay's seed noise (as search_efficiency.py scores)."""
    trials, clocked = [], []
    for path in experiment.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and "sim_clock_s" in rows[0]:
            clocked += [(r["sim_clock_s"], table.recorded(r["replay_config_id"], r["epoch"])) for r in rows]
        elif rows:
            first = rows[0]["reported_at"] - rows[0]["time_this_iter_s"]
            recorded = [table.recorded(r["replay_config_id"], r["epoch"]) for r in rows]
            trials.append((first, [(r["epoch_time_s"] or 0.0, v if math.isfinite(v) else -math.inf)
                                   for r, v in zip(rows, recorded)]))
    if clocked:
        return (min((at for at, value in clocked if value >= target), default=math.inf),
                max(at for at, _ in clocked))
    free = [0.0] * workers
    reached, end = math.inf, 0.0
    for _, epochs in sorted(trials):
        clock = heapq.heappop(free)
        for seconds, value in epochs:
            clock += seconds
            if value >= target:
                reached = min(reached, clock)
        heapq.heappush(free, clock)
        end = max(end, clock)
    return reached, end


def run_workers(args) -> int:
    import ray

    from fashion_tune.search.replay import load_table
    from fashion_tune.search.sweep import run_sweep

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = load_table(args.replay)
    bests = sorted(max((v for v in r.epochs["val_acc"] if math.isfinite(v)), default=0.0) for r in table.configs)
    target = args.target or statistics.quantiles(bests, n=20, method="inclusive")[-1]
    done = {}  # with --resume: (workers, seed) -> its row as first measured; its time to target is read again
    if args.resume and (out / "workers.jsonl").exists():
        for line in (out / "workers.jsonl").read_text().splitlines():
            row = json.loads(line)
            done[row["workers"], row["seed"]] = row
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            for seed in range(args.seeds):
                name = f"w{workers}-seed{seed}"
                if (workers, seed) in done:
                    wall, trials = done[workers, seed]["wall_s"], done[workers, seed]["trials"]
                else:
                    space = space_file(out, args.replay, args.trials, workers, args.time_scale, seed, args.clock)
                    started = time.perf_counter()
                    outcome = run_sweep("replay", space, name=name, storage=out, verbose=0, echo=lambda line: None)
                    wall, trials = time.perf_counter() - started, outcome.num_trials
                reached, end = simulated_time_to(out / name, workers, target, table)
                rows.append({"workers": workers, "seed": seed, "sim_to_target_s": reached, "sim_total_s": end,
                             "wall_s": wall, "trials": trials})
                print(json.dumps(rows[-1]), flush=True)
                if (workers, seed) not in done:
                    with open(out / "workers.jsonl", "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    finally:
        ray.shutdown()
    lines = [f"target {target:.4f} (95th percentile of the {len(bests)} recorded configurations' best accuracy); "
             f"{args.trials} trials of TPE + ASHA per sweep, {args.seeds} seeds, "
             + ("simulated clock" if args.clock == "simulated" else f"time scale {args.time_scale:g}"), "",
             "| trials at once | simulated time to target: median [min-max] | speed-up vs 1 | simulated sweep time (median) | real wall per sweep |",
             "|---|---|---|---|---|"]
    base = None
    for workers in sorted({r["workers"] for r in rows}):
        mine = [r for r in rows if r["workers"] == workers]
        to = sorted(r["sim_to_target_s"] for r in mine)
        med = statistics.median_low(to)
        base = base or med
        shown = (f"{med / 60:.1f} min [{to[0] / 60:.1f}-{to[-1] / 60:.1f}]" if math.isfinite(med)
                 else f"not reached ({sum(map(math.isfinite, to))}/{len(to)} seeds did)")
        ratio = f"{base / med:.1f}x" if math.isfinite(med) and math.isfinite(base) else "n/a"
        lines.append(f"| {workers} | {shown} | {ratio} | "
                     f"{statistics.median(r['sim_total_s'] for r in mine) / 60:.1f} min | "
                     f"{statistics.median(r['wall_s'] for r in mine):.0f} s |")
    lines.append(f"command: python benchmarks/replay_scale.py {' '.join(sys.argv[1:])}")
    print("\n".join(lines))
    (out / "workers.md").write_text("\n".join(lines) + "\n")
    (out / "workers.json").write_text(json.dumps({"target": target, "rows": rows}, indent=1) + "\n")
    return 0


def report_order(experiment: Path) -> list[tuple]:
    """Every report of a replay sweep as (epoch, searched values), in the order they were made: by the simulated
    clock's time where there is one, else by the wall clock (`reported_at`)."""
    rows = [json.loads(line) for path in experiment.glob("trial_*/result.json")
            for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r.get("sim_clock_s", r["reported_at"]), r["reported_at"]))
    return [(r["epoch"], json.dumps(r["config"], sort_keys=True)) for r in rows]


def run_repeat(args) -> int:
    """The shipped replay space (TPE + ASHA), `--trials` trials, run twice with the same seed on `--clock`: the
    wall time of each run and the first report where the two differ."""
    import ray

    from fashion_tune.search.sweep import run_sweep

    args.out.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    orders, walls = [], []
    try:
        for run in ("a", "b"):
            space = space_file(args.out, args.replay, args.trials, 4, args.time_scale, 0, args.clock)
            started = time.perf_counter()
            run_sweep("replay", space, name=f"{args.clock}-{run}", storage=args.out, verbose=0, echo=lambda line: None)
            walls.append(time.perf_counter() - started)
            orders.append(report_order(args.out / f"{args.clock}-{run}"))
    finally:
        ray.shutdown()
    first, second = orders
    differ = next((i for i, (x, y) in enumerate(zip(first, second)) if x != y),
                  None if len(first) == len(second) else min(len(first), len(second)))
    timing = "simulated clock" if args.clock == "simulated" else f"clock sleep, time scale {args.time_scale:g}"
    print(f"{args.trials} trials of TPE + ASHA, 4 at a time, {timing}: {len(first)} and {len(second)} reports; "
          + ("identical order" if differ is None else f"the runs differ from report {differ + 1}")
          + f"; wall {walls[0]:.1f} s and {walls[1]:.1f} s (Ray started once, before both)")
    return 0 if differ is None or args.clock == "sleep" else 1


def run_reach(args) -> int:
    """What the table says about reaching `--target`: no Ray, the recorded (lowest-seed) runs only."""
    import numpy as np
    import pandas as pd

    from fashion_tune.search.replay import load_table

    table = load_table(args.replay)
    length = table.max_epochs
    curves = np.array([np.pad(run.epochs["val_acc"], (0, length - run.length), constant_values=np.nan)
                       for run in table.configs])
    best = np.nanmax(np.where(np.isfinite(curves), curves, -np.inf), axis=1)
    reached = curves >= args.target  # NaN compares False
    hits = reached.any(axis=1)
    first = reached.argmax(axis=1)[hits] + 1
    print(f"{args.replay}: {len(curves)} configurations, {length} epochs; target {args.target:.4f}")
    if not hits.any():
        print("no configuration reaches the target")
        return 0
    print(f"reach it: {hits.sum()} ({hits.mean():.1%}); first at epoch {first.min()} (min), "
          f"{np.median(first):g} (median), {first.max()} (max)")
    finals = pd.Series(best)
    for k in (1, 2, 4, 8):
        if k > length:
            break
        early = pd.Series(curves[:, k - 1])
        top = early.rank(ascending=False, na_option="bottom") <= len(early) / 4
        print(f"after {k:>2} epochs: rank correlation with the final best {early.corr(finals, method='spearman'):.2f}; "
              f"the top quarter then reaches the target {hits[top.to_numpy()].mean():.0%} of the time")
    print(f"random search meets one in {1 / hits.mean():.1f} configurations on average: {length / hits.mean():.0f} "
          f"epochs of {length}-epoch trials")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    big = sub.add_parser("sweep", help="one big replay sweep: wall time, driver time per trial, RSS, TPE cost")
    big.add_argument("--replay", required=True, metavar="TABLE")
    big.add_argument("--trials", type=int, default=2000)
    big.add_argument("--kill-at", type=int, metavar="N", help="SIGKILL the sweep (driver and its Ray) once N trials "
                                                                "have finished, then --resume it and check nothing was lost")
    big.add_argument("--out", type=Path, default=Path("ray_results/replay-scale"))
    workers = sub.add_parser("workers", help="simulated time to target against trials at once")
    workers.add_argument("--replay", required=True, metavar="TABLE")
    workers.add_argument("--workers", default="1,4,16,64")
    workers.add_argument("--trials", type=int, default=200)
    workers.add_argument("--seeds", type=int, default=3)
    workers.add_argument("--clock", choices=("simulated", "sleep"), default="simulated",
                         help="simulated (default): the replay's clock gives each report's simulated time; sleep: "
                              "trials sleep --time-scale x the recorded seconds and are laid out on workers afterwards")
    workers.add_argument("--time-scale", type=float, default=0.01)
    workers.add_argument("--target", type=float, help="validation accuracy to reach (default: see above)")
    workers.add_argument("--out", type=Path, default=Path("ray_results/replay-workers"))
    workers.add_argument("--resume", action="store_true", help="continue a run in --out: the sweeps its workers.jsonl "
                                                               "lists are read again, not re-run")
    repeat = sub.add_parser("repeat", help="run the shipped replay space twice with one seed: do the runs agree?")
    repeat.add_argument("--replay", required=True, metavar="TABLE")
    repeat.add_argument("--trials", type=int, default=40)
    repeat.add_argument("--clock", choices=("simulated", "sleep"), default="simulated")
    repeat.add_argument("--time-scale", type=float, default=0.01, help="with --clock sleep (default 0.01)")
    repeat.add_argument("--out", type=Path, default=Path("ray_results/replay-repeat"))
    reach = sub.add_parser("reach", help="from the table alone: how many configurations reach a target, and when")
    reach.add_argument("--replay", required=True, metavar="TABLE")
    reach.add_argument("--target", type=float, required=True, help="validation accuracy, e.g. 0.8604")
    args = parser.parse_args(argv)
    out = getattr(args, "out", None)
    if out is not None and out.exists() and any(out.iterdir()) and not getattr(args, "resume", False):
        parser.error(f"{out} is not empty; pass another --out")
    return {"sweep": run_big_sweep, "workers": run_workers, "repeat": run_repeat, "reach": run_reach}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
