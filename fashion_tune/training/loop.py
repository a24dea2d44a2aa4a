"""The training loop: `fit` trains one model of any kind from a flat config dict.

It reports after every epoch through a reporter callback, so the same code serves tests,
single runs (`fashion-tune train`, which prints a progress bar and writes files) and Ray Tune
sweeps (whose reporter calls `ray.tune.report`). Given a checkpoint it continues exactly
where it stopped: RNG states are part of the checkpoint, so a resumed run matches an
uninterrupted one on CPU. What differs between models (loss, augmentation, validation
metrics) is their `Kind`'s (`fashion_tune.training.kinds`).

With `ema_decay` > 0 an exponential moving average of the weights (torch's `AveragedModel`, BatchNorm
statistics included) follows the training weights step by step; it is what validation scores and
what the checkpoint's `model` holds, so best.pt, promotion and grading all use it. The training
weights travel beside it (`train_model`) so that a resumed run continues exactly; each epoch also
reports a metric of the training weights (`val_acc_raw`, `val_neg_elbo_raw`) to show what the EMA adds.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from fashion_tune.util.errors import CheckpointError, ConfigError
from fashion_tune.data.datafiles import load_fashion_mnist
from fashion_tune.data.splits import BatchLoader, Splits, batch_count, make_splits
from fashion_tune.models import count_parameters
from fashion_tune.training.checkpoint import load_checkpoint
from fashion_tune.training.config import resolve_config
from fashion_tune.training.device import pick_device, pick_memory_format, pick_precision
from fashion_tune.training.kinds import Kind, get_kind
from fashion_tune.training.settings import TrainingConfig

FINITE_CHECK_EVERY = 25  # training steps between checks that the loss is still finite


class Reporter(Protocol):
    """Receives each epoch's metrics and the checkpoint state that goes with them."""

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None: ...


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """The network a flat config describes."""
    return get_kind(kind).build(config)


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
    config = resolve_config(kind, config)
    k = get_kind(kind)
    task = k.trainer(k.settings(config))
    with torch.random.fork_rng(devices=[]):  # leaves the training RNG where it was
        torch.manual_seed(0)
        model = k.build(config).train()
        x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
        with FlopCounterMode(display=False) as counter:
            task.loss(model, x, y).backward()
    return {"params": count_parameters(model), "flops": counter.get_total_flops() / len(x)}


def parameter_count(kind: str, config: Mapping[str, Any]) -> int:
    """Trainable parameters of the network a flat config describes, built on the meta device: no memory is
    allocated and no random number drawn, so a search space can size every shape it allows in milliseconds."""
    with torch.device("meta"):
        return count_parameters(get_kind(kind).build(config))


def make_optimizer(model: nn.Module, settings: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), or SGD with Nesterov momentum (weight decay as an L2 penalty)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.momentum > 0, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


PER_STEP_SCHEDULERS = ("onecycle", "triangular")


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainingConfig, steps_per_epoch: int = 1):
    """The learning-rate schedule: stepped per epoch (cosine annealing with warm restarts, the original's
    choice, or one plain cosine) or per training step (`PER_STEP_SCHEDULERS`: one cycle over the whole run,
    from lr * min_lr_ratio up to lr over the first `lr_warmup` of the steps, then down to lr * min_lr_ratio
    along a cosine (onecycle) or a straight line (triangular))."""
    eta_min = settings.lr * settings.min_lr_ratio
    if settings.scheduler in PER_STEP_SCHEDULERS:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=settings.lr_warmup,
            anneal_strategy="cos" if settings.scheduler == "onecycle" else "linear", cycle_momentum=False,
            div_factor=1 / settings.min_lr_ratio if settings.min_lr_ratio > 0 else math.inf, final_div_factor=1.0)
    if settings.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs, eta_min=eta_min)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=settings.restart_epochs, T_mult=settings.restart_mult, eta_min=eta_min
    )


# --- the shared training loop ------------------------------------------------------------


@dataclass
class _BestSoFar:
    """The best value of the monitored metric, its epoch, epochs since, and every epoch's metrics."""

    monitor: str
    mode: str
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, metrics: dict[str, Any]) -> None:
        value = metrics[self.monitor]
        if _is_better(value, self.best, self.mode):
            self.best, self.best_epoch, self.stale = value, metrics["epoch"], 0
        else:
            self.stale += 1
        metrics.update({f"best_{self.monitor}": self.best, "best_epoch": self.best_epoch})
        self.history.append(dict(metrics))


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best if mode == "min" else value > best


