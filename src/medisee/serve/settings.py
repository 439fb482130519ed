"""Limits and switches of the server, in one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServeSettings:
    """Server limits. Defaults suit one CPU model worker serving a few people.

    Attributes:
        max_upload_bytes: largest request body (the upload plus form/JSON overhead;
            base64 JSON bodies are ~4/3 of the file). Larger -> 413.
        max_pixels: largest decoded 2-D image (``W * H``; ``frames * W * H`` for DICOM).
        max_voxels: largest volume, a NIfTI file or a zipped DICOM series (it is read whole
            to choose a slice).
        max_series_files: most files in a zipped DICOM series (one per slice).
        max_question_chars: longest question.
        request_timeout_s: queue wait + model time allowed per request -> 504 after.
        queue_size: requests waiting for the model worker; more -> 503 with a
            ``Retry-After: <retry_after_s>`` header.
        max_batch_size: queued requests the worker may answer in one generation batch.
        session_ttl_s: a conversation idle this long is forgotten (-> 410).
        max_sessions: most conversations kept (each holds an image embedding, ~4 MB for
            LiteMedSAM); the least recently used is dropped first.
        max_new_tokens: default answer length; ``max_new_tokens_limit`` the most a
            request may ask for.
        api_key: if set, ``/v1/*`` needs ``X-API-Key: <key>`` or ``Authorization:
            Bearer <key>`` (the page and ``/healthz`` stay open).
        enable_docs: serve Swagger UI at ``/docs`` (it loads its JS from a CDN, so it is
            off by default; ``/openapi.json`` is always served).
        knowledge: answer a follow-up with no new target from the pretrained LM's own
            knowledge, where the model has one (see ``medisee.inference.knowledge``).
    """

    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    max_voxels: int = 100_000_000
    max_series_files: int = 2000
    max_question_chars: int = 2000
    request_timeout_s: float = 120.0
    queue_size: int = 32
    retry_after_s: int = 1
    max_batch_size: int = 4
    session_ttl_s: float = 1800.0
    max_sessions: int = 64
    max_new_tokens: int = 64
    max_new_tokens_limit: int = 256
    api_key: str | None = field(default=None, repr=False)
    enable_docs: bool = False
    knowledge: bool = True

    def __post_init__(self) -> None:
        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_voxels": self.max_voxels,
            "max_series_files": self.max_series_files,
            "max_question_chars": self.max_question_chars,
            "request_timeout_s": self.request_timeout_s,
            "queue_size": self.queue_size,
            "retry_after_s": self.retry_after_s,
            "max_batch_size": self.max_batch_size,
            "session_ttl_s": self.session_ttl_s,
            "max_sessions": self.max_sessions,
            "max_new_tokens": self.max_new_tokens,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"ServeSettings.{name} must be > 0, got {value}")
        if self.max_new_tokens_limit < self.max_new_tokens:
            raise ValueError(
                f"ServeSettings.max_new_tokens_limit ({self.max_new_tokens_limit}) must be >= "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServeSettings.api_key must not be empty (use None for no key)")
