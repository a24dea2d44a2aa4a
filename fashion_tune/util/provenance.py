"""Where a result came from: the code's git commit, recorded in sweeps, manifests and reports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


# Tracked files the project's own commands rewrite: a promotion or a report changing them does not make the code modified.
OUTPUTS = ("best_models",)
LISTED = 20  # modified files named in a record; more are counted


def code_version(root: Path | None = None) -> dict[str, Any]:
    """The git commit of this code, whether tracked files were modified (the outputs in OUTPUTS aside) and
    which (`modified`, paths relative to the checkout, at most LISTED of them; `modified_count` counts all);
    None values outside a git checkout."""
    root = root or Path(__file__).resolve().parents[2]  # fashion_tune/util/provenance.py -> the checkout
    unknown = {"git_commit": None, "dirty": None, "modified": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 *(f":(exclude){path}" for path in OUTPUTS)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return unknown
    if commit.returncode != 0:
        return unknown
    if status.returncode != 0:
        return {"git_commit": commit.stdout.strip(), "dirty": None, "modified": None}
    # Porcelain lines are "XY path" (or "XY old -> new" for a rename): the path starts at the fourth character.
    modified = sorted(line[3:].split(" -> ")[-1] for line in status.stdout.splitlines() if line.strip())
    version = {"git_commit": commit.stdout.strip(), "dirty": bool(modified), "modified": modified[:LISTED]}
    if len(modified) > LISTED:
        version["modified_count"] = len(modified)
    return version


def describe_code(code: dict[str, Any] | None) -> str:
    """A code record in words: the short commit, and the files modified beside it."""
    if not code or not code.get("git_commit"):
        return "unknown code (not a git checkout)"
    text = code["git_commit"][:12]
    if code.get("dirty"):
        files = code.get("modified")
        if files:
            count = code.get("modified_count", len(files))
            text += f" (modified: {', '.join(files)}{f' and {count - len(files)} more' if count > len(files) else ''})"
        else:  # records from before the files were listed
            text += " (modified)"
    return text
