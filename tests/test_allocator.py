"""``medisee.allocator``: glibc thresholds, set by the CLI unless turned off."""

import platform
import subprocess
import sys

import pytest

from medisee.allocator import ENV_VAR, tune_from_environment

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tune_in_child(value: str | None) -> subprocess.CompletedProcess:
    """``tune_from_environment()`` in a child process (this one keeps its allocator), with
    ``MEDISEE_MALLOC_TUNING`` set to ``value`` (None: unset)."""
    code = "from medisee.allocator import tune_from_environment as t; print(t())"
    env = {"PATH": ""} if value is None else {ENV_VAR: value, "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_zero_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0")
    assert tune_from_environment() is False


def test_another_value_is_refused_with_the_accepted_ones(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(ValueError, match=r"MEDISEE_MALLOC_TUNING must be 0 .* or 1, not 'yes'"):
        tune_from_environment()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("value", [None, "1"])
def test_thresholds_are_set_on_glibc_unless_turned_off(value):
    out = tune_in_child(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_the_cli_reports_a_bad_value_as_an_error(monkeypatch, capsys):
    from medisee.cli import main

    monkeypatch.setenv(ENV_VAR, "2")
    assert main(["data", "stats", "--manifest", "missing.jsonl"]) == 2
    assert "MEDISEE_MALLOC_TUNING must be 0" in capsys.readouterr().err
