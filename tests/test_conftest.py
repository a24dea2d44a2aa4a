"""The suite's own split between xdist workers (tests/conftest.py) stays in step with the markers."""

import re
from pathlib import Path

from conftest import CLUSTER_FILES

TESTS = Path(__file__).resolve().parent


def test_the_files_kept_on_one_worker_are_those_marked_cluster():
    marked = {path.name for path in TESTS.glob("test_*.py")
              if re.search(r"^pytestmark\s*=.*pytest\.mark\.cluster\b", path.read_text(), re.MULTILINE)}
    assert marked == CLUSTER_FILES
