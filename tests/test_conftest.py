"""The suite's own split between xdist workers (tests/conftest.py) stays in step with the markers."""

import re
from pathlib import Path

from conftest import CLUSTER_FILES

TESTS = Path(__file__).resolve().parent


def test_the_files_kept_on_one_worker_are_those_marked_cluster():
    marked = {path.name for path in TESTS.glob("test_*.py")
              if re.search(r"^pytestmark\s*=.*pytest\.mark\.cluster\b", path.read_text(), re.MULTILINE)}
    assert marked == CLUSTER_FILES


def test_scopes_are_measured_in_seconds_and_unmeasured_files_count_as_the_longest():
    from conftest import CLUSTER_SCOPE, scope_seconds

    durations = {"test_a.py": 5.0, "test_cluster.py": 20.0, "test_s3.py": 30.0, "test_autoscaling.py": 1.0}
    assert scope_seconds("tests/test_a.py", durations) == 5.0
    assert scope_seconds(CLUSTER_SCOPE, durations) == 51.0                  # the cluster files, together
    assert scope_seconds("tests/test_new.py", durations) == float("inf")
    assert scope_seconds(CLUSTER_SCOPE, {"test_s3.py": 30.0}) == float("inf")


def test_the_measured_durations_name_test_files_that_exist():
    from conftest import DURATIONS_FILE, file_durations

    durations = file_durations()
    assert durations, f"{DURATIONS_FILE} is missing or malformed: run `make test-durations`"
    assert set(durations) <= {path.name for path in TESTS.glob("test_*.py")}
    assert all(seconds >= 0 for seconds in durations.values())
