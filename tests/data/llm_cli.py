"""``medisee.data.cli generate --engine llm`` in a child process, for the tests that kill
and resume it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
