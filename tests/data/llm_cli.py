"""``medisee.data.cli generate --engine llm`` in a child process, for the tests that kill
and resume it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_generate(
    manifest: Path, url: str, cache: Path, out: Path, *options: str
) -> subprocess.Popen:
    """Start the command against the server at ``url`` (``options``: more of its flags);
    stdout and stderr come back together, unbuffered."""
    command = [
        sys.executable,
        "-m",
        "medisee.data.cli",
        "generate",
        "--manifest",
        str(manifest),
        "--engine",
        "llm",
        "--endpoint",
        url,
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
        *options,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def kill_when_journaled(
    process: subprocess.Popen, journal: Path, lines: int, timeout: float, poll: float
) -> int:
    """SIGKILL ``process`` once ``journal`` holds ``lines`` lines (or ``timeout`` seconds
    have passed; the test fails if the process exits first): the lines it holds then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= lines:
            break
        if process.poll() is not None:
            pytest.fail(f"generator exited before the kill: {process.stdout.read().decode()}")
        time.sleep(poll)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return journal.read_text().count("\n")
