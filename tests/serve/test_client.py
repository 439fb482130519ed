"""``medisee.client``: the retry policy, and a real server on 127.0.0.1 under load (50
concurrent clients, every request answered) and in a short soak (sessions evicted from a
small store answer 410, memory flat)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import httpx
import pytest

from medisee.client import AsyncClient, Client, RetryPolicy, ServerError, parse_retry_after
from medisee.serve.app import create_app
from medisee.serve.settings import ServeSettings
from tests.inference.helpers import png_bytes, sample_image
from tests.serve.conftest import live_server


# ------------------------------------------------------------------------ the policy
def test_retry_after_seconds_and_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:30 GMT"  # now + 10 s
    assert parse_retry_after(date, now=now) == pytest.approx(10.0)
    assert parse_retry_after(date, now=now + 60) == 0.0


def test_the_wait_honours_retry_after_and_its_jitter_is_bounded():
    import random

    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=4.0)
    rng = random.Random(0)
    waits = [policy.delay(retry, 1.0, rng) for retry in range(6) for _ in range(50)]
    assert min(waits) >= 1.0 and max(waits) <= 1.0 + 4.0
    assert len({round(w, 6) for w in waits}) > 100  # jittered, not one value
    unheaded = [policy.delay(3, None, rng) for _ in range(100)]  # spread 4: [2, 6]
    assert 2.0 <= min(unheaded) and max(unheaded) <= 6.0


def _scripted(statuses: list[int], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses.pop(0)
        if status == 200:
            return httpx.Response(200, json={"session_id": "s", "text": "ok"})
        return httpx.Response(
            status, json={"detail": f"no: {status}"}, headers={"Retry-After": "2"}
        )

    return httpx.MockTransport(handle)


def test_the_client_retries_503_after_retry_after_and_resends_the_whole_upload(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("medisee.client.time.sleep", waits.append)
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_scripted([503, 503, 200], seen))
    with Client("http://server", http=http, seed=1, api_key="k") as client:
        answer = client.predict("Where?", image=b"\x89PNG fake", filename="a.png", window="lung")
    assert answer["text"] == "ok" and client.retries == 2
    assert len(waits) == 2 and all(w >= 2.0 for w in waits)
    assert all(b"\x89PNG fake" in r.read() and b"lung" in r.content for r in seen)
    assert all(r.headers["x-api-key"] == "k" for r in seen)


def test_the_client_gives_up_and_does_not_retry_client_errors(monkeypatch):
    monkeypatch.setattr("medisee.client.time.sleep", lambda s: None)
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_scripted([503] * 3, seen))
    with Client("http://server", http=http, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(ServerError) as raised:
            client.predict("Where?", session_id="s")
    assert raised.value.status == 503 and raised.value.attempts == 3 and len(seen) == 3
    seen.clear()
    http = httpx.Client(transport=_scripted([422, 200], seen))
    with Client("http://server", http=http) as client, pytest.raises(ServerError) as raised:
        client.predict("", session_id="s")
    assert raised.value.status == 422 and raised.value.detail == "no: 422" and len(seen) == 1


# --------------------------------------------------------------------------- load
CLIENTS = 50


def _hold_first_batch_until_the_queue_is_full(predictor, monkeypatch, base_url, capacity):
    """The worker's first batch waits (at most 10 s) until ``/healthz`` shows a full
    queue, so that the burst is certainly shed in part, however fast the machine."""
    run = predictor.run
    calls = []

    def run_when_full(requests, options=None):
        if not calls:
            deadline = time.monotonic() + 10
            with httpx.Client(base_url=base_url, timeout=5) as probe:
                while time.monotonic() < deadline:
                    if probe.get("/healthz").json()["queue_depth"] >= capacity:
                        break
                    time.sleep(0.01)
        calls.append(len(requests))
        return run(requests, options)

    monkeypatch.setattr(predictor, "run", run_when_full)


def test_fifty_concurrent_clients_get_fifty_of_fifty_answers_with_retries(echo, monkeypatch):
    settings = ServeSettings(max_batch_size=4, max_new_tokens=8)  # queue 32, the default
    images = [png_bytes(sample_image(20 + i % 7, 24 + i % 5, seed=i)) for i in range(CLIENTS)]
    retry = RetryPolicy(backoff_s=0.25, max_backoff_s=2.0, deadline_s=60)
    with live_server(create_app(echo, settings)) as base_url:
        # The time of one request, alone: an upload and a follow-up.
        single = []
        with Client(base_url) as client:
            for i in range(3):
                start = time.perf_counter()
                first = client.predict("Alone?", image=images[i])
                client.predict("Again?", session_id=first["session_id"])
                single.append(time.perf_counter() - start)
        pair_s = statistics.median(single)
        _hold_first_batch_until_the_queue_is_full(echo, monkeypatch, base_url, settings.queue_size)

        async def one(number: int, client: AsyncClient) -> tuple[dict, dict]:
            first = await client.predict(f"Client {number} asks?", image=images[number])
            second = await client.predict(
                f"Client {number} follows up?", session_id=first["session_id"]
            )
            return first, second

        async def burst() -> tuple[list, int]:
            clients = [
                AsyncClient(base_url, retry=retry, seed=n, timeout=60) for n in range(CLIENTS)
            ]
            try:
                answers = await asyncio.wait_for(
                    asyncio.gather(*(one(n, c) for n, c in enumerate(clients))), 120
                )
            finally:
                await asyncio.gather(*(c.close() for c in clients))
            return answers, sum(c.retries for c in clients)

        start = time.perf_counter()
        answers, retries = asyncio.run(burst())
        elapsed = time.perf_counter() - start
    assert len(answers) == CLIENTS  # every request answered (a failure raises)
    for number, (first, second) in enumerate(answers):
        assert first["text"].startswith(f"Echo: Client {number} asks?") and first["turn"] == 1
        assert second["text"].startswith(f"Echo: Client {number} follows up?")
        assert second["turn"] == 2 and second["session_id"] == first["session_id"]
    assert retries > 0  # the burst was shed (503) and the clients came back
    # Served one at a time, 50 pairs take 50 x pair_s; retry waits (Retry-After 1 s plus
    # at most 2 s jitter) add idle rounds while the queue drains.
    budget = 3 * CLIENTS * pair_s + 4 * (settings.retry_after_s + retry.max_backoff_s)
    assert elapsed < budget, (elapsed, budget, pair_s)


# --------------------------------------------------------------------------- soak
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def test_short_soak_sessions_evicted_with_410_and_memory_flat(echo):
    """60 requests: 12 sessions x (upload + 4 follow-ups), 3 at a time, a store of 4."""
    sessions, follow_ups, parallel, store = 12, 4, 3, 4
    settings = ServeSettings(max_sessions=store, max_new_tokens=4, request_timeout_s=30)
    images = [png_bytes(sample_image(40, 48, seed=s)) for s in range(sessions)]
    rss: dict[int, int | None] = {}
    done = 0

    async def conversation(client: AsyncClient, number: int) -> str:
        nonlocal done
        first = await client.predict(f"Session {number}?", image=images[number])
        for turn in range(follow_ups):
            answer = await client.predict(f"Turn {turn}?", session_id=first["session_id"])
            assert answer["turn"] == turn + 2 and answer["text"].startswith(f"Echo: Turn {turn}?")
        done += 1 + follow_ups
        if done >= 10 and 10 not in rss:
            rss[10] = _rss_bytes()
        return first["session_id"]

    async def soak() -> list[str]:
        async with AsyncClient(base_url, timeout=30) as client:
            ids: list[str] = []
            for start in range(0, sessions, parallel):
                ids += await asyncio.wait_for(
                    asyncio.gather(
                        *(conversation(client, n) for n in range(start, start + parallel))
                    ),
                    60,
                )
            rss["end"] = _rss_bytes()
            # The oldest sessions were evicted by newer ones: 410, saying so.
            with pytest.raises(ServerError) as gone:
                await client.predict("Still there?", session_id=ids[0])
            assert gone.value.status == 410 and "evicted" in gone.value.detail
            latest = await client.predict("Still there?", session_id=ids[-1])
            assert latest["turn"] == follow_ups + 2
            health = await client.health()
            assert health["sessions"] == store and health["queue_depth"] == 0
            return ids

    with live_server(create_app(echo, settings)) as base_url:
        ids = asyncio.run(soak())
    assert len(set(ids)) == sessions and done == sessions * (1 + follow_ups)
    if rss.get(10) and rss.get("end"):
        assert rss["end"] < 1.10 * rss[10], rss


def test_the_store_remembers_why_a_session_went():
    from medisee.serve.sessions import Session, SessionStore

    now = [0.0]
    store = SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0], remember=2)
    for name in "abc":
        store.add(Session(name, None, {}))
    assert store.gone("a") == "evicted" and store.gone("b") is None
    now[0] = 11
    assert store.get("b") is None and store.gone("b") == "expired"
    assert store.gone("a") is None  # only the last `remember` ids are kept
    store.add(Session("d", None, {}))
    assert store.remove("d") and store.gone("d") is None  # deleted by its client: unknown


def test_an_expired_session_answers_410_saying_so(echo):
    from fastapi.testclient import TestClient

    settings = ServeSettings(session_ttl_s=0.2, max_new_tokens=4)
    with TestClient(create_app(echo, settings)) as client:
        first = client.post(
            "/v1/predict",
            files={"image": ("a.png", png_bytes(sample_image(10, 10)))},
            data={"question": "Where?"},
        ).json()
        time.sleep(0.3)
        late = client.post(
            "/v1/predict", json={"question": "And?", "session_id": first["session_id"]}
        )
        assert late.status_code == 410 and "expired after 0.2 s idle" in late.json()["detail"]
        unknown = client.delete("/v1/sessions/never-issued")
        assert unknown.status_code == 404
