"""The study on disk (fashion_tune.search.study): where the journal lives, opening it, what importances read.

No Ray: journals written through Optuna's public API, as the sweep's searcher writes them.
"""

from __future__ import annotations

import json
import math
import shutil

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.search.study import (JOURNAL_FILE, TUNE_TRIAL_ID, check_journal, importance_study, journal_location,
                                       journal_storage, open_study)

LR = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


def write_study(directory, name="exp-0000abcd"):
    study = optuna.create_study(study_name=name, storage=journal_storage(directory / JOURNAL_FILE), direction="maximize")
    study.add_trial(create_trial(params={"lr": 1e-3}, distributions=LR, value=0.8, user_attrs={TUNE_TRIAL_ID: "a"}))
    study.add_trial(create_trial(params={"lr": 1e-2}, distributions=LR, value=-math.inf))  # diverged: told the worst
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 1e-4}, distributions=LR,
                                 intermediate_values={1: 0.2, 2: 0.3}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 2e-3}, distributions=LR))
    (directory / "sweep.json").write_text(json.dumps({"study_name": name, "journal": str(directory / JOURNAL_FILE)}))
    return study


def test_the_journal_is_in_a_local_experiment_and_in_a_cache_for_a_uri(tmp_path, monkeypatch):
    assert journal_location(tmp_path / "exp") == tmp_path / "exp" / JOURNAL_FILE
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one, two = journal_location("s3://a/runs/exp"), journal_location("s3://b/runs/exp")
    assert one.parent.parent == tmp_path / "cache" / "fashion-tune" / "journals" and one.name == JOURNAL_FILE
    assert one.parent.name.startswith("exp-") and one != two, "two buckets' sweeps of one name stay apart"
    assert journal_location("s3://a/runs/exp/") == one


def test_open_study_reads_the_journal_of_a_copied_experiment(tmp_path):
    (tmp_path / "exp").mkdir()
    write_study(tmp_path / "exp")
    shutil.copytree(tmp_path / "exp", tmp_path / "copy")
    shutil.rmtree(tmp_path / "exp")  # sweep.json of the copy still names the old journal
    study = open_study(tmp_path / "copy")
    assert study.study_name == "exp-0000abcd" and len(study.trials) == 4
    assert open_study(tmp_path / "none-such") is None
    (tmp_path / "copy" / "sweep.json").write_text(json.dumps({"study_name": "other"}))
    with pytest.raises(FashionTuneError, match=r"holds no study 'other' \(it holds exp-0000abcd\)"):
        open_study(tmp_path / "copy")


def test_importances_read_finite_complete_trials_and_pruned_ones_at_their_budget(tmp_path):
    study = write_study(tmp_path)
    values = sorted((t.params["lr"], t.value) for t in importance_study(study).trials)
    assert values == [(1e-4, 0.3), (1e-3, 0.8)]


def test_a_resume_without_its_journal_is_refused(tmp_path):
    write_study(tmp_path)
    check_journal(json.loads((tmp_path / "sweep.json").read_text()), str(tmp_path))
    (tmp_path / JOURNAL_FILE).unlink()
    with pytest.raises(FashionTuneError, match="the Optuna journal of .* is missing"):
        check_journal({"journal": str(tmp_path / JOURNAL_FILE)}, str(tmp_path))
