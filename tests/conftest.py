"""Suite-wide hooks: how `make test` splits the suite between pytest-xdist workers, and the fault table.

`make test` runs the suite on one worker per core (`-n auto`). A file's tests stay on one worker, in
order, so its module-scoped fixtures (a tiny sweep, a trained model) are built once. The files that start
multi-node Ray clusters (CLUSTER_FILES) go to one worker together, so no two of those clusters, each
with an autoscaler or several nodes, are up at the same time.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

_FAULT_ROWS: list[str] = []


# The files whose tests carry the marker `cluster` (tests/test_conftest.py checks that the two agree).
CLUSTER_FILES = frozenset({"test_cluster.py", "test_autoscaling.py", "test_s3.py"})


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "multi-node clusters" if PurePosixPath(path).name in CLUSTER_FILES else path

    return ByFile(config, log)


def pytest_runtest_logreport(report):
    # Runs in the controller for every worker's reports too: user_properties travel with them.
    if report.when == "call":
        _FAULT_ROWS.extend(value for name, value in report.user_properties if name == "faults_table")


def pytest_terminal_summary(terminalreporter):
    if _FAULT_ROWS:
        terminalreporter.section("fault injection")
        for row in _FAULT_ROWS:
            terminalreporter.write_line(row)
