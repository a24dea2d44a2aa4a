"""What every trial's reports share, trained (`trainable`) or replayed (`replay`); imports no torch."""

from __future__ import annotations

import logging
import math
from typing import Any

# Ray would otherwise log every per-epoch checkpoint of every trial.
QUIET_LOGGERS = ("ray.train._internal.storage", "ray.tune.trainable.function_trainable")


def quiet(names=QUIET_LOGGERS) -> None:
    """Ray's per-checkpoint log lines off, in the trial's process."""
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def worst_if_missing(row: dict[str, Any], metric: str, mode: str) -> dict[str, Any]:
    """`row` with a missing or NaN `metric` replaced by the worst value. Optuna rejects NaN objective values
    (the trial would hang as RUNNING in its study); the worst value ranks the trial last instead, and
    `diverged` says what happened."""
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        row = {**row, metric: math.inf if mode == "min" else -math.inf}
    return row
