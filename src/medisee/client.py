"""A small Python client for ``medisee serve`` that gets through load.

The server sheds load instead of queueing without bound: a full queue (or a model still
loading) answers ``503`` with a ``Retry-After`` header. This client waits that long plus a
random share of a back-off that doubles with every attempt (capped), and tries again, so
that many clients shed at the same moment do not all come back at the same moment. Only
answers that say the request was not run are retried (``429``, ``503``, and connections
that could not be opened); a ``504`` may have been answered by the model (a follow-up
turn recorded), so it is raised, like every other error, as ``ServerError``.

    from medisee.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        first = client.predict("Which organ filters the blood?", image="scan.png")
        first["text"], first["box"], first["session_id"]
        again = client.predict("What lies above it?", session_id=first["session_id"])

``AsyncClient`` has the same methods as coroutines. Responses are the server's JSON
(see ``docs/serving.md``). Needs ``httpx`` (it comes with ``medisee[serve]``).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

try:
    import httpx
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "medisee.client needs httpx: pip install httpx (it comes with medisee[serve])"
    ) from error

ImageArgument = str | os.PathLike | bytes


class ServerError(Exception):
    """A non-2xx answer (after any retries).

    Attributes:
        status: the HTTP status (0 when no connection could be made).
        detail: the server's ``detail`` message (or the response text).
        attempts: how many times the request was sent.
    """

    def __init__(self, status: int, detail: str, attempts: int) -> None:
        super().__init__(f"{status}: {detail} (after {attempts} attempt(s))")
        self.status = status
        self.detail = detail
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a shed request again.

    The wait before retry ``n`` (0-based) is ``floor + uniform(0, spread)`` with
    ``spread = min(max_backoff_s, backoff_s * 2**n)`` and ``floor`` the server's
    ``Retry-After`` (seconds or an HTTP date), or ``spread / 2`` when it sent none.

    Attributes:
        max_attempts: sends per request, the first included.
        backoff_s: the first back-off spread.
        max_backoff_s: the largest spread (and the longest ``Retry-After`` honoured).
        deadline_s: give up when the next wait would end later than this after the first
            send (``None``: only ``max_attempts`` bounds it).
        statuses: the statuses retried.
    """

    max_attempts: int = 10
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    deadline_s: float | None = 600.0
    statuses: tuple[int, ...] = (429, 503)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        spread = min(self.max_backoff_s, self.backoff_s * 2**retry)
        floor = spread / 2 if retry_after is None else min(retry_after, self.max_backoff_s)
        return floor + rng.uniform(0, spread)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (delay-seconds or an HTTP date) -> seconds, ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _request(
    question: str,
    image: ImageArgument | None,
    session_id: str | None,
    filename: str | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """``httpx`` keyword arguments of one ``POST /v1/predict`` (rebuilt for each send)."""
    if image is None:
        body = {"question": question, **fields}
        if session_id is not None:
            body["session_id"] = session_id
        return {"json": body}
    if session_id is not None:
        raise ValueError("give an image to start a conversation or a session_id, not both")
    if isinstance(image, bytes):
        data, name = image, filename or "image"
    else:
        path = Path(image)
        data, name = path.read_bytes(), filename or path.name
    form = {"question": question, **{k: _form_value(v) for k, v in fields.items()}}
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": form}


def _error(response: httpx.Response, attempts: int) -> ServerError:
    try:
        detail = str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text
    return ServerError(response.status_code, detail, attempts)


#: Send failures that mean the request never reached the server (so it may be retried).
_UNREACHED = (httpx.ConnectError, httpx.ConnectTimeout)


_HTTP = TypeVar("_HTTP", httpx.Client, httpx.AsyncClient)


class _Base(Generic[_HTTP]):
    """What ``Client`` and ``AsyncClient`` share: all but the send and the sleep."""

    _http_type: type[_HTTP]

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 180.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
        http: _HTTP | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = http is None
        self._http: _HTTP = http or self._http_type(timeout=timeout)
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        #: Retries made so far (all requests of this client).
        self.retries = 0

    def _arguments(
        self, method: str, path: str, build: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """``httpx`` ``request`` keyword arguments of one send (``build()`` called afresh)."""
        return {"method": method, "url": self.base_url + path, "headers": self._headers, **build()}

    def _wait(
        self, outcome: httpx.Response | httpx.TransportError, attempt: int, started: float
    ) -> float:
        """Seconds to wait before sending again after a failed send (an error answer, or
        a connection that could not be made); raises ``ServerError`` to give up."""
        response = outcome if isinstance(outcome, httpx.Response) else None
        wait = self._next_wait(response, attempt, started)
        if wait is not None:
            return wait
        if isinstance(outcome, httpx.Response):
            raise _error(outcome, attempt)
        raise ServerError(0, f"cannot connect: {outcome}", attempt) from outcome

    def _next_wait(
        self, response: httpx.Response | None, attempt: int, started: float
    ) -> float | None:
        """Seconds to wait before sending again, or ``None`` to give up."""
        if attempt >= self.retry.max_attempts:
            return None
        if response is not None and response.status_code not in self.retry.statuses:
            return None
        header = None if response is None else response.headers.get("retry-after")
        wait = self.retry.delay(attempt - 1, parse_retry_after(header), self._rng)
        deadline = self.retry.deadline_s
        if deadline is not None and time.monotonic() - started + wait > deadline:
            return None
        self.retries += 1
        return wait


class Client(_Base[httpx.Client]):
    """Blocking client (see the module docstring).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` when the server wants one.
        timeout: seconds per send (connect, read...); the server's own limit is
            ``request_timeout_s`` (120 s by default).
        retry: the retry policy.
        seed: seeds the jitter (reproducible waits in tests).
        http: an ``httpx.Client`` to use instead of a new one (its base URL is ignored).
    """

    _http_type = httpx.Client

    def _send(
        self, method: str, path: str, build: Callable[[], dict[str, Any]] = dict
    ) -> httpx.Response:
        """Send (``build()`` gives the body arguments, fresh for each attempt), retrying
        as ``self.retry`` says; the first 2xx response, else ``ServerError``."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(**self._arguments(method, path, build))
            except _UNREACHED as error:
                time.sleep(self._wait(error, attempt, started))
                continue
            if response.is_success:
                return response
            time.sleep(self._wait(response, attempt, started))

    def predict(
        self,
        question: str,
        image: ImageArgument | None = None,
        *,
        session_id: str | None = None,
        filename: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Ask about a new ``image`` (path or bytes), or continue ``session_id``.

        ``fields`` are the other request fields (``mask_format``, ``window``, ``axis``,
        ``slice_index``, ``frame``, ``max_new_tokens``, ``seed``...).
        """
        return self._send(
            "POST", "/v1/predict", lambda: _request(question, image, session_id, filename, fields)
        ).json()

    def delete_session(self, session_id: str) -> None:
        self._send("DELETE", f"/v1/sessions/{session_id}")

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/healthz").json()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Base[httpx.AsyncClient]):
    """``Client`` for asyncio: the same arguments, the methods are coroutines (one
    instance may serve many concurrent tasks)."""

    _http_type = httpx.AsyncClient

    async def _send(
        self, method: str, path: str, build: Callable[[], dict[str, Any]] = dict
    ) -> httpx.Response:
        """See ``Client._send``."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(**self._arguments(method, path, build))
            except _UNREACHED as error:
                await asyncio.sleep(self._wait(error, attempt, started))
                continue
            if response.is_success:
                return response
            await asyncio.sleep(self._wait(response, attempt, started))

    async def predict(
        self,
        question: str,
        image: ImageArgument | None = None,
        *,
        session_id: str | None = None,
        filename: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """See ``Client.predict``."""
        response = await self._send(
            "POST", "/v1/predict", lambda: _request(question, image, session_id, filename, fields)
        )
        return response.json()

    async def delete_session(self, session_id: str) -> None:
        await self._send("DELETE", f"/v1/sessions/{session_id}")

    async def health(self) -> dict[str, Any]:
        return (await self._send("GET", "/healthz")).json()

    async def close(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
