"""``medisee.allocator``: glibc thresholds, set only when asked for."""

import platform
import subprocess
import sys

import pytest

from medisee.allocator import ENV_VAR, tune_from_environment


def test_the_allocator_is_left_alone_unless_asked(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert tune_from_environment() is False
    monkeypatch.setenv(ENV_VAR, "0")
    assert tune_from_environment() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_thresholds_are_set_on_glibc_when_asked():
    # In a child process, so this test process keeps its allocator settings.
    code = "from medisee.allocator import tune_from_environment as t; print(t())"
    env = {"MEDISEE_MALLOC_TUNING": "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "True"
