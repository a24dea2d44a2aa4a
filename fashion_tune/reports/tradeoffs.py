"""What `analyze` adds for the newer strategies: the Pareto front of a multi-objective sweep and
the lineage of a PBT population.

    from fashion_tune.reports.tradeoffs import pareto_front, lineage
    front = pareto_front(history, [("val_acc", "max"), ("params", "min")])   # one row per trial
    steps = lineage("ray_results/NAME")                                      # one row per PBT exploit
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from fashion_tune.util.files import format_short
from fashion_tune.store.experiment import LINEAGE_FILE


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(history: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per trial, at its best epoch of the first objective, with each objective's value there
    and `pareto` (True when no other trial is at least as good on every objective and better on one)."""
    first, mode = objectives[0]
    names = [m for m, _ in objectives]
    rows = []
    for trial_id, trial in history.groupby("trial_id", sort=False):
        if "diverged" in trial and trial["diverged"].fillna(False).astype(bool).any():
            continue
        trial = trial[trial[names].apply(lambda r: all(_finite(v) for v in r), axis=1)]
        if trial.empty:
            continue
        best = trial.loc[trial[first].idxmax() if mode == "max" else trial[first].idxmin()]
        rows.append({"trial_id": trial_id, "epoch": int(best["epoch"]), **{m: float(best[m]) for m in names}})
    frame = pd.DataFrame(rows, columns=["trial_id", "epoch", *names])
    signs = [1.0 if m == "min" else -1.0 for _, m in objectives]  # lower is better after the sign
    points = [[s * r[m] for s, m in zip(signs, names)] for _, r in frame.iterrows()]

    def dominated(i: int) -> bool:
        return any(all(a <= b for a, b in zip(other, points[i])) and other != points[i]
                   for j, other in enumerate(points) if j != i)

    frame["pareto"] = [not dominated(i) for i in range(len(points))]
    return frame.sort_values(names[0], ascending=(mode == "min")).reset_index(drop=True)


def plot_pareto(front: pd.DataFrame, objectives: list[tuple[str, str]], target: Path, title: str = "") -> Path:
    """The first two objectives of every trial, the front joined by a line and labelled by trial id."""
    import matplotlib.pyplot as plt

    (y, y_mode), (x, x_mode) = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(7, 5))
    rest, best = front[~front["pareto"]], front[front["pareto"]].sort_values(x)
    ax.scatter(rest[x], rest[y], color="grey", alpha=0.6, label="dominated")
    ax.plot(best[x], best[y], marker="o", color="tab:red", label="Pareto front",
            drawstyle="steps-post" if (x_mode == "min") == (y_mode == "max") else "default")
    for _, row in best.iterrows():
        ax.annotate(str(row["trial_id"]), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if x in ("params", "flops") and len(front) and front[x].max() > 10 * front[x].min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} ({'lower' if x_mode == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y} at the best epoch ({'lower' if y_mode == 'min' else 'higher'} is better)")
    ax.set_title(title or f"{y} against {x}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def lineage(experiment_dir: str | Path) -> pd.DataFrame:
    """PBT's exploit steps, oldest first: trial_id, cloned_from, at_epoch, from_epoch, and `changes`
    ("lr 0.002 -> 0.0024, ...": the trial's mutated values before and after)."""
    path = Path(experiment_dir) / LINEAGE_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            before, after = record.get("before", {}), record.get("after", {})
            record["changes"] = ", ".join(f"{k} {format_short(before.get(k))} -> {format_short(v)}"
                                          for k, v in after.items() if before.get(k) != v) or "none"
            rows.append(record)
    return pd.DataFrame(rows, columns=["time", "trial_id", "cloned_from", "at_epoch", "from_epoch", "changes",
                                       "before", "cloned", "after"])


def describe_lineage(steps: pd.DataFrame) -> list[str]:
    """One line per exploit step, for the terminal and summary.md."""
    return [f"trial {r.trial_id} at epoch {r.at_epoch}: cloned {r.cloned_from} (its epoch {r.from_epoch} checkpoint); "
            f"{r.changes}" for r in steps.itertuples()]
