"""One model worker thread behind a bounded queue, with dynamic batching.

The model is built and used on this one thread only: no lock around it is needed and
nothing else ever touches it. Requests are ``Job``s queued with ``submit`` (which refuses
when the queue is full, the caller answers 503). The worker takes the oldest job and,
while more are already waiting, adds jobs of the same ``batch_key`` (up to
``max_batch``), never two jobs with the same ``exclusive_key`` (two turns of one
conversation must run in order). A job whose future was cancelled (its request timed
out) before it started is skipped.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The worker's queue is full: try again later."""


class WorkerStoppedError(RuntimeError):
    """The worker is not running (shut down, or its model failed to load)."""


@dataclass
class Job:
    """A unit of model work; the worker sets ``future``'s result or exception.

    Attributes:
        payload: what the runner needs.
        batch_key: jobs with the same non-``None`` key may run in one batch.
        exclusive_key: at most one job with a given non-``None`` key per batch.
    """

    payload: Any
    batch_key: Hashable | None = None
    exclusive_key: Hashable | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    finished_at: float | None = None


_STOP = object()


class ModelWorker(Generic[T]):
    """Builds a resource (the predictor) on its own thread and runs jobs on it.

    Args:
        factory: builds the resource, called once on the worker thread.
        runner: ``runner(resource, jobs) -> results`` (one per job, in order); an
            exception fails the batch, which is then retried job by job so that one bad
            request does not fail the others.
        queue_size: jobs that may wait.
        max_batch: jobs per runner call.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        runner: Callable[[T, list[Job]], list[Any]],
        queue_size: int = 32,
        max_batch: int = 1,
        name: str = "medisee-model",
    ) -> None:
        self._factory = factory
        self._runner = runner
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._pending: collections.deque[Job] = collections.deque()
        self.queue_size = queue_size
        self.max_batch = max(1, max_batch)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._load_error: BaseException | None = None
        self._resource: T | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> T:
        """Block until the resource is built; re-raise its loading error."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the model did not load within {timeout} s")
        if self._load_error is not None:
            raise WorkerStoppedError(f"the model failed to load: {self._load_error}") from (
                self._load_error
            )
        assert self._resource is not None
        return self._resource

    @property
    def resource(self) -> T | None:
        """The built resource (``None`` until loaded). Only the worker may run it."""
        return self._resource

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    @property
    def status(self) -> str:
        """``loading``, ``ok`` or ``failed`` (the model could not be built)."""
        if not self._ready.is_set():
            return "loading"
        return "failed" if self._load_error is not None else "ok"

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet started)."""
        return self._queue.qsize() + len(self._pending)

    def submit(self, job: Job) -> Future:
        if self._stopping.is_set() or self._load_error is not None:
            raise WorkerStoppedError("the model worker is not running")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(
                f"the queue is full ({self.queue_size} requests waiting)"
            ) from None
        return job.future

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the running batch, fail the waiting jobs, end the thread."""
        self._stopping.set()
        while True:  # make room for the stop marker: waiting jobs are failed anyway
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                try:
                    self._fail(self._queue.get_nowait(), WorkerStoppedError("server shutting down"))
                except queue.Empty:
                    pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------- thread
    def _main(self) -> None:
        try:
            self._resource = self._factory()
        except BaseException as error:  # reported by wait_ready / healthz
            logger.exception("model worker: loading failed")
            self._load_error = error
            self._ready.set()
            return
        self._ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            if batch:
                self._run(batch)
        for job in list(self._pending):
            self._fail(job, WorkerStoppedError("server shutting down"))
        while True:
            try:
                self._fail(self._queue.get_nowait(), WorkerStoppedError("server shutting down"))
            except queue.Empty:
                break

    def _take(self, block: bool) -> Any:
        if self._pending:
            return self._pending.popleft()
        return self._queue.get() if block else self._queue.get_nowait()

    def _next_batch(self) -> list[Job] | None:
        first = self._take(block=True)
        if first is _STOP:
            return None
        if not first.future.set_running_or_notify_cancel():
            return []  # cancelled while waiting (the request timed out)
        batch = [first]
        if first.batch_key is None or self.max_batch == 1:
            return batch
        exclusive = {first.exclusive_key} - {None}
        deferred: list[Any] = []
        # Look at what is waiting right now (pending first: it is older), no waiting.
        candidates = list(self._pending)
        self._pending.clear()
        while len(candidates) < 2 * self.max_batch:
            try:
                candidates.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for job in candidates:
            fits = (
                job is not _STOP
                and len(batch) < self.max_batch
                and job.batch_key == first.batch_key
                and (job.exclusive_key is None or job.exclusive_key not in exclusive)
            )
            if not fits:
                deferred.append(job)
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            batch.append(job)
            if job.exclusive_key is not None:
                exclusive.add(job.exclusive_key)
        self._pending.extend(deferred)
        return batch

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started_at = start
        assert self._resource is not None
        try:
            results = self._runner(self._resource, batch)
        except Exception as error:
            if len(batch) == 1:
                self._finish(batch[0], error=error)
                return
            logger.warning("batch of %d failed (%s); retrying one by one", len(batch), error)
            for job in batch:
                try:
                    self._finish(job, result=self._runner(self._resource, [job])[0])
                except Exception as single_error:
                    self._finish(job, error=single_error)
            return
        for job, result in zip(batch, results):
            self._finish(job, result=result)

    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        job.finished_at = time.perf_counter()
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    @staticmethod
    def _fail(job: Any, error: BaseException) -> None:
        if job is _STOP:
            return
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(error)
