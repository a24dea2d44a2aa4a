"""Suite-wide hooks: how `make test` splits the suite between pytest-xdist workers, and the fault table.

`make test` runs the suite on one worker per core (`-n auto --dist loadgroup`). A file's tests stay on
one worker, so its module-scoped fixtures (a tiny sweep, a trained model) are built once. The files
that start multi-node Ray clusters (marker `cluster`: fixed ports such as 6379 and 8265, one
machine-wide cluster directory) share one group, so they never run at the same time.
"""

from __future__ import annotations

import pytest

_FAULT_ROWS: list[str] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = "cluster" if item.get_closest_marker("cluster") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_runtest_logreport(report):
    # Runs in the controller for every worker's reports too: user_properties travel with them.
    if report.when == "call":
        _FAULT_ROWS.extend(value for name, value in report.user_properties if name == "faults_table")


def pytest_terminal_summary(terminalreporter):
    if _FAULT_ROWS:
        terminalreporter.section("fault injection")
        for row in _FAULT_ROWS:
            terminalreporter.write_line(row)
