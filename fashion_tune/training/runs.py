"""A single training run outside Ray: its output directory and the reporter that fills it."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fashion_tune.util.files import format_number, write_text
from fashion_tune.training.checkpoint import save_checkpoint
from fashion_tune.training.kinds import get_kind

LAST = "checkpoint.pt"
BEST = "best.pt"


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


class RunDirReporter:
    """Writes the last and best checkpoints, the config and the per-epoch metrics to `out`, and prints each epoch."""

    def __init__(self, kind: str, out: str | Path, echo=print):
        self.kind = kind
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.rows: list[dict[str, Any]] = []

    def __call__(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        if not self.rows:
            write_text(self.out / "config.yaml", yaml.safe_dump(state["config"], sort_keys=True))
        self.rows = list(state["history"])
        save_checkpoint(state, self.out / LAST)
        if state["best_epoch"] == metrics["epoch"]:
            save_checkpoint(state, self.out / BEST)
        write_text(self.out / "metrics.csv", pd.DataFrame(self.rows).to_csv(index=False))
        self.echo(format_epoch(self.kind, metrics, state["config"]["epochs"]))


def format_epoch(kind: str, metrics: dict[str, Any], epochs: int) -> str:
    """One readable line per epoch."""
    if metrics.get("diverged"):
        return f"epoch {metrics['epoch']}/{epochs}: loss is not finite, training stopped"
    keys = ["train_loss", *get_kind(kind).epoch_line]
    parts = [f"{k} {format_number(metrics[k])}" for k in keys if isinstance(metrics.get(k), float) and math.isfinite(metrics[k])]
    parts.append(f"{metrics['images_per_s']:.0f} img/s")
    parts.append(f"{metrics['epoch_time_s']:.1f}s")
    return f"epoch {metrics['epoch']}/{epochs}: " + ", ".join(parts)
