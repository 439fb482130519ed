"""Conversation sessions: an image (with its cached embedding) and the turns so far.

Bounded in count (least recently used dropped first) and in idle time. The store is used
from the event loop and the worker thread, hence the lock; a session's ``history`` is
only changed by the model worker, one turn at a time (see ``worker.Job.exclusive_key``).

The ids of dropped sessions are remembered (a bounded number of them, ids only), so that
a client asking about one learns why it is gone rather than "unknown".
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Session:
    """One conversation about one image.

    Attributes:
        id: unguessable token (the session is the only access control between users of a
            shared API key).
        image: the decoded ``MedicalImage`` (original frame, what overlays are drawn on).
        image_info: what the client sent (sha256, filename, format, size), echoed back.
        state: the predictor's ``ImageState`` (model input, cached embedding); made by
            the model worker on the first turn (torch work stays on that one thread).
        history: ``(question, raw answer)`` turns.
        subject: the structure the last turn with a target named (what "it" means in a
            follow-up answered from the LM's knowledge), or ``None``.
    """

    id: str
    image: Any
    image_info: dict[str, Any]
    state: Any = None
    history: list[tuple[str, str]] = field(default_factory=list)
    subject: str | None = None
    last_used: float = 0.0

    @property
    def turns(self) -> int:
        return len(self.history)


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


class SessionStore:
    """``id -> Session`` with a size bound and an idle timeout.

    ``gone(id)`` says why a dropped session went (``"evicted"``: the store was full;
    ``"expired"``: idle too long); the last ``remember`` dropped ids are kept for that.
    """

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 4096,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()

    def _drop_oldest(self, reason: str) -> None:
        session_id, _ = self._sessions.popitem(last=False)
        self._gone[session_id] = reason
        while len(self._gone) > self._remember:
            self._gone.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self.ttl_s:
                break
            self._drop_oldest("expired")

    def add(self, session: Session) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            session.last_used = now
            self._sessions[session.id] = session
            self._sessions.move_to_end(session.id)
            while len(self._sessions) > self.max_sessions:
                self._drop_oldest("evicted")

    def get(self, session_id: str) -> Session | None:
        """The live session (its idle clock restarted), or ``None`` if unknown/expired."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_used = now
                self._sessions.move_to_end(session_id)
            return session

    def gone(self, session_id: str) -> str | None:
        """``"evicted"`` or ``"expired"`` for a session this store dropped, else ``None``
        (never seen, deleted by its client, or dropped too long ago to be remembered)."""
        with self._lock:
            self._expire(self._clock())
            return self._gone.get(session_id)

    def remove(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)
