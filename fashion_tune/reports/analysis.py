"""Sweep reports: the top trials, curves, parameter plots, importances and summary.md.

The numbers come from the experiment store (`fashion_tune.store.experiment`), so an experiment on a
local disk and one behind a URI (s3://, gs://) read alike, running, interrupted or finished.

    from fashion_tune.reports.analysis import load_results, load_history, best_trial
    results = load_results("ray_results/vae-quick")   # one row per trial
    history = load_history("s3://bucket/sweeps/vae-quick")   # one row per trial per epoch
    pick = best_trial("ray_results/vae-quick")        # by the validation metric; pick.checkpoint
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fashion_tune.util import yaml_loader
from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import format_number
from fashion_tune.store.experiment import LINEAGE_FILE, SPACE_COPY, SWEEP_INFO, STOPPED_BY, Experiment, TrialPick, is_finite
from fashion_tune.store.reading import best_trial, load_history, load_results, read_sweep_info
from fashion_tune.search.study import importance_study, open_study

__all__ = ["SPACE_COPY", "SWEEP_INFO", "LINEAGE_FILE", "TrialPick", "read_sweep_info", "load_results", "load_history",
           "best_trial", "top_trials", "param_importances", "study_importances", "analyze"]

_LABELS = {"asha": "ASHA", "hyperband": "HyperBand", "median": "the median rule", "pbt": "PBT", "fifo": "FIFO"}


# --- analysis: tables, plots, importances, summary ------------------------------------------


def _space(store: Experiment, kind: str):
    """The sweep's copy of its search space, or None when it is missing or no longer valid."""
    from fashion_tune.spaces.space import parse_space

    text = store.read_text(SPACE_COPY)
    try:
        return None if text is None else parse_space(yaml_loader.load(text), f"{store.location}/{SPACE_COPY}", kind=kind)
    except (FashionTuneError, yaml_loader.YAMLError):
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

    Each trial's value is its final metric, ASHA-stopped trials included at their budget. For a sweep
    without a journal (see `study_importances`). Raises ValueError when there are too few trials or
    nothing varies.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    done = results[(results["status"] == "TERMINATED") & ~results["diverged"].astype(bool)]
    for _, row in done.iterrows():
        value = row.get(metric)
        if not is_finite(value):
            continue
        config = {k.removeprefix("config/"): v for k, v in row.items() if str(k).startswith("config/")}
        params, distributions = {}, {}
        for name, param in space.active_params(config).items():
            value_of = config.get(name)
            if value_of is None or (isinstance(value_of, float) and math.isnan(value_of)) or not param.contains(value_of):
                continue
            params[name], distributions[name] = value_of, param.distribution()
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(value)))
    return _ped_anova(study)


def study_importances(study) -> dict[str, float]:
    """Optuna's importances over the sweep's own study, as its journal holds it: finished trials at the
    value they were told (their best epoch), pruned ones at their budget (`study.importance_study`)."""
    return _ped_anova(importance_study(study))


