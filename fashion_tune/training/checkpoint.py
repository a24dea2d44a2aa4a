"""Checkpoints: one dict of tensors and plain values, saved atomically, loaded with weights_only=True.

A training checkpoint holds everything needed to continue exactly where training stopped:
model, optimizer, scheduler, epoch, config, RNG states, history and early-stopping state.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fashion_tune.util.errors import CheckpointError
from fashion_tune.util.files import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
REQUIRED_KEYS = ("kind", "config", "model", "epoch")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` through a temporary file, so a crash never leaves half a file."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding `checkpoint.pt`), checking what it holds."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        # torch.load of a file that is not a checkpoint (text, another pickle) fails in many ways,
        # e.g. IndexError from its legacy unpickler on a text file.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {first[:120]}" if first else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable ({why}); it is not a checkpoint, or is corrupt or "
                              "truncated; use another checkpoint") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} is not a fashion-tune checkpoint (missing {', '.join(REQUIRED_KEYS)})")
    if kind is not None and state["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {state['kind']} model, not a {kind}; pass a {kind} checkpoint")
    return state
