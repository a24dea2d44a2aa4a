"""Trainables: `train_vae` and `train_cnn` train one model from a flat config dict.

They report after every epoch through a reporter callback, so the same code serves tests,
single runs (`fashion-tune train`, which prints a progress bar and writes files) and Ray Tune
sweeps (whose reporter calls `ray.tune.report`). Given a checkpoint they continue exactly
where it stopped: RNG states are part of the checkpoint, so a resumed run matches an
uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fashion_tune.checkpoint import load_checkpoint
from fashion_tune.config import MONITOR, beta_schedule, model_config, resolve_config
from fashion_tune.data import Augment, BatchLoader, Splits, make_splits
from fashion_tune.datafiles import load_fashion_mnist
from fashion_tune.device import pick_device, pick_precision
from fashion_tune.errors import CheckpointError
from fashion_tune.models import ConditionalVAE, FashionCNN, VAEConfig, count_parameters

EVAL_BATCH = 1000
BINARIZE_SEED = 2024  # the fixed binarization of validation images
FINITE_CHECK_EVERY = 25  # training steps between checks that the loss is still finite


class Reporter(Protocol):
    """Receives each epoch's metrics and the checkpoint state that goes with them."""

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None: ...


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """The network a flat config describes."""
    cfg = model_config(kind, config)
    return ConditionalVAE(cfg) if isinstance(cfg, VAEConfig) else FashionCNN(cfg)


def load_model(path, kind: str | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model (in eval mode) and return it with its checkpoint state."""
    state = load_checkpoint(path, kind=kind)
    model = build_model(state["kind"], state["config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model its config describes ({str(exc).splitlines()[0][:100]})") from None
    return model.to(device).eval(), state


def load_splits(config: Mapping[str, Any], data_dir=None) -> Splits:
    """The train/validation/test splits a config asks for (validation held out of the 60k)."""
    return make_splits(
        load_fashion_mnist(data_dir),
        val_size=config["val_size"],
        split_seed=config["split_seed"],
        subset=config["subset"],
        val_subset=config["val_subset"],
        subset_seed=config["seed"],
    )


def training_cost(kind: str, config: Mapping[str, Any]) -> dict[str, float]:
    """Trainable parameters, and FLOPs per training image (forward + backward, fp32 on the CPU).

    Counted by `torch.utils.flop_counter` on one step of two images of a fresh copy of the model,
    so the running model and the RNG are untouched. Convolutions and matrix products only, as
    FLOP counts are usually quoted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = resolve_config(kind, config)
    task = TASKS[kind](config)
    with torch.random.fork_rng(devices=[]):  # leaves the training RNG where it was
        torch.manual_seed(0)
        model = build_model(kind, config).train()
        x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
        with FlopCounterMode(display=False) as counter:
            task.loss(model, x, y).backward()
    return {"params": count_parameters(model), "flops": counter.get_total_flops() / len(x)}


# --- what differs between the two models -------------------------------------------------


class VAETask:
    """Trains the conditional beta-VAE; the HPO metric is the validation negative ELBO (nats)."""

    kind = "vae"

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.beta_schedule = beta_schedule(config)
        self.beta = self.beta_schedule(0, config["epochs"])

    def start_epoch(self, epoch: int) -> None:
        self.beta = self.beta_schedule(epoch, self.config["epochs"])

    def augment(self) -> Augment | None:
        return None

    def loss(self, model: ConditionalVAE, x, y) -> torch.Tensor:
        if self.config["binarize"] == "dynamic":
            x = torch.bernoulli(x)  # a fresh binarization every step (from the training RNG)
        return model.loss_terms(x, y, self.beta)["loss"]

    @torch.no_grad()
    def evaluate(self, model: ConditionalVAE, x, y) -> dict[str, float]:
        """The ELBO on grey levels (today's number) and on a fixed binarization (a bound on -log p(x)).

        Grey levels as Bernoulli targets give a cross-entropy that is not a log-likelihood: its
        floor, BCE(x, x), is about 188 nats here. On binarized images the negative ELBO is an
        upper bound on the negative log-likelihood, comparable with published numbers.
        """
        # Fixed noise and binarization seeds make epoch-to-epoch numbers comparable, and leave
        # the training RNG untouched so a resumed run matches an uninterrupted one.
        sums = {"recon": 0.0, "kl": 0.0, "neg_elbo_bin": 0.0}
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            binarizer = torch.Generator(device=x.device).manual_seed(BINARIZE_SEED)
            torch.manual_seed(self.config["seed"] + 7919)
            for i in range(0, len(x), EVAL_BATCH):
                xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
                terms = model.loss_terms(xb, yb, self.beta)
                binary = model.loss_terms(torch.bernoulli(xb, generator=binarizer), yb, self.beta)
                sums["recon"] += terms["recon"].item() * len(xb)
                sums["kl"] += terms["kl"].item() * len(xb)
                sums["neg_elbo_bin"] += binary["neg_elbo"].item() * len(xb)
        recon, kl = sums["recon"] / len(x), sums["kl"] / len(x)
        return {
            "val_neg_elbo": recon + kl,
            "val_neg_elbo_bin": sums["neg_elbo_bin"] / len(x),
            "val_recon": recon,
            "val_kl": kl,
            "val_loss": recon + self.beta * kl,
            "beta": self.beta,
        }


class CNNTask:
    """Trains the CNN classifier; the HPO metric is validation accuracy."""

    kind = "cnn"

    def __init__(self, config: Mapping[str, Any]):
        self.config = config

    def start_epoch(self, epoch: int) -> None:
        pass

    def augment(self) -> Augment | None:
        c = self.config
        return Augment(crop_pad=c["crop_pad"], flip=c["flip"], erase_prob=c["erase_prob"])

    def loss(self, model: FashionCNN, x, y) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.config["label_smoothing"])

    @torch.no_grad()
    def evaluate(self, model: FashionCNN, x, y) -> dict[str, float]:
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), EVAL_BATCH):
            logits = model(x[i : i + EVAL_BATCH]).float()
            loss_sum += F.cross_entropy(logits, y[i : i + EVAL_BATCH], reduction="sum").item()
            correct += (logits.argmax(1) == y[i : i + EVAL_BATCH]).sum().item()
        return {"val_loss": loss_sum / len(x), "val_acc": correct / len(x)}


