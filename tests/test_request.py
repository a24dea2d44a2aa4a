"""SweepRequest: every choice of a sweep as one typed value, checked when it is made."""

import dataclasses

import pytest

from fashion_tune.search.request import SweepRequest
from fashion_tune.search.sweep import run_sweep
from fashion_tune.util.errors import ConfigError


def test_a_request_is_checked_when_it_is_made():
    with pytest.raises(ConfigError, match="--max-failures=-1 is not allowed; use an integer >= 0"):
        SweepRequest("cnn", "s.yaml", max_failures=-1)
    with pytest.raises(ConfigError, match="--keep-checkpoints=0 is not allowed"):
        SweepRequest("cnn", "s.yaml", keep_checkpoints=0)
    with pytest.raises(ConfigError, match="--restart-errored only applies with --resume"):
        SweepRequest("cnn", "s.yaml", restart_errored=True)
    with pytest.raises(ConfigError, match="gan"):
        SweepRequest("gan", "s.yaml")


def test_a_request_is_a_value():
    request = SweepRequest("vae", "search_spaces/vae_quick.yaml", num_samples=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.num_samples = 8
    assert dataclasses.replace(request, num_samples=8).num_samples == 8
    assert request == SweepRequest("vae", "search_spaces/vae_quick.yaml", num_samples=4)


def test_attach_follows_the_address_or_rays_variable(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not SweepRequest("cnn").attach
    assert SweepRequest("cnn", address="10.0.0.1:6379").attach
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert SweepRequest("cnn").attach


def test_run_sweep_takes_a_request_or_the_shorthand_never_both(tmp_path):
    with pytest.raises(TypeError, match="a SweepRequest alone"):
        run_sweep(SweepRequest("cnn", "s.yaml"), num_samples=2)
    with pytest.raises(TypeError, match="num_sample"):
        run_sweep("cnn", "s.yaml", num_sample=2)  # a misspelt option is no silent default
    with pytest.raises(ConfigError, match="--max-failures=-1"):
        run_sweep("cnn", "s.yaml", max_failures=-1)
    with pytest.raises(ConfigError, match="--space FILE is required"):
        run_sweep(SweepRequest("cnn", storage=tmp_path))
