"""Fixtures of the server tests: the scripted tiny predictor, an in-process client and a
real uvicorn server on 127.0.0.1 (an ephemeral port, bound before the server starts)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.inference.helpers import echo_predictor, one_torch_thread  # noqa: E402, F401


@pytest.fixture
def echo(monkeypatch):
    return echo_predictor(monkeypatch)


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on 127.0.0.1; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
