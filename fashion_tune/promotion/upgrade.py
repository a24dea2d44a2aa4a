"""Rewrite manifests from before relative paths (`fashion-tune upgrade-manifests`).

Manifests written before this version held the absolute paths of the machine that trained the
model: `experiment` was the sweep's directory and `checkpoint` a path under it, and a replaced
champion's `experiment` likewise. They still load (`store.promoted.model_source` reads both forms),
but a shipped `best_models/` then shows where someone's disk kept the sweeps. Re-promoting writes
the new form but needs the sweep's directory; this rewrites the paths alone, for models whose
sweep is gone: the experiment's name, the checkpoint's path inside it, `storage` for a bucket.
Nothing else changes (the weights' SHA-256, metrics, dates); `upgraded` records when, by which
code, and that `made_from` (the commit the sweep trained with) could not be recovered.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import read_json_object, write_json
from fashion_tune.util.provenance import code_version
from fashion_tune.store.promoted import HISTORY_DIR, MANIFEST_FILE, model_source, models_lock


def relative_manifest(manifest: dict[str, Any], code: dict[str, Any], when: str) -> dict[str, Any] | None:
    """The manifest in the relative form, or None when it has nothing to rewrite (written in that form,
    or not from a sweep: the judge's)."""
    if "storage" in manifest or "experiment" not in manifest:
        return None
    upgraded = dict(manifest)  # keys keep their order; experiment/checkpoint are replaced in place
    upgraded.update(model_source(manifest))
    if isinstance(manifest.get("replaced"), dict):
        replaced = dict(manifest["replaced"])
        replaced["experiment"] = model_source(replaced)["experiment"]
        upgraded["replaced"] = replaced
    upgraded.setdefault("made_from", None)
    upgraded["upgraded"] = {"at": when, "code": code,
                            "from": "absolute paths (experiment directory, checkpoint path)",
                            "made_from": "unknown: manifests of that form did not record the sweep's code"}
    return upgraded


def upgrade_manifests(models_dir: str | Path, echo: Callable[[str], None] = print) -> int:
    """Rewrite every old-form manifest under `models_dir` (each kind's, the judge's, and those in
    history/) atomically, under the models lock; returns how many were rewritten."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FashionTuneError(f"{models_dir} is not a directory; pass --models-dir DIR where the promoted models are")
    code = code_version()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rewritten = 0
    with models_lock(models_dir):
        paths = sorted([*models_dir.glob(f"*/{MANIFEST_FILE}"), *models_dir.glob(f"*/{HISTORY_DIR}/*/{MANIFEST_FILE}")])
        if not paths:
            raise FashionTuneError(f"no manifest in {models_dir}; pass --models-dir DIR where the promoted models are")
        for path in paths:
            manifest = read_json_object(path)
            if not manifest:
                echo(f"{path}: not a JSON object; left as it is")
                continue
            upgraded = relative_manifest(manifest, code, when)
            if upgraded is None:
                echo(f"{path}: nothing to rewrite")
                continue
            write_json(path, upgraded)
            rewritten += 1
            echo(f"{path}: experiment {upgraded['experiment']}, checkpoint {upgraded['checkpoint']}")
    return rewritten
