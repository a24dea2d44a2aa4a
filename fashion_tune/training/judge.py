"""Training the independent judge (`fashion_tune.models.judge.JudgeMLP`) on the training split alone.

The settings are fixed, not searched: the judge must not be tuned on the images it will be
compared with, so there is no validation-based choice at all (no early stopping, no best epoch):
it trains `epochs` epochs on the 50,000 training images the sweeps train on (the validation
split held out by `val_size`/`split_seed` and the test set are never seen) and the last epoch
is the judge. Its test accuracy is measured afterwards, for its manifest only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from fashion_tune.util.errors import ConfigError
from fashion_tune.data.splits import Augment, BatchLoader
from fashion_tune.models import count_parameters
from fashion_tune.models.judge import JudgeConfig, JudgeMLP
from fashion_tune.training.checkpoint import load_checkpoint
from fashion_tune.training.settings import VAETraining

JUDGE_SEED = 1  # the promoted CNN's default seed is 0


@dataclass(frozen=True)
class JudgeTraining:
    """How the judge is trained: AdamW with one cosine decay, horizontal flips only (no crops, no erasing)."""

    seed: int = JUDGE_SEED  # of the initial weights, the batch order, the flips and dropout
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3  # AdamW's peak learning rate, decayed to 0 by a cosine over the epochs
    weight_decay: float = 1e-4
    flip: bool = True
    val_size: int = 10_000  # the validation split held out of the 60k (the sweeps'), never trained on
    split_seed: int = 0
    subset: int | None = None  # a stratified subset of the training split, for quick runs (None: all of it)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"judge {name}={value!r} must be a positive integer")
        if self.subset is not None and self.subset < 10:
            raise ConfigError(f"judge subset={self.subset!r} must be at least 10 (one image per class); pass --subset 10 or more, or none for all the training images")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"judge lr={self.lr!r} must be > 0 and weight_decay={self.weight_decay!r} >= 0")


def judge_config_record(network: JudgeConfig, training: JudgeTraining) -> dict[str, Any]:
    """The flat config a judge checkpoint carries: its network's shape and how it was trained."""
    return {**asdict(network), **asdict(training)}


def judge_from_config(config: dict[str, Any]) -> JudgeMLP:
    """The (untrained) JudgeMLP a checkpoint's config describes."""
    fields = JudgeConfig.__dataclass_fields__
    return JudgeMLP(JudgeConfig(**{key: config[key] for key in fields if key in config}))


def train_judge(train_x: Tensor, train_y: Tensor, network: JudgeConfig = JudgeConfig(),
                training: JudgeTraining = JudgeTraining(), progress: bool = False,
                echo: Callable[[str], None] = print) -> tuple[JudgeMLP, dict[str, Any]]:
    """Train a JudgeMLP on these images (the training split; on their device); returns it (eval mode) and what
    happened per epoch. It is given nothing else, so it cannot see a validation or test image."""
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed + 1)
    model = JudgeMLP(network).to(train_x.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs)
    loader = BatchLoader(train_x, train_y, training.batch_size, shuffle=True,
                         augment=Augment(flip=training.flip), generator=generator)
    epochs = []
    started = time.perf_counter()
    for epoch in range(training.epochs):
        model.train()
        tick = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = tqdm(loader, desc=f"judge epoch {epoch + 1}/{training.epochs}", unit="batch", leave=False,
                       dynamic_ncols=True, disable=not progress)
        for xb, yb in batches:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(xb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(xb)
        scheduler.step()
        epochs.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                       "seconds": round(time.perf_counter() - tick, 1)})
        echo(f"judge epoch {epoch + 1}/{training.epochs}: train loss {loss_sum / seen:.4f}, "
             f"train accuracy {correct / seen:.4f} ({epochs[-1]['seconds']:.0f} s)")
    return model.eval(), {"epochs": epochs, "training_images": len(train_y), "parameters": count_parameters(model),
                          "train_seconds": round(time.perf_counter() - started, 1),
                          "threads": torch.get_num_threads()}


def load_sample_judge(settings: VAETraining) -> JudgeMLP:
    """The judge `settings.sample_judge` names, in eval mode on the CPU, for the training-time metric
    val_sample_acc (the settings' check has made sure it is there; the store's `load_judge` also
    checks the manifest's SHA-256, where a trial needs only the weights)."""
    state = load_checkpoint(settings.sample_judge_file(), kind="judge")
    model = judge_from_config(state["config"])
    model.load_state_dict(state["model"])
    return model.eval()
