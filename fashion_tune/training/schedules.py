"""Schedules for the VAE's KL weight beta, as a function of the (0-based) epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fashion_tune.util.errors import ConfigError

BETA_SCHEDULES = ("constant", "linear", "cyclical")


@dataclass
class BetaSchedule:
    """KL weight per epoch: constant, a linear warm-up, or cyclical warm-ups (Fu et al. 2019)."""

    kind: str = "linear"
    start: float = 0.1
    end: float = 1.0
    warmup: float = 0.5  # fraction of training (linear) or of each cycle (cyclical) spent ramping
    cycles: int = 4  # cyclical only

    def __post_init__(self) -> None:
        if self.kind not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule={self.kind!r} is not allowed; choose one of: {', '.join(BETA_SCHEDULES)}")
        for name in ("start", "end"):
            if getattr(self, name) < 0:
                raise ConfigError(f"beta_{name}={getattr(self, name)!r} must be >= 0")
        if not 0 < self.warmup <= 1:
            raise ConfigError(f"beta_warmup={self.warmup!r} must be in (0, 1]")
        if isinstance(self.cycles, bool) or not isinstance(self.cycles, int) or self.cycles < 1:
            raise ConfigError(f"beta_cycles={self.cycles!r} must be an integer >= 1")

    def __call__(self, epoch: int, total_epochs: int) -> float:
        """Beta for 0-based `epoch` of `total_epochs`."""
        if total_epochs < 1:
            raise ConfigError(f"total_epochs={total_epochs!r} must be >= 1")
        if epoch < 0:
            raise ConfigError(f"epoch={epoch!r} must be >= 0 (epochs count from 0)")
        if self.kind == "constant":
            return self.end
        # Linear is one cycle of the cyclical schedule. Whole-epoch cycles make every cycle restart
        # exactly at `start`; when cycles do not divide total_epochs the last one is cut short.
        cycles = 1 if self.kind == "linear" else self.cycles
        cycle_length = math.ceil(total_epochs / cycles)
        position = epoch if self.kind == "linear" else epoch % cycle_length  # linear holds `end` past training
        progress = position / (self.warmup * cycle_length)
        return self.start + (self.end - self.start) * min(1.0, progress)
