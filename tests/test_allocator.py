"""``medisee.allocator``: glibc thresholds set by the CLI, skippable by environment."""

import platform
import subprocess
import sys

import pytest

from medisee.allocator import keep_freed_memory


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("MEDISEE_DEFAULT_MALLOC", "1")
    assert keep_freed_memory() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_thresholds_are_set_on_glibc(monkeypatch):
    monkeypatch.delenv("MEDISEE_DEFAULT_MALLOC", raising=False)
    # In a child process, so this test process keeps its allocator settings.
    code = "from medisee.allocator import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
