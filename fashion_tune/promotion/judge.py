"""Shipping the independent judge: train it (`fashion_tune.training.judge`) and write `best_models/judge/`.

`best_models/judge/` holds model.pt (weights only, `torch.load(..., weights_only=True)`),
config.yaml and manifest.json: the architecture, seed, parameters, how it was trained (on the
training split only: no validation or test image), the command, its test accuracy (measured
after training, never used to choose anything), the commit and the weights' SHA-256. The
directory is assembled beside the old one and swapped in under the models lock, as a promotion
is, so a crash leaves the previous judge whole.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from fashion_tune.util.files import file_sha256, fsync_dir, make_temp_dir, write_json, write_synced
from fashion_tune.util.provenance import code_version
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.data.splits import make_splits
from fashion_tune.models.judge import ARCHITECTURE, JudgeConfig
from fashion_tune.training.checkpoint import save_checkpoint
from fashion_tune.training.device import pick_device
from fashion_tune.training.judge import JudgeTraining, judge_config_record, train_judge
from fashion_tune.training.scoring import cnn_scores
from fashion_tune.store.promoted import CONFIG_FILE, JUDGE, MANIFEST_FILE, MODEL_FILE, models_lock, recover
from fashion_tune.promotion.promote import swap_in


# An MLP this small runs best on one CPU thread: on this project's busy 2-core machine two threads
# made an epoch 2-7x slower (threads waiting for each other on small matrix products).
THREADS = 1


def ship_judge(models_dir: str | Path, training: JudgeTraining = JudgeTraining(), network: JudgeConfig = JudgeConfig(),
               data_dir=None, device: str = "cpu", threads: int = THREADS, command: str | None = None,
               progress: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the independent judge on the training split and write it to `models_dir/judge/`; returns its manifest.

    `threads` sets torch's CPU threads for the run (restored afterwards)."""
    models_dir = Path(models_dir)
    device = pick_device(device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _ship(models_dir, training, network, data_dir, device, command, progress, echo)
    finally:
        torch.set_num_threads(before)


def _ship(models_dir: Path, training: JudgeTraining, network: JudgeConfig, data_dir, device, command, progress,
          echo) -> dict[str, Any]:
    data = load_fashion_mnist(data_dir)
    splits = make_splits(data, val_size=training.val_size, split_seed=training.split_seed, subset=training.subset,
                         subset_seed=training.seed)
    echo(f"training the independent judge ({ARCHITECTURE}) on the {len(splits.train_y):,} training images, "
         f"seed {training.seed}, {training.epochs} epochs; validation ({len(splits.val_y):,}) and test images unseen")
    model, run = train_judge(splits.train_x.to(device), splits.train_y.to(device), network, training, progress=progress,
                             echo=echo)
    test = cnn_scores(model, splits.test_x, splits.test_y)
    echo(f"judge: test accuracy {test['accuracy']:.4f} ({run['parameters']:,} parameters, "
         f"trained in {run['train_seconds']:.0f} s on {device}, {run['threads']} thread{'s' if run['threads'] > 1 else ''})")
    manifest = {
        "kind": JUDGE,
        "role": "independent judge: scores the VAE's raw and guided samples; it picks none of them "
                "(the promoted CNN guides the sampling)",
        "architecture": ARCHITECTURE,
        "network": asdict(network),
        "seed": training.seed,
        "parameters": run["parameters"],
        "training": {**asdict(training), "images": run["training_images"],
                     "what": f"the training split only: {len(splits.train_y):,} of the 60,000 training images less the "
                             f"validation split (val_size {training.val_size}, split_seed {training.split_seed}); no "
                             f"validation or test image; fixed settings and the last epoch (nothing chosen on validation)",
                     "epochs_run": run["epochs"], "seconds": run["train_seconds"], "device": str(device),
                     "threads": run["threads"], "torch": torch.__version__},
        "test_accuracy": test["accuracy"],
        "test": {"images": len(splits.test_y), "accuracy": test["accuracy"], "loss": test["loss"],
                 "per_class_accuracy": test["per_class_accuracy"]},
        "command": command or f"fashion-tune train-judge --models-dir {models_dir}",
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "data": {"sha256": dict(data.sha256)},
        "files": {},
    }
    state = {"kind": JUDGE, "config": judge_config_record(network, training),
             "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
             "epoch": training.epochs, "metrics": {"test_accuracy": test["accuracy"]}}
    _install(models_dir, state, manifest)
    echo(f"shipped the judge to {models_dir / JUDGE}; `fashion-tune evaluate --models-dir {models_dir}` scores the "
         f"VAE's samples with it")
    return manifest


def _install(models_dir: Path, state: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write the judge's files into a new directory beside models_dir/judge and swap it in (under the lock, whose
    recovery removes the `.tmp-judge-*` of a writer that died)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    with models_lock(models_dir):
        recover(models_dir, JUDGE)
        tmp = make_temp_dir(prefix=f".tmp-{JUDGE}-", suffix=f"-{stamp}", dir=models_dir)
        try:
            save_checkpoint(state, tmp / MODEL_FILE)
            write_synced(tmp / CONFIG_FILE, yaml.safe_dump(dict(state["config"]), sort_keys=True))
            manifest["files"] = {MODEL_FILE: file_sha256(tmp / MODEL_FILE)}
            write_json(tmp / MANIFEST_FILE, manifest)
            fsync_dir(tmp)
            swap_in(tmp, models_dir / JUDGE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
