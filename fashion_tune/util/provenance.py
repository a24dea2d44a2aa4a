"""Where a result came from: the code's git commit, recorded in manifests and reports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


# Tracked files the project's own commands rewrite: a promotion or a report changing them does not make the code modified.
OUTPUTS = ("best_models",)


def code_version(root: Path | None = None) -> dict[str, Any]:
    """The git commit of this code and whether tracked files were modified (the outputs in OUTPUTS aside);
    None values outside a git checkout."""
    root = root or Path(__file__).resolve().parents[2]  # fashion_tune/util/provenance.py -> the checkout
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 *(f":(exclude){path}" for path in OUTPUTS)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "dirty": None}
    return {"git_commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
