"""Sweep results from the files on disk: dataframes, the best trial, plots and a summary.

Everything here reads an experiment directory (`ray_results/<name>`) as `fashion-tune sweep`
and Ray Tune leave it: `sweep.json`, Ray's newest `experiment_state-*.json` (trial statuses),
and each trial's `result.json` and `checkpoint_*/checkpoint.pt`. Nothing needs Ray running or
the trainable, so it works while a sweep is still running, and after one was interrupted.

    from fashion_tune.analysis import load_results, load_history, best_trial
    results = load_results("ray_results/vae-quick")   # one row per trial
    history = load_history("ray_results/vae-quick")   # one row per trial per epoch
    pick = best_trial("ray_results/vae-quick")        # by the validation metric; pick.checkpoint
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fashion_tune.checkpoint import CHECKPOINT_FILE
from fashion_tune.config import METRICS, resolve_config
from fashion_tune.errors import FashionTuneError

SWEEP_INFO = "sweep.json"
SPACE_COPY = "space.yaml"
RESULT_FILE = "result.json"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
LINEAGE_FILE = "pbt_lineage.jsonl"  # written by strategies.SweepPBT
_STOPPED_BY = {"asha": "asha", "hyperband": "hyperband", "median": "median"}  # schedulers that stop trials early
_LABELS = {"asha": "ASHA", "hyperband": "HyperBand", "median": "the median rule", "pbt": "PBT", "fifo": "FIFO"}
# Per-epoch bookkeeping that Ray adds to every result; kept in the history, left out of the summaries.
_RAY_KEYS = ("trial_id", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "date",
             "hostname", "node_ip", "pid", "checkpoint_dir_name", "done", "should_checkpoint",
             "time_since_restore", "iterations_since_restore")


@dataclass
class TrialPick:
    """The trial a sweep found best by a validation metric, and its checkpoint at that metric."""

    kind: str
    trial_id: str
    config: dict  # the resolved training config
    metric: str
    mode: str
    value: float  # the best validation value the trial reached
    epoch: int  # the epoch of that value (and of `checkpoint`)
    checkpoint: Path  # directory holding checkpoint.pt


# --- reading an experiment -------------------------------------------------------------------


def experiment_path(path: str | Path) -> Path:
    """The experiment directory, checked: it must hold the sweep.json that `fashion-tune sweep` writes."""
    text = str(path)
    if "://" in text:
        raise FashionTuneError(f"{text} is remote storage; copy the experiment to a local directory first "
                               "(e.g. `aws s3 sync` / `gsutil rsync`) and analyse that")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FashionTuneError(f"{path} is not a directory; pass an experiment directory such as ray_results/NAME")
    if not (path / SWEEP_INFO).is_file():
        raise FashionTuneError(f"{path} is not a fashion-tune experiment directory (no {SWEEP_INFO}); "
                               "pass the directory `fashion-tune sweep` printed, such as ray_results/NAME")
    return path.resolve()


def read_sweep_info(path: str | Path) -> dict[str, Any]:
    """The experiment's sweep.json: kind, metric, mode, num_samples, seed, max_t, times, status..."""
    path = experiment_path(path)
    try:
        return json.loads((path / SWEEP_INFO).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FashionTuneError(f"{path / SWEEP_INFO} is unreadable ({exc}); the experiment directory is damaged") from None


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line a running trial is writing right now
            continue
    return rows


def _trial_records(path: Path) -> list[dict[str, Any]]:
    """Every trial Ray knows of: id, status, directory, config, failures (newest experiment state + dirs)."""
    records: dict[str, dict[str, Any]] = {}
    # The newest by name, as Tune's restore picks it: a resumed sweep copies the older state files
    # back into the directory, so modification times do not order them.
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.name)
    if states:
        try:
            state = json.loads(states[-1].read_text())
            for trial_json, metadata_json in state.get("trial_data", []):
                trial, metadata = json.loads(trial_json), json.loads(metadata_json)
                directory = path / trial.get("relative_logdir", "")
                records[trial["trial_id"]] = {
                    "trial_id": trial["trial_id"], "status": trial.get("status", "UNKNOWN"),
                    "trial_dir": directory, "config": trial.get("config") or {},
                    "num_failures": int(metadata.get("num_failures", 0) or 0),
                }
        except (OSError, ValueError, KeyError, TypeError):
            records = {}  # written by another Ray version, or mid-write: fall back to the trial directories
    known = {r["trial_dir"].name for r in records.values()}
    for directory in sorted(p for p in path.iterdir() if p.is_dir() and p.name not in known):
        params = directory / "params.json"
        rows = _read_json_lines(directory / RESULT_FILE)
        if not params.is_file() and not rows:
            continue
        trial_id = rows[-1]["trial_id"] if rows and "trial_id" in rows[-1] else directory.name.rsplit("_", 1)[-1]
        try:
            config = json.loads(params.read_text())
        except (OSError, json.JSONDecodeError):
            config = rows[-1].get("config", {}) if rows else {}
        records[trial_id] = {"trial_id": trial_id, "status": "RUNNING", "trial_dir": directory,
                             "config": config, "num_failures": 0}
    for record in records.values():
        directory = record["trial_dir"]
        rows = _read_json_lines(directory / RESULT_FILE)
        if rows and rows[-1].get("done") and record["status"] in UNFINISHED:
            record["status"] = "TERMINATED"  # the state file may lag behind a running sweep
        record["rows"] = rows
    return list(records.values())