def _ped_anova(study) -> dict[str, float]:
    import optuna

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
    """Print the top trials and write curves.png, params.png, importance.png and summary.md to `out`.

    `out` defaults to EXPERIMENT_DIR/analysis, or to ./NAME-analysis for an experiment behind a URI.
    """
    import matplotlib

    matplotlib.use("Agg")

    store = Experiment.open(experiment_dir)
    info = store.info()
    kind, metric, mode = info["kind"], info["metric"], info["mode"]
    out = Path(out) if out else (Path(f"{store.name}-analysis") if store.is_remote else Path(store.location) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    records = store.trials()
    results, history = store.results(records), store.history(records)
    space = _space(store, kind)
    params = space.param_names() if space else list(info.get("params", []))

    table = top_trials(results, metric, mode, params, top)
    if table.empty:
        echo(f"{store.location}: no trials yet")
    else:
        echo(f"top {len(table)} of {len(results)} trials by {metric} ({mode}) in {store.location}:")
        echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    files: dict[str, Path] = {}
    if not history.empty and metric in history.columns:
        files["curves"] = _plot_curves(history, results, info, out / "curves.png")
    if not results.empty and params:
        files["params"] = _plot_params(results, params, space, metric, out / "params.png")
    importances, importance_note = _importances(store, results, space, metric, mode)
    if importances:
        files["importance"] = _plot_importances(importances, metric, out / "importance.png")
    sections = _strategy_sections(store, info, history, out, files, echo)
    files["summary"] = _write_summary(out / "summary.md", store, info, results, table, importances,
                                      importance_note, files, sections)
    echo("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def _importances(store: Experiment, results: pd.DataFrame, space, metric: str,
                 mode: str) -> tuple[dict[str, float], str]:
    """Importances with a sentence on what they were computed from; or none, with the reason.

    The sweep's Optuna study (its journal) where it has one with a single objective; else a study
    rebuilt from results.csv (a sweep from before the journal, or a multi-objective one)."""
    if results.empty:
        return {}, ""
    try:
        study = open_study(store.location)
    except FashionTuneError:
        study = None
    try:
        if study is not None and len(study.directions) == 1:
            return study_importances(study), (
                "From Optuna (PED-ANOVA) on the sweep's own study (its journal): finished trials at the value the "
                "searcher was told (their best epoch), trials stopped early at their last epoch; with few trials "
                "they are rough. optuna-dashboard's importances on the same study differ: it runs PED-ANOVA on the "
                "finished (COMPLETE) trials only, leaving out the ones stopped early, with a fixed top-10% target "
                "(here the target is the top 2 trials' share, 10-50%).")
        if space is None:
            return {}, f"no {SPACE_COPY} in the experiment directory, so no distributions to rebuild the study"
        return param_importances(results, space, metric, mode), (
            "From Optuna (PED-ANOVA) on a study rebuilt from results.csv (the sweep has no journal with a "
            "single-objective study): finished, non-diverged trials at their final metric, stopped ones at their budget; with few "
            "trials they are rough.")
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _strategy_sections(store: Experiment, info: dict[str, Any], history: pd.DataFrame, out: Path,
                       files: dict[str, Path], echo: Callable[[str], None]) -> list[str]:
    """A multi-objective sweep's Pareto front (pareto.png) and a PBT sweep's lineage, for summary.md."""
    from fashion_tune.reports import tradeoffs

    lines: list[str] = []
    objectives = [tuple(o) for o in info.get("objectives") or []]
    if len(objectives) > 1 and not history.empty and all(m in history.columns for m, _ in objectives):
        front = tradeoffs.pareto_front(history, objectives)
        if not front.empty:
            files["pareto"] = tradeoffs.plot_pareto(front, objectives, out / "pareto.png",
                                                    f"{info.get('name', store.name)}: Pareto front")
            shown = front[front["pareto"]].drop(columns="pareto")
            echo(f"Pareto front ({len(shown)} of {len(front)} trials; "
                 + ", ".join(f"{mode} {m}" for m, mode in objectives) + "):")
            echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
            lines += ["## Pareto front", "", f"{len(shown)} of {len(front)} trials are not dominated on "
                      + ", ".join(f"{mode} `{m}`" for m, mode in objectives) + " (each at its best epoch of the first):",
                      "", _markdown(shown), ""]
    if info.get("scheduler") == "pbt":
        text = store.read_text(LINEAGE_FILE)
        if store.is_remote and text is not None:
            (out / LINEAGE_FILE).write_text(text)  # tradeoffs reads a local directory
        steps = tradeoffs.describe_lineage(tradeoffs.lineage(out if store.is_remote else store.location))
        echo(f"PBT lineage ({len(steps)} exploit steps):" + "".join(f"\n  {line}" for line in steps))
        lines += ["## PBT lineage", "", *(f"- {line}" for line in steps or ["no exploit step yet"]), ""]
    return lines


TOP_CURVES = 3  # trials curves.png draws bold and names


def _plot_curves(history: pd.DataFrame, results: pd.DataFrame, info: dict[str, Any], target: Path) -> Path:
    import matplotlib.pyplot as plt

    metric, max_t = info["metric"], info.get("max_t")
    reasons = dict(zip(results["trial_id"], results["stop_reason"])) if not results.empty else {}
    fig, ax = plt.subplots(figsize=(8, 5))
    style = {"asha": ("x", "stopped by ASHA"), "hyperband": ("x", "stopped by HyperBand"),
             "median": ("x", "stopped by the median rule"), "early_stop": ("s", "early stop"),
             "completed": ("o", "reached max_t"),
             "diverged": ("v", "diverged"), "error": ("*", "error"), "": (">", "running")}
    from matplotlib.lines import Line2D

    # The best few trials are drawn bold and named in the legend; the rest stay in the background.
    ranked = [] if results.empty else list(
        results[results[f"best_{metric}"].map(is_finite)]
        .sort_values(f"best_{metric}", ascending=info.get("mode") == "min")["trial_id"][:TOP_CURVES])
    best_values = dict(zip(results["trial_id"], results[f"best_{metric}"])) if ranked else {}
    shown_reasons: dict[str, str] = {}
    for trial_id, rows in history.groupby("trial_id", sort=False):
        rows = rows[rows[metric].map(is_finite)].sort_values("epoch")
        if rows.empty:
            continue
        top = ranked.index(trial_id) if trial_id in ranked else None
        if top is None:
            line, = ax.plot(rows["epoch"], rows[metric], alpha=0.45, linewidth=1.0, color="tab:gray")
        else:
            line, = ax.plot(rows["epoch"], rows[metric], linewidth=2.4, zorder=3, color=f"C{top}",
                            label=f"#{top + 1} {trial_id} ({format_number(best_values[trial_id])})")
        reason = reasons.get(trial_id, "")
        marker, label = style.get(reason, ("o", reason))
        ax.plot(rows["epoch"].iloc[-1], rows[metric].iloc[-1], marker=marker, color=line.get_color(),
                markersize=8, linestyle="none", zorder=line.get_zorder())
        shown_reasons[marker + label] = (marker, label)
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
    # How each curve ended, in black: the markers take each trial's colour on the plot.
    best = sorted(ax.get_legend_handles_labels()[0], key=lambda h: h.get_label())  # "#1 ...", "#2 ..."
    handles = best + [
        Line2D([], [], marker=marker, color="black", linestyle="none", markersize=7, label=label)
        for marker, label in shown_reasons.values()]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")
    if metric == "val_neg_elbo":
        finite = history[metric][history[metric].map(is_finite)]
        if len(finite) and finite.max() > 3 * finite.min() > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def log_x_axis(ax, low: float, high: float) -> None:
    """A log scale labelled however short the range: at 1-2-3-5 steps inside a decade (where there is no
    power of ten to label), 1-2-5 within two decades, powers of ten beyond; no overlapping minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    if high / low < 100:
        subs = (1.0, 2.0, 3.0, 5.0) if high / low < 10 else (1.0, 2.0, 5.0)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plot_params(results: pd.DataFrame, params: list[str], space, metric: str, target: Path) -> Path:
    import matplotlib.pyplot as plt

    ok = results[~results["diverged"].astype(bool) & results[metric].map(is_finite)]
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
                log_x_axis(ax, float(param.low), float(param.high))
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


def _write_summary(target: Path, store: Experiment, info: dict[str, Any], results: pd.DataFrame, table: pd.DataFrame,
                   importances: dict[str, float], importance_note: str, files: dict[str, Path],
                   sections: list[str] = ()) -> Path:
    metric, mode = info["metric"], info["mode"]
    statuses = results["status"].value_counts().to_dict() if not results.empty else {}
    epochs = int(results["epochs"].sum()) if not results.empty else 0
    budget = info["num_samples"] * info["max_t"]
    scheduler = info.get("scheduler") or "asha"
    stopped = int((results["stop_reason"] == STOPPED_BY.get(scheduler, "stopped")).sum()) if not results.empty else 0
    diverged = int(results["diverged"].sum()) if not results.empty else 0
    lines = [
        f"# Sweep {info.get('name', store.name)}",
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
        pick = store.best(download=False)
        lines += [f"## Best trial: {pick.trial_id}", "",
                  f"{metric} = {pick.value:.4f} at epoch {pick.epoch}; checkpoint `{pick.source}`", "",
                  "| parameter | value |", "|---|---|"]
        space = _space(store, info["kind"])
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
        lines += ["", importance_note]
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
