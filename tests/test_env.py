"""Tests for scratchlm.runtime.env (boolean environment variables) and its use by the data registry."""

from __future__ import annotations

import pytest

from scratchlm.data import registry as data
from scratchlm.runtime import env_flag

NAME = "SCRATCHLM_TEST_FLAG"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " 1 ", "\ttrue\n"])
def test_true_spellings(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    assert env_flag(NAME) is True
    assert env_flag(NAME, default=True) is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "No", "off", "OFF", " 0 ", " off\n"])
def test_false_spellings(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    assert env_flag(NAME, default=True) is False
    assert env_flag(NAME) is False


@pytest.mark.parametrize("raw", [None, "", "   "])
@pytest.mark.parametrize("default", [True, False])
def test_unset_or_empty_gives_the_default(monkeypatch, raw, default):
    if raw is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, raw)
    assert env_flag(NAME, default=default) is default


@pytest.mark.parametrize("raw", ["2", "ture", "y", "enabled", "1.0", "-1", "yes please"])
def test_anything_else_is_an_error_naming_variable_value_and_spellings(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ValueError) as err:
        env_flag(NAME)
    message = str(err.value)
    assert NAME in message and repr(raw) in message
    for word in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        assert word in message


def test_bad_arguments():
    with pytest.raises(TypeError, match="variable name"):
        env_flag("")
    with pytest.raises(TypeError, match="default"):
        env_flag(NAME, default="yes")


def test_registry_reads_offline_through_env_flag(tmp_path, monkeypatch):
    """SCRATCHLM_OFFLINE=on now means offline (it used to mean online), and a typo is an error."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))  # empty: the file would be downloaded
    monkeypatch.setenv(data.OFFLINE_ENV, " On ")
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        data.dataset_path("tinyshakespeare")
    monkeypatch.setenv(data.OFFLINE_ENV, "ture")
    with pytest.raises(ValueError, match="SCRATCHLM_OFFLINE"):
        data.dataset_path("tinyshakespeare")