def _history_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's results, one per epoch; a re-reported epoch (after a restore) keeps its last report."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in record["rows"]:
        row = {k: v for k, v in row.items() if k != "config"}
        row["trial_id"] = record["trial_id"]
        by_epoch[row.get("epoch", row.get("training_iteration"))] = row
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def load_history(path: str | Path) -> pd.DataFrame:
    """One row per trial per epoch: trial_id, epoch, every metric the trainable reported, Ray's fields."""
    path = experiment_path(path)
    rows = [row for record in _trial_records(path) for row in _history_rows(record)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    first = [c for c in ("trial_id", "epoch") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def _best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    best = None
    for row in rows:
        if row.get("diverged") or not _is_finite(row.get(metric)):
            continue
        if best is None or _better(row[metric], best[metric], mode):
            best = row
    return best


def _checkpoint_dir(record: dict[str, Any], row: dict[str, Any] | None) -> Path | None:
    if row is None or not row.get("checkpoint_dir_name"):
        return None
    directory = record["trial_dir"] / row["checkpoint_dir_name"]
    return directory if (directory / CHECKPOINT_FILE).is_file() else None


def load_results(path: str | Path) -> pd.DataFrame:
    """One row per trial.

    Columns: trial_id, status (Ray's: TERMINATED, ERROR, RUNNING, PENDING...), `config/<key>` for
    every config value Ray passed, the last epoch's metrics (`<metric>` for each the trainable
    reports), `best_<metric>` and best_epoch (the sweep's metric, over non-diverged epochs),
    epochs (run), max_t, stopped_early (ASHA or patience ended it before max_t), stop_reason
    (completed, asha, early_stop, diverged, error, or empty while running), diverged,
    best_checkpoint (directory of the checkpoint at best_epoch, or None), num_failures,
    hostname, node_ip, pid (of the last report), time_total_s, trial_dir.
    """
    path = experiment_path(path)
    info = read_sweep_info(path)
    kind, metric, mode, max_t = info["kind"], info["metric"], info["mode"], info.get("max_t")
    rows = []
    for record in _trial_records(path):
        history = _history_rows(record)
        last = history[-1] if history else {}
        best = _best_row(history, metric, mode)
        diverged = any(bool(r.get("diverged")) for r in history)
        epochs = int(last.get("epoch", 0) or 0)
        config = record["config"]
        status = record["status"]
        patience = config.get("early_stop_patience", 0) or 0
        if status == "ERROR":
            reason = "error"
        elif diverged:
            reason = "diverged"
        elif status != "TERMINATED":
            reason = ""
        elif max_t is None or epochs >= max_t:
            reason = "completed"
        elif patience and best is not None and epochs - int(best.get("epoch", 0)) >= patience:
            reason = "early_stop"
        else:
            reason = _STOPPED_BY.get(info.get("scheduler") or "asha", "stopped")  # the scheduler stopped it
        checkpoint = _checkpoint_dir(record, best)
        row = {
            "trial_id": record["trial_id"], "status": status,
            **{f"config/{k}": v for k, v in config.items()},
            **{m: last.get(m, math.nan) for m in METRICS[kind]},
            f"best_{metric}": best[metric] if best else math.nan,
            "best_epoch": int(best["epoch"]) if best else 0,
            "epochs": epochs, "max_t": max_t,
            "stopped_early": reason in (*_STOPPED_BY.values(), "stopped", "early_stop"), "stop_reason": reason,
            "diverged": diverged,
            "best_checkpoint": str(checkpoint) if checkpoint else None,
            "num_failures": record["num_failures"],
            "hostname": last.get("hostname"), "node_ip": last.get("node_ip"), "pid": last.get("pid"),
            "time_total_s": last.get("time_total_s", math.nan), "trial_dir": str(record["trial_dir"]),
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["trial_id", "status", f"best_{metric}", "epochs", "stopped_early"])
    return frame


def best_trial(experiment_dir: str | Path, metric: str | None = None, mode: str | None = None,
               limits: dict[str, float] | None = None) -> TrialPick:
    """The trial with the best validation `metric` (default: the sweep's) and its checkpoint at that value.

    Diverged trials are left out; running and interrupted sweeps are read as they are on disk.
    `limits` ({"params": 1e6, "flops": 5e7}) keeps only trials whose reported cost is at most that.
    """
    path = experiment_path(experiment_dir)
    info = read_sweep_info(path)
    kind = info["kind"]
    metric = metric or info["metric"]
    validation = [m for m in METRICS[kind] if m.startswith("val_")]
    if metric not in validation:
        raise FashionTuneError(f"metric {metric!r} is not a validation metric of the {kind} trainable; "
                               f"choose one of: {', '.join(validation)}")
    mode = mode or (info["mode"] if metric == info["metric"] else METRICS[kind][metric])
    if mode not in ("min", "max"):
        raise FashionTuneError(f"mode {mode!r} is not allowed; choose min or max")

    pick = None
    smallest: dict[str, float] = {}  # per limit, the lowest cost seen (for the error when none fits)
    for record in _trial_records(path):
        history = _history_rows(record)
        if any(r.get("diverged") for r in history):
            continue
        row = _best_row(history, metric, mode)
        if row is not None and not _within(row, limits or {}, smallest):
            continue
        if row is not None and (pick is None or _better(row[metric], pick[1][metric], mode)):
            pick = (record, row)
    if pick is None and smallest:
        raise FashionTuneError(f"no trial in {path} satisfies " + " and ".join(
            f"{k} <= {v:,.0f} (the smallest has {smallest.get(k, math.nan):,.0f})" for k, v in limits.items())
            + "; raise the limit or sweep smaller models")
    if pick is None:
        raise FashionTuneError(f"no trial in {path} has reported a finite {metric} yet (trials still pending, "
                               "all diverged, or all failed); wait for the sweep or check its trials")
    record, row = pick
    checkpoint = _checkpoint_dir(record, row)
    if checkpoint is None:
        name = row.get("checkpoint_dir_name") or "(none reported)"
        raise FashionTuneError(f"the best trial {record['trial_id']} reached {metric}={row[metric]:.6g} at epoch "
                               f"{row.get('epoch')}, but its checkpoint {record['trial_dir'] / str(name)} is gone "
                               f"(the sweep keeps the best few by {info['metric']}); pick by {info['metric']}")
    return TrialPick(kind=kind, trial_id=record["trial_id"], config=resolve_config(kind, record["config"]),
                     metric=metric, mode=mode, value=float(row[metric]), epoch=int(row["epoch"]),
                     checkpoint=checkpoint)


def _within(row: dict[str, Any], limits: dict[str, float], smallest: dict[str, float]) -> bool:
    """Whether a trial's reported cost is inside every limit; records the smallest cost seen."""
    ok = True
    for key, limit in limits.items():
        value = row.get(key)
        if not _is_finite(value):
            raise FashionTuneError(f"the trials report no {key}, so --max-{key} cannot be checked; "
                                   "sweep again with this version of fashion-tune")
        smallest[key] = min(smallest.get(key, math.inf), value)
        ok = ok and value <= limit
    return ok


def write_frame(frame: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """Write `frame` as stem.csv and stem.parquet (mixed-type columns are stored as text in Parquet)."""
    stem = Path(stem)
    csv, parquet = stem.with_suffix(".csv"), stem.with_suffix(".parquet")
    frame.to_csv(csv, index=False)
    try:
        frame.to_parquet(parquet, index=False)
    except (ValueError, TypeError, ImportError) as first_error:
        mixed = frame.copy()
        for column in mixed.columns[mixed.dtypes == object]:
            mixed[column] = mixed[column].map(lambda v: None if v is None else str(v))
        try:
            mixed.to_parquet(parquet, index=False)
        except Exception:  # noqa: BLE001 - the CSV is written; say why the Parquet is not
            raise FashionTuneError(f"cannot write {parquet}: {first_error}") from None
    return csv, parquet


# --- analysis: tables, plots, importances, summary ------------------------------------------


def _space(path: Path, kind: str):
    from fashion_tune.spaces import load_space

    copy = path / SPACE_COPY
    try:
        return load_space(copy, kind=kind) if copy.is_file() else None
    except FashionTuneError:
        return None


def top_trials(results: pd.DataFrame, metric: str, mode: str, params: list[str], k: int = 10) -> pd.DataFrame:
    """The k best trials by `best_<metric>` with their searched parameters."""
    column = f"best_{metric}"
    if results.empty:
        return results
    ordered = results.sort_values(column, ascending=(mode == "min"), na_position="last")
    columns = ["trial_id", "status", column, "best_epoch", "epochs", "stop_reason"]
    columns += [f"config/{p}" for p in params if f"config/{p}" in ordered.columns]
    table = ordered[columns].head(k).rename(columns={f"config/{p}": p for p in params})
    return table.reset_index(drop=True)


def param_importances(results: pd.DataFrame, space, metric: str, mode: str) -> dict[str, float]:
    """Optuna's importances from the finished, non-diverged trials, rebuilt as an Optuna study.

    Each trial's value is its final metric (what TPE saw), ASHA-stopped trials included at their
    budget. Raises ValueError when there are too few trials or nothing varies.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    done = results[(results["status"] == "TERMINATED") & ~results["diverged"].astype(bool)]
    for _, row in done.iterrows():
        value = row.get(metric)
        if not _is_finite(value):
            continue
        config = {k.removeprefix("config/"): v for k, v in row.items() if str(k).startswith("config/")}
        params, distributions = {}, {}
        for name, param in space.active_params(config).items():
            value_of = config.get(name)
            if value_of is None or (isinstance(value_of, float) and math.isnan(value_of)) or not param.contains(value_of):
                continue
            params[name], distributions[name] = value_of, param.distribution()
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(value)))
    n = len(study.trials)
    if n < 2:
        raise ValueError(f"{n} finished trial(s); importances need at least 2")
    # PED-ANOVA (Optuna's default) compares the top quantile with the rest; a small sweep needs a larger one.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 2.0 / n)))
    with warnings.catch_warnings():
        # "some regimes have less than 2 trials": true of every small sweep, and said in the summary
        warnings.simplefilter("ignore", UserWarning)
        return optuna.importance.get_param_importances(study, evaluator=evaluator)


def analyze(experiment_dir: str | Path, top: int = 10, out: str | Path | None = None,
            echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Print the top trials and write curves.png, params.png, importance.png and summary.md to `out`."""
    import matplotlib

    matplotlib.use("Agg")

    path = experiment_path(experiment_dir)
    info = read_sweep_info(path)
    kind, metric, mode = info["kind"], info["metric"], info["mode"]
    out = Path(out) if out else path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    results, history = load_results(path), load_history(path)
    space = _space(path, kind)
    params = space.param_names() if space else list(info.get("params", []))

    table = top_trials(results, metric, mode, params, top)
    if table.empty:
        echo(f"{path}: no trials yet")
    else:
        echo(f"top {len(table)} of {len(results)} trials by {metric} ({mode}) in {path}:")
        echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    files: dict[str, Path] = {}
    if not history.empty and metric in history.columns:
        files["curves"] = _plot_curves(history, results, info, out / "curves.png")
    if not results.empty and params:
        files["params"] = _plot_params(results, params, space, metric, out / "params.png")
    importances: dict[str, float] = {}
    importance_note = ""
    if space is None:
        importance_note = f"no {SPACE_COPY} in the experiment directory, so no distributions to rebuild the study"
    elif not results.empty:
        try:
            importances = param_importances(results, space, metric, mode)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            importance_note = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if importances:
            files["importance"] = _plot_importances(importances, metric, out / "importance.png")
    sections = _strategy_sections(path, info, history, out, files, echo)
    files["summary"] = _write_summary(out / "summary.md", path, info, results, table, importances,
                                      importance_note, files, sections)
    echo("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def _strategy_sections(path: Path, info: dict[str, Any], history: pd.DataFrame, out: Path,
                       files: dict[str, Path], echo: Callable[[str], None]) -> list[str]:
    """A multi-objective sweep's Pareto front (pareto.png) and a PBT sweep's lineage, for summary.md."""
    from fashion_tune import tradeoffs

    lines: list[str] = []
    objectives = [tuple(o) for o in info.get("objectives") or []]
    if len(objectives) > 1 and not history.empty and all(m in history.columns for m, _ in objectives):
        front = tradeoffs.pareto_front(history, objectives)
        if not front.empty:
            files["pareto"] = tradeoffs.plot_pareto(front, objectives, out / "pareto.png",
                                                    f"{info.get('name', path.name)}: Pareto front")
            shown = front[front["pareto"]].drop(columns="pareto")
            echo(f"Pareto front ({len(shown)} of {len(front)} trials; "
                 + ", ".join(f"{mode} {m}" for m, mode in objectives) + "):")
            echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
            lines += ["## Pareto front", "", f"{len(shown)} of {len(front)} trials are not dominated on "
                      + ", ".join(f"{mode} `{m}`" for m, mode in objectives) + " (each at its best epoch of the first):",
                      "", _markdown(shown), ""]
    if info.get("scheduler") == "pbt":
        steps = tradeoffs.describe_lineage(tradeoffs.lineage(path))
        echo(f"PBT lineage ({len(steps)} exploit steps):" + "".join(f"\n  {line}" for line in steps))
        lines += ["## PBT lineage", "", *(f"- {line}" for line in steps or ["no exploit step yet"]), ""]
    return lines


def _plot_curves(history: pd.DataFrame, results: pd.DataFrame, info: dict[str, Any], target: Path) -> Path:
    import matplotlib.pyplot as plt

    metric, max_t = info["metric"], info.get("max_t")
    reasons = dict(zip(results["trial_id"], results["stop_reason"])) if not results.empty else {}
    fig, ax = plt.subplots(figsize=(8, 5))
    style = {"asha": ("x", "stopped by ASHA"), "hyperband": ("x", "stopped by HyperBand"),
             "median": ("x", "stopped by the median rule"), "early_stop": ("s", "early stop"),
             "completed": ("o", "reached max_t"),
             "diverged": ("v", "diverged"), "error": ("*", "error"), "": (">", "running")}
    labelled = set()
    for trial_id, rows in history.groupby("trial_id", sort=False):
        rows = rows[rows[metric].map(_is_finite)].sort_values("epoch")
        if rows.empty:
            continue
        line, = ax.plot(rows["epoch"], rows[metric], alpha=0.8, linewidth=1.2)
        reason = reasons.get(trial_id, "")
        marker, label = style.get(reason, ("o", reason))
        ax.plot(rows["epoch"].iloc[-1], rows[metric].iloc[-1], marker=marker, color=line.get_color(),
                markersize=8, linestyle="none", label=None if reason in labelled else label)
        labelled.add(reason)
    grace, rf = info.get("grace_period"), info.get("reduction_factor")
    if max_t and grace and rf:
        milestone = grace
        while milestone < max_t:
            ax.axvline(milestone, color="grey", linestyle=":", linewidth=0.8)
            milestone *= rf
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (validation)")
    rungs = " (dotted: ASHA rungs)" if max_t and grace and rf else ""
    ax.set_title(f"{info.get('name', '')}: {metric} per trial{rungs}")
    if labelled:
        ax.legend(loc="best", fontsize="small")
    if metric == "val_neg_elbo":
        finite = history[metric][history[metric].map(_is_finite)]
        if len(finite) and finite.max() > 3 * finite.min() > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_params(results: pd.DataFrame, params: list[str], space, metric: str, target: Path) -> Path:
    import matplotlib.pyplot as plt

    ok = results[~results["diverged"].astype(bool) & results[metric].map(_is_finite)]
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    kinds = {p.name: p for p in space.all_params()} if space else {}
    for ax, name in zip(axes.flat, params):
        column = f"config/{name}"
        ax.set_xlabel(name)
        if column not in ok.columns or ok[column].isna().all():
            ax.text(0.5, 0.5, "no finished trial has it yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        data = ok[ok[column].notna()]
        param = kinds.get(name)
        stopped = data["stopped_early"].astype(bool)
        if param is not None and param.type == "choice" or (len(data) and data[column].map(lambda v: isinstance(v, str)).any()):
            labels = [str(v) for v in (param.values if param is not None else sorted(data[column].unique(), key=str))]
            x = data[column].map(lambda v: labels.index(str(v)) if str(v) in labels else -1)
            ax.set_xticks(range(len(labels)), labels, rotation=20)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            x = data[column].astype(float)
            if param is not None and param.type == "loguniform":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.scatter(x[~stopped], data[metric][~stopped], label="reached max_t")
        ax.scatter(x[stopped], data[metric][stopped], marker="x", label="stopped early")
        ax.set_ylabel(f"final {metric}")
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_importances(importances: dict[str, float], metric: str, target: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance for {metric} (Optuna, PED-ANOVA)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _write_summary(target: Path, path: Path, info: dict[str, Any], results: pd.DataFrame, table: pd.DataFrame,
                   importances: dict[str, float], importance_note: str, files: dict[str, Path],
                   sections: list[str] = ()) -> Path:
    metric, mode = info["metric"], info["mode"]
    statuses = results["status"].value_counts().to_dict() if not results.empty else {}
    epochs = int(results["epochs"].sum()) if not results.empty else 0
    budget = info["num_samples"] * info["max_t"]
    scheduler = info.get("scheduler") or "asha"
    stopped = int((results["stop_reason"] == _STOPPED_BY.get(scheduler, "stopped")).sum()) if not results.empty else 0
    diverged = int(results["diverged"].sum()) if not results.empty else 0
    lines = [
        f"# Sweep {info.get('name', path.name)}",
        "",
        f"- {info['kind']} trials, {mode} `{metric}` (validation), space `{info.get('space_file')}`",
        f"- trials: {len(results)} of {info['num_samples']} "
        f"({', '.join(f'{v} {k.lower()}' for k, v in sorted(statuses.items())) or 'none yet'}); sweep status: {info.get('status')}",
        f"- stopped early by {_LABELS.get(scheduler, scheduler)}: {stopped}; diverged: {diverged} "
        f"(searcher {info.get('searcher', 'tpe')}, scheduler {scheduler})",
        f"- epochs trained: {epochs} of {budget} (num_samples {info['num_samples']} x max_t {info['max_t']})",
        f"- created {info.get('created')}, finished {info.get('finished') or '-'}",
        "",
    ]
    try:
        pick = best_trial(path)
        lines += [f"## Best trial: {pick.trial_id}", "",
                  f"{metric} = {pick.value:.4f} at epoch {pick.epoch}; checkpoint `{pick.checkpoint}`", "",
                  "| parameter | value |", "|---|---|"]
        space = _space(path, info["kind"])
        shown = list(space.active_params(pick.config)) if space else info.get("params", [])
        lines += [f"| {k} | {_cell(pick.config[k])} |" for k in shown if k in pick.config]
        lines.append("")
    except FashionTuneError as exc:
        lines += [f"No best trial yet: {exc}", ""]
    if not table.empty:
        lines += [f"## Top {len(table)} trials", "", _markdown(table), ""]
    lines += ["## Hyperparameter importances", ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in importances.items()]
        lines += ["", "From Optuna (PED-ANOVA) on the finished, non-diverged trials, each valued at its final metric "
                      "(ASHA-stopped trials at the epoch they stopped); with few trials they are rough."]
    else:
        lines.append(f"Not computed: {importance_note or 'no finished trials'}.")
    lines += ["", *sections, "## Files", ""] + [f"- `{p.name}`" for k, p in files.items() if k != "summary"]
    target.write_text("\n".join(lines) + "\n")
    return target


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown(table: pd.DataFrame) -> str:
    cell = _cell
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
