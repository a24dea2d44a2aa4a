"""Where sweeps and promoted models live, and how a bare NAME finds a sweep, without the heavy
imports of the modules that read them (pandas, pyarrow, torch): the command line checks its
arguments with these before any of them load, so a typo answers at once."""

from __future__ import annotations

import os
from pathlib import Path

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import is_uri

DEFAULT_STORAGE = "ray_results"  # where sweeps go without --storage
STORAGE_ENV = "FASHION_TUNE_STORAGE"  # the default --storage; launch/*.yaml set it on every node
DEFAULT_MODELS_DIR = Path("best_models")
MODELS_ENV = "FASHION_TUNE_MODELS"  # the models directory when --models-dir is not given


def models_dir_to_write(given: str | Path | None) -> Path:
    """Where `promote` writes: --models-dir, else $FASHION_TUNE_MODELS, else ./best_models."""
    return Path(given or os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)


def default_storage() -> str:
    """$FASHION_TUNE_STORAGE, else ./ray_results (a file:// prefix dropped, no trailing slash)."""
    return (os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE).removeprefix("file://").rstrip("/")


def named_location(name: str) -> str | None:
    """Where the sweep NAME is in the default storage, as `sweep --name NAME` put it; None when `name`
    is not a bare name, or no such local directory exists (a bucket's NAME is taken on trust)."""
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        return None
    location = f"{default_storage()}/{name}"
    return location if is_uri(location) or Path(location).is_dir() else None


def check_experiment_argument(location: str | Path) -> None:
    """A one-line error for an experiment argument that names nothing: not a URI, not a directory,
    not a sweep's name in the default storage."""
    text = str(location)
    if is_uri(text) or Path(text).is_dir() or named_location(text):
        return
    raise FashionTuneError(f"{text} is not a directory; pass an experiment directory such as "
                           "ray_results/NAME (or just NAME for one in $FASHION_TUNE_STORAGE or ./ray_results)")
