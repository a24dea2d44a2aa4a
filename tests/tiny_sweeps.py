"""One tiny real sweep shared by test_sweep.py and test_analysis.py (run once per test session)."""

from __future__ import annotations

import json

import pytest
import yaml

TINY_CNN_SPACE = {
    "kind": "cnn",
    "metric": "val_acc",
    "mode": "max",
    "num_samples": 6,
    "max_concurrent_trials": 2,
    "seed": 0,
    "scheduler": {"max_t": 4, "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "fixed": {"width": 8, "depth": 1, "batch_size": 50, "subset": 1000, "val_subset": 300, "device": "cpu"},
    "params": {
        # the low end cannot learn in one epoch, so ASHA has trials to stop
        "lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-1},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "flip": {"type": "choice", "values": [True, False]},
    },
    "points_to_evaluate": [{"lr": 2.0e-3, "dropout": 0.3, "flip": True}],
}

_RUNS: dict[str, object] = {}


def tiny_cnn_sweep(tmp_path_factory):
    """The finished tiny CNN sweep (a SweepOutcome) and the lines it printed; Ray is shut down after it."""
    if "cnn" not in _RUNS:
        import ray

        from fashion_tune.search.sweep import run_sweep

        root = tmp_path_factory.mktemp("tiny-sweep")
        space = root / "tiny_cnn.yaml"
        space.write_text(yaml.safe_dump(TINY_CNN_SPACE, sort_keys=False))
        printed: list[str] = []
        try:
            outcome = run_sweep("cnn", space, name="tiny-cnn", storage=root / "results", verbose=0, echo=printed.append)
        finally:
            if ray.is_initialized():
                ray.shutdown()
        _RUNS["cnn"] = (outcome, printed)
    return _RUNS["cnn"]


def interrupt_when_ready(driver, ready, log, timeout: float = 240) -> int:
    """Ctrl-C a sweep driver (a Popen) once `ready()` holds; its exit status. Fails if it ended first."""
    import signal
    import time

    try:
        deadline = time.time() + timeout
        while driver.poll() is None and time.time() < deadline and not ready():
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        return driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()


@pytest.fixture(autouse=True)
def no_ray_left_running():
    """Imported by the test modules that start Ray: each test leaves no Ray runtime behind."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def epochs_in_result_json(path) -> list[int]:
    """The epochs a trial's result.json lists, checked: from 1, none skipped. Tune appends to the file,
    and a trial restored from a checkpoint older than its last report (the snapshot lags a busy
    driver) runs those epochs again, so an epoch may repeat."""
    epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]
    assert epochs[0] == 1 and all(b <= a + 1 for a, b in zip(epochs, epochs[1:])), (path, epochs)
    return epochs