TASKS = {"vae": VAETask, "cnn": CNNTask}


# --- the shared training loop ------------------------------------------------------------


def make_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]):
    """Cosine annealing with warm restarts (the original's choice) or one plain cosine; stepped per epoch."""
    eta_min = config["lr"] * config["min_lr_ratio"]
    if config["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"], eta_min=eta_min)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config["restart_epochs"], T_mult=config["restart_mult"], eta_min=eta_min
    )


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best if mode == "min" else value > best


def fit(
    kind: str,
    config: Mapping[str, Any],
    splits: Splits | None = None,
    reporter: Reporter | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    data_dir=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one model of `kind`; returns the last epoch's metrics (with best-so-far fields)."""
    config = resolve_config(kind, config)
    device = pick_device(config["device"])
    if device.type == "cpu":
        # Denormal floats (tiny KL gradients) slow CPU kernels by 10x or more; zero them instead.
        torch.set_flush_denormal(True)
    torch.manual_seed(config["seed"])
    data_rng = torch.Generator().manual_seed(config["seed"] + 1)
    splits = (splits if splits is not None else load_splits(config, data_dir)).to(device)

    task = TASKS[kind](config)
    model = build_model(kind, config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = make_scheduler(optimizer, config)
    monitor, mode = MONITOR[kind]
    best, best_epoch, stale, history, start = None, 0, 0, [], 0

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        data_rng.set_state(checkpoint["rng"]["data"])
        if device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"])
        best, best_epoch, stale = checkpoint["best"], checkpoint["best_epoch"], checkpoint["stale_epochs"]
        history = list(checkpoint["history"])
        start = checkpoint["epoch"]
        apply_mutations(optimizer, scheduler, checkpoint["config"], config)  # PBT may have changed lr / weight_decay

    precision = pick_precision(config["precision"], device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    # On the CPU, bf16 convolutions run fastest in channels-last layout (oneDNN's native one).
    memory_format = torch.channels_last if precision == "bf16" and device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=memory_format)
    cost = training_cost(kind, config)
    loader = BatchLoader(
        splits.train_x, splits.train_y, config["batch_size"], shuffle=True, augment=task.augment(), generator=data_rng
    )
    metrics: dict[str, Any] = {}
    for epoch in range(start, config["epochs"]):
        task.start_epoch(epoch)
        model.train()
        started = time.perf_counter()
        # The running loss stays on the device and is checked for NaN/inf every few steps: on a
        # GPU a per-step .item() would stall the pipeline on a host sync.
        loss_sum, seen, diverged = torch.zeros((), device=device), 0, False
        batches = _progress_bar(loader, epoch, config["epochs"]) if progress else loader
        for step, (xb, yb) in enumerate(batches, start=1):
            with autocast():
                loss = task.loss(model, xb.contiguous(memory_format=memory_format), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            loss_sum += loss.detach().float() * len(xb)
            seen += len(xb)
            if (progress or step % FINITE_CHECK_EVERY == 0 or step == len(loader)) and not torch.isfinite(loss_sum):
                diverged = True
                break
            if progress:
                batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", refresh=False)
        loss_sum = loss_sum.item()
        train_time = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        if diverged:
            metrics = _diverged_metrics(kind, epoch, train_time)
        else:
            model.eval()  # validation runs in fp32, whatever the training precision
            metrics = task.evaluate(model, splits.val_x, splits.val_y)
            metrics.update(train_loss=loss_sum / max(seen, 1), diverged=False)
        metrics.update(epoch=epoch + 1, lr=lr, epoch_time_s=time.perf_counter() - started,
                       images_per_s=seen / train_time if train_time > 0 else 0.0, precision=precision, **cost)
        if _is_better(metrics[monitor], best, mode):
            best, best_epoch, stale = metrics[monitor], epoch + 1, 0
        else:
            stale += 1
        metrics.update({f"best_{monitor}": best, "best_epoch": best_epoch})
        history.append(dict(metrics))
        state = {
            "kind": kind,
            "config": dict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "metrics": dict(metrics),
            "history": history,
            "best": best,
            "best_epoch": best_epoch,
            "stale_epochs": stale,
            "rng": _rng_state(device, data_rng),
        }
        if reporter is not None:
            reporter(metrics, state)
        patience = config["early_stop_patience"]
        if diverged or (patience and stale >= patience):
            break
    return metrics


# --- PBT: a run continued with changed hyperparameters -------------------------------------------


def apply_mutations(optimizer: torch.optim.Optimizer, scheduler, saved: Mapping[str, Any],
                    config: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Carry a checkpoint's optimizer on under the lr and weight_decay of `config` (PBT's explore step).

    The loaded optimizer and scheduler hold the checkpoint's lr. The learning-rate schedule is linear
    in lr (its floor is lr * min_lr_ratio), so scaling the current, base and floor lrs by new/old gives
    exactly the schedule the new lr would have had at this epoch. The weights and the optimizer's
    moments are kept; dropout and beta need nothing here, as the model and task are built from `config`.
    Returns what changed, {key: (old, new)}.
    """
    changed = {}
    old_lr, new_lr = saved.get("lr", config["lr"]), config["lr"]
    if old_lr != new_lr:
        ratio = new_lr / old_lr
        for group in optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
        scheduler.eta_min *= ratio
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        changed["lr"] = (old_lr, new_lr)
    old_wd, new_wd = saved.get("weight_decay", config["weight_decay"]), config["weight_decay"]
    if old_wd != new_wd:
        for group in optimizer.param_groups:
            group["weight_decay"] = new_wd
        changed["weight_decay"] = (old_wd, new_wd)
    return changed


def _progress_bar(loader, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)


def _diverged_metrics(kind: str, epoch: int, train_time: float) -> dict[str, Any]:
    """A non-finite loss ends the run; the monitored metric gets its worst value so searchers rank it last."""
    monitor, mode = MONITOR[kind]
    worst = math.inf if mode == "min" else 0.0
    return {monitor: worst, "val_loss": math.inf, "train_loss": math.nan, "diverged": True}


def _rng_state(device: torch.device, data_rng: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def train_vae(config: Mapping[str, Any], splits: Splits | None = None, reporter: Reporter | None = None,
              checkpoint: Mapping[str, Any] | None = None, **kwargs) -> dict[str, Any]:
    """Train the conditional beta-VAE described by `config` (see `fashion_tune.config`)."""
    return fit("vae", config, splits, reporter, checkpoint, **kwargs)


def train_cnn(config: Mapping[str, Any], splits: Splits | None = None, reporter: Reporter | None = None,
              checkpoint: Mapping[str, Any] | None = None, **kwargs) -> dict[str, Any]:
    """Train the CNN classifier described by `config` (see `fashion_tune.config`)."""
    return fit("cnn", config, splits, reporter, checkpoint, **kwargs)


TRAINABLES: dict[str, Callable[..., dict[str, Any]]] = {"vae": train_vae, "cnn": train_cnn}
