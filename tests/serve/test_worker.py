"""The model worker: batching rules, cancellation, failures, a full queue."""

from __future__ import annotations

import threading
import time

import pytest

from medisee.serve.worker import Job, ModelWorker, QueueFullError, WorkerStoppedError


def _worker(runner, **kwargs) -> tuple[ModelWorker, threading.Event]:
    gate = threading.Event()

    def gated(resource, jobs):
        gate.wait(10)
        return runner(resource, jobs)

    worker = ModelWorker(lambda: "model", gated, **kwargs)
    worker.start()
    worker.wait_ready(5)
    return worker, gate


def test_batches_group_by_key_and_never_hold_one_session_twice():
    batches: list[list[str]] = []

    def runner(resource, jobs):
        batches.append([job.payload for job in jobs])
        return [job.payload.upper() for job in jobs]

    worker, gate = _worker(runner, queue_size=16, max_batch=3)
    blocker = worker.submit(Job("first", batch_key="g"))
    time.sleep(0.1)  # the worker is now blocked inside the first batch
    jobs = [
        Job("a1", batch_key="g", exclusive_key="s1"),
        Job("a2", batch_key="g", exclusive_key="s1"),  # same session: not with a1
        Job("b", batch_key="g", exclusive_key="s2"),
        Job("alone", batch_key=None),
        Job("c", batch_key="g"),
        Job("other", batch_key="h"),
    ]
    futures = [worker.submit(job) for job in jobs]
    gate.set()
    assert blocker.result(5) == "FIRST"
    assert [f.result(5) for f in futures] == [j.payload.upper() for j in jobs]
    worker.stop()
    assert batches[0] == ["first"]
    assert batches[1] == ["a1", "b", "c"]
    assert sorted(map(tuple, batches[2:])) == sorted([("a2",), ("alone",), ("other",)])


def test_a_failing_job_does_not_fail_its_batch_mates():
    def runner(resource, jobs):
        if any(job.payload == "bad" for job in jobs):
            raise ValueError("bad input")
        return [job.payload for job in jobs]

    worker, gate = _worker(runner, queue_size=8, max_batch=4)
    first = worker.submit(Job("x", batch_key="g"))
    time.sleep(0.1)
    futures = [worker.submit(Job(p, batch_key="g")) for p in ("ok1", "bad", "ok2")]
    gate.set()
    assert first.result(5) == "x"
    assert futures[0].result(5) == "ok1" and futures[2].result(5) == "ok2"
    with pytest.raises(ValueError, match="bad input"):
        futures[1].result(5)
    worker.stop()


def test_full_queue_cancelled_jobs_and_stop():
    calls: list[str] = []
    worker, gate = _worker(lambda r, jobs: [calls.append(j.payload) for j in jobs], queue_size=2)
    running = worker.submit(Job("running"))
    time.sleep(0.1)
    cancelled = worker.submit(Job("cancelled"))
    waiting = worker.submit(Job("waiting"))
    with pytest.raises(QueueFullError):
        worker.submit(Job("refused"))
    assert cancelled.cancel()
    gate.set()
    running.result(5)
    waiting.result(5)
    assert calls == ["running", "waiting"]
    worker.stop()
    with pytest.raises(WorkerStoppedError):
        worker.submit(Job("late"))


def test_load_failure_is_reported():
    def broken():
        raise OSError("checkpoint missing")

    worker = ModelWorker(broken, lambda r, jobs: [])
    worker.start()
    with pytest.raises(WorkerStoppedError, match="checkpoint missing"):
        worker.wait_ready(5)
    assert worker.status == "failed"
