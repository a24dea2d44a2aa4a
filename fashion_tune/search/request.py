"""A sweep to run or resume as one typed value (`SweepRequest`): what `fashion-tune sweep` parses
its flags into and what a notebook builds, checked when it is made; and the sweep as prepared from
it before Ray starts (`PreparedSweep`).

    from fashion_tune.search.request import SweepRequest
    from fashion_tune.search.sweep import run_sweep

    outcome = run_sweep(SweepRequest("cnn", "search_spaces/cnn_quick.yaml", num_samples=4, name="first"))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fashion_tune.util.errors import ConfigError

if TYPE_CHECKING:  # a request is made (and its flags checked) before torch, pandas and Ray are imported
    from fashion_tune.spaces.space import SearchSpace
    from fashion_tune.store.experiment import Experiment


@dataclass(frozen=True)
class SweepRequest:
    """Every choice a sweep is run with; None means the default (or, on resume, what it was started with)."""

    kind: str  # vae | cnn | replay
    space_file: str | os.PathLike | None = None  # the search space; required unless `resume`
    # the space file's own settings, overridden
    num_samples: int | None = None
    max_concurrent: int | None = None
    # where the experiment lives: STORAGE/NAME (NAME defaults to KIND-YYYYmmdd-HHMMSS; STORAGE to
    # $FASHION_TUNE_STORAGE, else ./ray_results; a URI such as s3://bucket/sweeps too)
    name: str | None = None
    storage: str | os.PathLike | None = None
    resume: bool = False  # continue the sweep STORAGE/NAME where it stopped
    restart_errored: bool = False  # with `resume`: failed trials start over instead of continuing
    data_dir: str | os.PathLike | None = None  # Fashion-MNIST's files (default: found as `fashion-tune data` says)
    # where it runs: a Ray cluster (`address`, default $RAY_ADDRESS) or a local Ray of this size
    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    # fault tolerance, saved with the sweep (defaults 3 and 3)
    max_failures: int | None = None  # restarts of a failing trial from its last checkpoint
    keep_checkpoints: int | None = None  # checkpoints kept per trial (its best ones)
    allow_local_storage: bool = False  # a cluster writing to a node-local path (only one node sees it)
    dashboard: bool = False  # Ray's dashboard, on `dashboard_host`
    dashboard_host: str = "127.0.0.1"
    verbose: int = 1  # Ray's progress output: 0 quiet, 1 the trial table
    # Ray's RunConfig stop: a dict (per trial) or a Stopper; a sweep its stop_all ends is "stopped", complete
    # as it is (Ray marks the search finished, so a resume would start no new trial)
    stop: Any = None

    def __post_init__(self) -> None:
        if self.max_failures is not None and self.max_failures < 0:
            raise ConfigError(f"--max-failures={self.max_failures} is not allowed; use an integer >= 0")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ConfigError(f"--keep-checkpoints={self.keep_checkpoints} is not allowed; use an integer >= 1")
        if self.restart_errored and not self.resume:
            raise ConfigError("--restart-errored only applies with --resume (it restarts the failed trials of a "
                              "sweep being continued)")
        from fashion_tune.training.config import check_kind

        if self.kind != "replay":  # spaces.space.REPLAY (not imported here: it imports torch); see search.replay
            check_kind(self.kind)

    @property
    def attach(self) -> bool:
        """Whether the sweep runs on a Ray cluster that is already up."""
        return bool(self.address or os.environ.get("RAY_ADDRESS"))


@dataclass(frozen=True)
class PreparedSweep:
    """A sweep as prepared before Ray starts: its space, store, data and settings resolved."""

    request: SweepRequest
    space: SearchSpace
    store: Experiment
    info: dict[str, Any] | None  # sweep.json of a sweep being resumed; None for a new one
    splits: Any  # the training and validation data every trial shares
    root: str  # the storage root (absolute path or URI)
    max_failures: int | None  # None: a sweep started before they were saved
    keep_checkpoints: int | None
    command: str  # the command that resumes it
    num_cpus: float | None = None  # the local Ray's size (None when attached to a cluster)
    num_gpus: float | None = None
