"""The suite's own split between xdist workers (tests/conftest.py) stays in step with the markers."""

import json
import re
import subprocess
import sys
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


def test_xdist_hands_out_the_files_longest_first_with_unmeasured_files_before_all(tmp_path):
    """A real `pytest -n 1` run under this conftest: its one worker runs the files in the order it gets them."""
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "durations.json").write_text(json.dumps({"test_a.py": 1.0, "test_b.py": 100.0, "test_c.py": 10.0}))
    log = tmp_path / "order.log"
    for name in ("test_a", "test_b", "test_c", "test_d"):     # test_d.py is not measured
        (tmp_path / f"{name}.py").write_text(
            f"def test_it():\n    with open({str(log)!r}, 'a') as f:\n        f.write('{name}.py\\n')\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1", "-p", "no:cacheprovider", "--rootdir",
                          str(tmp_path), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert log.read_text().split() == ["test_d.py", "test_b.py", "test_c.py", "test_a.py"]