@dataclass
class _Run:
    """What one training run holds: the model and its optimizer, and how its steps run."""

    kind: Kind
    settings: TrainingConfig
    config: dict[str, Any]
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data_rng: torch.Generator
    ema: AveragedModel | None = None  # the moving average of the weights, when ema_decay > 0
    last_lr: float = math.nan  # the lr of the latest training step
    precision: str = "fp32"
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def scored(self) -> nn.Module:
        """The weights validation scores and checkpoints hold as `model`: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def step_done(self) -> None:
        """After each optimizer step: the EMA follows, and a per-step schedule moves on (but not past its last
        step, where OneCycleLR would extrapolate: the lr stays at its floor)."""
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.settings.scheduler in PER_STEP_SCHEDULERS and self.scheduler.last_epoch + 1 < self.scheduler.total_steps:
            self.scheduler.step()

    def epoch_done(self) -> None:
        if self.settings.scheduler not in PER_STEP_SCHEDULERS:
            self.scheduler.step()

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scoring_layout(self):
        """The model in the default memory layout for the block: validation then computes, to the bit, what
        promotion computes on the saved weights (convolution kernels differ by layout in the last bits)."""
        if self.memory_format == torch.contiguous_format:
            yield
            return
        self.model.to(memory_format=torch.contiguous_format)
        try:
            yield
        finally:
            self.model.to(memory_format=self.memory_format)

    def state(self, epoch: int, metrics: dict[str, Any], best: _BestSoFar) -> dict[str, Any]:
        """The checkpoint after `epoch`: everything needed to continue exactly from here."""
        state = {
            "kind": self.kind.name, "config": dict(self.config), "model": self.scored.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": epoch, "metrics": dict(metrics), "history": best.history, "best": best.best,
            "best_epoch": best.best_epoch, "stale_epochs": best.stale, "rng": _rng_state(self.device, self.data_rng),
        }
        if self.ema is not None:
            state.update(train_model=self.model.state_dict(), ema_steps=int(self.ema.n_averaged))
        return state


def ema_update(decay: float):
    """AveragedModel's multi_avg_fn: an EMA whose decay at step t is min(decay, (1 + t) / (10 + t)).

    The warm-up keeps the first epochs' average from being mostly the initial weights, so a scheduler
    that compares trials after a few epochs sees what they learned. Integer buffers (BatchNorm's
    batch counters) are copied.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], steps: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        t = float(steps)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + t) / (10.0 + t)))

    return update


def _start(kind: Kind, config: dict[str, Any], checkpoint: Mapping[str, Any] | None,
           steps_per_epoch: int) -> tuple[_Run, _BestSoFar, int]:
    """Build the run (seeded), continuing from `checkpoint` when given; returns it and the first epoch."""
    settings = kind.settings(config)
    device = pick_device(settings.device)
    if device.type == "cpu":
        # Denormal floats (tiny KL gradients) slow CPU kernels by 10x or more; zero them instead.
        torch.set_flush_denormal(True)
    torch.manual_seed(settings.seed)
    data_rng = torch.Generator().manual_seed(settings.seed + 1)
    model = kind.build(config).to(device)
    optimizer = make_optimizer(model, settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch)
    run = _Run(kind, settings, config, device, model, optimizer, scheduler, data_rng)
    if settings.ema_decay > 0:
        # A copy in the default layout (it is only scored, never trained); its first update copies the weights.
        run.ema = AveragedModel(model, multi_avg_fn=ema_update(settings.ema_decay), use_buffers=True)
    best, start = _BestSoFar(kind.monitor, kind.mode), 0
    if checkpoint is not None:
        start = _restore(run, best, checkpoint)
    run.precision = pick_precision(settings.precision, device)
    run.memory_format = pick_memory_format(run.precision, device)
    model.to(memory_format=run.memory_format)
    return run, best, start


