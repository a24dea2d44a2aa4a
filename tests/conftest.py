"""Suite-wide hooks: how `make test` splits the suite between pytest-xdist workers, and the fault table.

`make test` runs the suite on one worker per core (`-n auto`). A file's tests stay on one worker, in
order, so its module-scoped fixtures (a tiny sweep, a trained model) are built once. The files that start
multi-node Ray clusters (CLUSTER_FILES) go to one worker together, so no two of those clusters, each
with an autoscaler or several nodes, are up at the same time.

Files are handed out longest first, by the seconds each took in a measured run (DURATIONS_FILE), so a
long file does not start last and leave the other workers idle at the end. A file not in it counts as
the longest. `make test-durations` measures them again (`--record-durations`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path, PurePosixPath

import pytest

_FAULT_ROWS: list[str] = []


# The files whose tests carry the marker `cluster` (tests/test_conftest.py checks that the two agree).
CLUSTER_FILES = frozenset({"test_cluster.py", "test_autoscaling.py", "test_s3.py"})
CLUSTER_SCOPE = "multi-node clusters"

# Seconds per test file (setup, call and teardown of its tests) in a measured run of the suite.
DURATIONS_FILE = Path(__file__).resolve().parent / "durations.json"


def pytest_addoption(parser):
    parser.addoption("--record-durations", metavar="PATH", default=None,
                     help="write the seconds each test file took to PATH (JSON; tests/durations.json orders the "
                          "files between xdist workers)")


def file_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    try:
        return {str(name): float(seconds) for name, seconds in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}    # no order then: the files go out in collection order


def scope_seconds(scope: str, durations: dict[str, float]) -> float:
    """The measured seconds of a scope (a file, or the cluster files together); a file not measured counts
    as the longest."""
    names = CLUSTER_FILES if scope == CLUSTER_SCOPE else {PurePosixPath(scope).name}
    return sum(durations.get(name, math.inf) for name in names)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    durations = file_durations()

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return CLUSTER_SCOPE if PurePosixPath(path).name in CLUSTER_FILES else path

        def _assign_work_unit(self, node) -> None:
            # The next scope a worker gets is the first in the work queue: put the longest first (a stable
            # sort, so scopes measured alike keep the collection's order).
            ordered = sorted(self.workqueue.items(), key=lambda item: -scope_seconds(item[0], durations))
            self.workqueue.clear()
            self.workqueue.update(ordered)
            super()._assign_work_unit(node)

    return ByFile(config, log)


_FILE_SECONDS: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    # Runs in the controller for every worker's reports too: user_properties travel with them.
    _FILE_SECONDS[PurePosixPath(report.nodeid.split("::")[0]).name] += report.duration
    if report.when == "call":
        _FAULT_ROWS.extend(value for name, value in report.user_properties if name == "faults_table")


def pytest_sessionfinish(session):
    path = session.config.getoption("record_durations")
    if path and not hasattr(session.config, "workerinput"):    # the controller, or a run without xdist
        rows = {name: round(seconds, 1) for name, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])}
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def pytest_terminal_summary(terminalreporter):
    if _FAULT_ROWS:
        terminalreporter.section("fault injection")
        for row in _FAULT_ROWS:
            terminalreporter.write_line(row)