def _restore(run: _Run, best: _BestSoFar, checkpoint: Mapping[str, Any]) -> int:
    """Load a checkpoint's model, optimizer, scheduler, RNG and best-so-far state; returns its epoch."""
    saved_epochs = checkpoint["config"].get("epochs")
    if run.settings.scheduler in PER_STEP_SCHEDULERS and saved_epochs != run.settings.epochs:
        raise ConfigError(f"the checkpoint's {run.settings.scheduler} schedule spans {saved_epochs} epochs and cannot be "
                          f"stretched to {run.settings.epochs}; train a new run with epochs={run.settings.epochs}")
    # Without EMA (and in checkpoints older than it) `model` is the training weights.
    run.model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
    if run.ema is not None:
        run.ema.module.load_state_dict(checkpoint["model"])
        run.ema.n_averaged.fill_(int(checkpoint.get("ema_steps", 0)))
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    run.data_rng.set_state(checkpoint["rng"]["data"])
    if run.device.type == "cuda" and "cuda" in checkpoint["rng"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"])
    best.best, best.best_epoch, best.stale = checkpoint["best"], checkpoint["best_epoch"], checkpoint["stale_epochs"]
    best.history = list(checkpoint["history"])
    apply_mutations(run.optimizer, run.scheduler, checkpoint["config"], run.config)  # PBT may have changed lr / weight_decay
    return checkpoint["epoch"]


def _train_epoch(run: _Run, task, loader: BatchLoader, epoch: int, progress: bool) -> tuple[float, int, bool]:
    """One pass over the training data; returns the summed loss, the images seen and whether it diverged."""
    run.model.train()
    # The running loss stays on the device and is checked for NaN/inf every few steps: on a
    # GPU a per-step .item() would stall the pipeline on a host sync.
    loss_sum, seen = torch.zeros((), device=run.device), 0
    batches = _progress_bar(loader, epoch, run.settings.epochs) if progress else loader
    for step, (xb, yb) in enumerate(batches, start=1):
        with run.autocast():
            loss = task.loss(run.model, xb.contiguous(memory_format=run.memory_format), yb)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
        run.optimizer.step()
        run.step_done()
        loss_sum += loss.detach().float() * len(xb)
        seen += len(xb)
        if (progress or step % FINITE_CHECK_EVERY == 0 or step == len(loader)) and not torch.isfinite(loss_sum):
            return loss_sum.item(), seen, True
        if progress:
            batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", refresh=False)
    return loss_sum.item(), seen, False


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
    splits = splits if splits is not None else load_splits(config, data_dir)
    steps_per_epoch = batch_count(len(splits.train_y), config["batch_size"])
    run, best, start = _start(get_kind(kind), config, checkpoint, steps_per_epoch)
    splits = splits.to(run.device)
    task = run.kind.trainer(run.settings)
    cost = training_cost(kind, config)
    loader = BatchLoader(splits.train_x, splits.train_y, run.settings.batch_size, shuffle=True,
                         augment=task.augment(), generator=run.data_rng)
    metrics: dict[str, Any] = {}
    for epoch in range(start, run.settings.epochs):
        task.start_epoch(epoch)
        started = time.perf_counter()
        loss_sum, seen, diverged = _train_epoch(run, task, loader, epoch, progress)
        train_time = time.perf_counter() - started
        lr = run.last_lr  # a per-step schedule's: the epoch's last step's
        run.epoch_done()
        if diverged:
            # A non-finite loss ends the run; the monitored metric gets its worst value so searchers rank it last.
            metrics = {run.kind.monitor: run.kind.worst(), "val_loss": math.inf, "train_loss": math.nan, "diverged": True}
        else:
            metrics = _validate(run, task, splits)
            metrics.update(train_loss=loss_sum / max(seen, 1), diverged=False)
        metrics.update(epoch=epoch + 1, lr=lr, epoch_time_s=time.perf_counter() - started,
                       images_per_s=seen / train_time if train_time > 0 else 0.0, precision=run.precision, **cost)
        best.update(metrics)
        if reporter is not None:
            reporter(metrics, run.state(epoch + 1, metrics, best))
        patience = run.settings.early_stop_patience
        if diverged or (patience and best.stale >= patience):
            break
    return metrics


def _validate(run: _Run, task, splits: Splits) -> dict[str, Any]:
    """The task's validation metrics of the scored weights, and its `raw_validation` of the training weights
    (`val_acc_raw`, `val_neg_elbo_raw`: the same weights unless there is an EMA)."""
    run.model.eval()
    with run.scoring_layout():  # validation runs in fp32, whatever the training precision
        metrics = task.evaluate(run.scored.eval(), splits.val_x, splits.val_y)
        raw = None if run.ema is None else run.model
        metrics.update(task.raw_validation(raw, splits.val_x, splits.val_y, metrics))
    return metrics


# --- PBT: a run continued with changed hyperparameters -------------------------------------------


def apply_mutations(optimizer: torch.optim.Optimizer, scheduler, saved: Mapping[str, Any],
                    config: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Carry a checkpoint's optimizer on under the lr and weight_decay of `config` (PBT's explore step).

    The loaded optimizer and scheduler hold the checkpoint's lr. Every learning-rate schedule is linear
    in lr (its floor, and a one-cycle's start, are lr * min_lr_ratio), so scaling the current, base and
    floor lrs by new/old gives exactly the schedule the new lr would have had at this point. The weights and the optimizer's
    moments are kept; dropout and beta need nothing here, as the model and task are built from `config`.
    Returns what changed, {key: (old, new)}.
    """
    changed = {}
    old_lr, new_lr = saved.get("lr", config["lr"]), config["lr"]
    if old_lr != new_lr:
        ratio = new_lr / old_lr
        for group in optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # the last two: OneCycleLR's
                if key in group:
                    group[key] *= ratio
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
        if hasattr(scheduler, "eta_min"):
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
    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)


def _rng_state(device: torch.device, data_rng: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state
