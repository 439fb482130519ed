"""The REST API and web page (FastAPI), built by ``create_app``; nothing runs at import.

Endpoints:

* ``POST /v1/predict``: multipart (``image`` file + form fields) or JSON
  (``image_base64`` + fields). With an image it starts a conversation; with
  ``session_id`` it continues one (the image embedding is reused). Returns the
  explanation, the box (pixels, original frame), the mask (PNG base64 or RLE), scores,
  the session id and turn number.
* ``DELETE /v1/sessions/{id}``: forget a conversation.
* ``GET /healthz``: liveness and queue depth. ``GET /``: the web page.
  ``GET /openapi.json``: the schema.

Model work runs on one worker thread (``worker.ModelWorker``) behind a bounded queue:
a full queue answers 503 and a request waiting longer than ``request_timeout_s``
answers 504. Decoding uploads runs in the thread pool, never on the model thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import tempfile
import time
import unicodedata
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from medisee.serve.sessions import Session, SessionStore, new_session_id
from medisee.serve.settings import ServeSettings
from medisee.serve.worker import Job, ModelWorker, QueueFullError, WorkerStoppedError

logger = logging.getLogger(__name__)

MEDIA_HINT = "PNG/JPEG/TIFF/BMP, DICOM, NIfTI or a zip of one DICOM series"


# --------------------------------------------------------------------------- schemas
class PredictParams(BaseModel):
    """Fields of ``POST /v1/predict`` (form fields, or JSON keys)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        description="the question; may be implicit ('which organ filters blood?')"
    )
    session_id: str | None = Field(None, description="continue this conversation (no image)")
    image_base64: str | None = Field(
        None, description="JSON only: the image file, base64 (a data: URL prefix is accepted)"
    )
    filename: str | None = Field(None, description="JSON only: the file's name (a format hint)")
    mask_format: Literal["png", "rle", "none"] = Field(
        "png", description="png: base64 PNG (0/255); rle: uncompressed COCO RLE; none"
    )
    include_image: bool = Field(
        False, description="also return the decoded display image as base64 PNG"
    )
    max_new_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, description="makes sampling reproducible")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    window: str | None = Field(
        None,
        description="CT/MR window: preset (lung, abdomen...), composite "
        "(lung_mediastinum_bone), 'CENTER,WIDTH', auto (a CT: the model's display), stretch",
    )
    axis: Literal["axial", "coronal", "sagittal"] = Field("axial", description="NIfTI axis")
    slice_index: int | None = Field(None, ge=0, description="NIfTI slice (default: middle)")
    frame: int = Field(0, ge=0, description="frame of a multi-frame DICOM")
    modality: str | None = Field(None, description="override the file's modality (e.g. CT)")


class MaskPayload(BaseModel):
    format: Literal["png", "rle"]
    data: str | None = Field(None, description="png: base64 PNG, H x W, 255 = target")
    size: list[int] | None = Field(None, description="rle: [H, W]")
    counts: list[int] | None = Field(None, description="rle: column-major runs, zeros first")


class ImageInfo(BaseModel):
    sha256: str = Field(description="of the uploaded bytes")
    filename: str | None = None
    format: str
    height: int
    width: int
    modality: str | None = None
    window: list[float] | None = None
    axis: str | None = None
    slice_index: int | None = None
    frame: int | None = Field(None, description="the frame shown, for a multi-frame DICOM")


class Timing(BaseModel):
    queue_ms: float
    model_ms: float
    total_ms: float


class PredictResponse(BaseModel):
    session_id: str = Field(description="send it back with the next question")
    turn: int = Field(description="1 for the first question about the image")
    question: str
    text: str = Field(description="the explanation")
    found_target: bool
    box: list[float] | None = Field(
        None, description="[x0, y0, x1, y1] pixel edges in the original image; null = none"
    )
    box_normalized: list[float] | None = Field(None, description="[cx, cy, w, h] / [W, H, W, H]")
    image: ImageInfo
    mask: MaskPayload | None = None
    scores: dict[str, Any]
    image_png: str | None = Field(None, description="with include_image: display image, base64")
    timing: Timing


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok", "loading", "failed"]
    queue_depth: int
    queue_capacity: int
    sessions: int
    max_sessions: int


def _request_body_schema() -> dict[str, Any]:
    json_schema = PredictParams.model_json_schema()
    form_properties = {
        key: value
        for key, value in json_schema["properties"].items()
        if key not in ("image_base64", "filename")
    }
    form_properties["image"] = {
        "type": "string",
        "format": "binary",
        "description": f"the image file ({MEDIA_HINT}); omit to continue a session",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": form_properties,
                        "required": ["question"],
                    }
                },
                "application/json": {"schema": json_schema},
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "unreadable image or body",
        401: "missing or wrong API key",
        404: "unknown session",
        410: "session evicted (store full) or expired (idle)",
        413: "upload or image too large",
        415: "not an image / unsupported content type",
        422: "invalid fields (empty question, image and session together...)",
        503: "queue full, retry later",
        504: "timed out",
    }.items()
}


# --------------------------------------------------------------------- size limit
class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413, by ``Content-Length`` or counted.

    The rest of an oversized body is read and dropped (up to ``drain_bytes``) before
    answering, so that clients still sending see the 413 instead of a reset connection.
    """

    def __init__(self, app: Any, max_bytes: int, drain_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes if drain_bytes is not None else 4 * max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            await self._reject(receive, send, declared, 0)
            return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reject(receive, send, declared, received)

    async def _reject(self, receive: Any, send: Any, declared: int | None, seen: int) -> None:
        if declared is None or declared <= self.drain_bytes:
            more = True
            while more and seen <= self.drain_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    break
                seen += len(message.get("body", b""))
                more = message.get("more_body", False)
        size = f"{declared} bytes" if declared is not None else "more than that"
        body = json.dumps(
            {"detail": f"request too large: the limit is {self.max_bytes} bytes, got {size}"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------ the jobs
@dataclass
class _ServeJob:
    session: Session
    question: str
    options: Any  # GenerationOptions


@dataclass
class _ServeResult:
    prediction: Any  # Prediction
    turn: int


def _run_jobs(predictor: Any, jobs: list[Job], knowledge: bool = True) -> list[_ServeResult]:
    """Worker side: one generation batch; each session's history grows by its turn. With
    ``knowledge``, a turn with no target is answered from the pretrained LM's knowledge
    where the model has one (``medisee.inference.knowledge``), as in ``medisee chat``."""
    from medisee.inference.knowledge import answer_follow_up, model_turn
    from medisee.inference.predictor import PredictRequest

    payloads: list[_ServeJob] = [job.payload for job in jobs]
    for payload in payloads:
        session = payload.session
        if session.state is None:
            # Resizing runs torch ops: here, not in the request threads, so that only this
            # thread ever runs torch (many threads each with an OpenMP team starve the
            # model on a small CPU).
            session.state = predictor.prepare(session.image, name=session.image_info["filename"])
    requests = [
        PredictRequest(
            p.session.state, *model_turn(p.question, p.session.history, p.session.subject)
        )
        for p in payloads
    ]
    predictions = predictor.run(requests, payloads[0].options)
    results = []
    model = getattr(predictor, "model", None)
    for payload, prediction in zip(payloads, predictions):
        session = payload.session
        prediction = dataclasses.replace(prediction, question=payload.question.strip())
        if model is not None:
            prediction, session.subject = answer_follow_up(
                model, prediction, session.subject, enabled=knowledge
            )
        session.history.append((prediction.question, prediction.raw_text))
        results.append(_ServeResult(prediction, session.turns))
    return results


def _predictor_factory(predictor: Any, device: str, settings: ServeSettings) -> Callable[[], Any]:
    if isinstance(predictor, (str, os.PathLike)):
        path = Path(predictor)

        def load() -> Any:
            from medisee.inference.predictor import GenerationOptions, Predictor

            options = GenerationOptions(max_new_tokens=settings.max_new_tokens)
            return Predictor.from_pretrained(path, device=device, generation=options)

        return load
    if hasattr(predictor, "run") and hasattr(predictor, "prepare"):
        return lambda: predictor
    if callable(predictor):
        return predictor
    raise TypeError("create_app needs a Predictor, a factory returning one, or a model path")


# -------------------------------------------------------------------------- uploads
def _unzip_series(archive_path: Path, folder: Path, settings: ServeSettings) -> Path:
    """The files of an uploaded zip (a DICOM series) written into ``folder`` under names of
    our own (never the archive's, so no path leaves ``folder``), copied in chunks while the
    volume's budget lasts (``max_voxels`` at 2 bytes, plus 4 kB of header a file): a
    member that claims less than it holds cannot grow past it."""
    import zipfile
    import zlib

    budget = 2 * settings.max_voxels + 4096 * settings.max_series_files
    too_large = HTTPException(
        413, f"the zip's files are larger than a volume of {settings.max_voxels} voxels"
    )
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            if len(members) > settings.max_series_files:
                raise HTTPException(
                    413,
                    f"the zip holds {len(members)} files, the limit is "
                    f"{settings.max_series_files} (one DICOM file per slice)",
                )
            if not members:
                raise HTTPException(400, "the zip is empty: send the files of one DICOM series")
            if sum(member.file_size for member in members) > budget:
                raise too_large
            folder.mkdir()
            for number, member in enumerate(members):
                with archive.open(member) as source, open(folder / f"{number:05d}", "wb") as out:
                    while chunk := source.read(2**20):
                        budget -= len(chunk)
                        if budget < 0:
                            raise too_large
                        out.write(chunk)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted member
        OSError,
        EOFError,
        zlib.error,
    ) as error:
        raise HTTPException(400, f"cannot read the zip: {error}") from None
    return folder


def _decode_upload(
    data: bytes,
    filename: str | None,
    params: PredictParams,
    settings: ServeSettings,
    ct_window: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Bytes -> ``MedicalImage`` and the echoed image info (thread pool; numpy/Pillow/
    pydicom/nibabel only, no torch). ``ct_window``: the model's display for an ``"auto"``
    CT (``ReadOptions.ct_window``)."""
    from PIL import Image

    from medisee.data.dicom_series import DicomSeriesError
    from medisee.data.io import BlankImageError, ImageReadError, ImageTooLargeError, parse_window
    from medisee.inference.inputs import ReadOptions, load_image, probe_pixel_count, sniff_suffix

    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    suffix = sniff_suffix(data[:1024])
    if suffix is None and filename:
        lowered = filename.lower()
        hints = (".nii.gz", ".nii", ".dcm", ".dicom")
        suffix = next((h for h in hints if lowered.endswith(h)), None)
    if suffix is None:
        try:  # any other format Pillow knows (GIF, WebP...)
            import io

            with Image.open(io.BytesIO(data)):
                suffix = ".img-raster"
        except Exception:
            raise HTTPException(
                415, f"the upload is not an image this server reads ({MEDIA_HINT})"
            ) from None
    try:
        window = parse_window(params.window) if params.window else "auto"
        options = ReadOptions(
            window=window,
            axis=params.axis,
            index=params.slice_index,
            frame=params.frame,
            modality=params.modality,
            ct_window=ct_window,
        )
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    shown = repr(filename) if filename else "the upload"
    with tempfile.TemporaryDirectory(prefix="medisee-upload-") as folder:
        path = Path(folder) / f"upload{suffix if suffix != '.img-raster' else ''}"
        path.write_bytes(data)
        if suffix == ".zip":  # a DICOM series: its files, flat, in a directory of their own
            # (named so that hiding it below cannot touch a word such as "series")
            path = _unzip_series(path, Path(folder) / "upload-series", settings)

        def public(error: Exception | str) -> str:
            # The readers name the file they read: here a temporary file, which is no
            # business of the client's. Name the upload instead.
            text = str(error)
            for private in (str(path), folder, path.name):
                text = text.replace(private, shown)
            return text

        def unreadable(error: ImageReadError) -> HTTPException:
            if isinstance(error, DicomSeriesError):
                # Its remedy names command-line flags; a client can only send another zip.
                what = f"{public(error.problem)}; zip the files of one series"
            else:
                what = public(error)
            return HTTPException(400, f"cannot read the upload as an image: {what}")

        try:
            pixels = probe_pixel_count(path)
        except ImageReadError as error:
            raise unreadable(error) from None
        volume = suffix in (".nii", ".nii.gz", ".zip")
        limit = settings.max_voxels if volume else settings.max_pixels
        if pixels > limit:
            unit = "voxels" if volume else "pixels"
            raise HTTPException(413, f"image too large: {pixels} {unit}, the limit is {limit}")
        try:
            image = load_image(path, options)
        except ImageTooLargeError as error:
            raise HTTPException(413, public(error)) from None
        except BlankImageError as error:
            raise HTTPException(422, f"nothing to segment: {public(error)}") from None
        except ImageReadError as error:
            raise unreadable(error) from None
        except ValueError as error:  # frame/slice out of range, window='header' without one
            raise HTTPException(422, public(error)) from None
    meta = image.meta
    height, width = image.height, image.width
    info = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "filename": filename or "upload",
        "format": meta.format,
        "height": height,
        "width": width,
        "modality": meta.modality,
        # One (center, width), or a composite's three, red to blue.
        "window": list(meta.window) if meta.window else meta.extra.get("windows"),
        "axis": meta.axis,
        "slice_index": meta.index if meta.format == "nifti" else None,
        "frame": meta.index if meta.format == "dicom" else None,
    }
    return image, info


async def _parse_request(
    request: Request,
) -> tuple[PredictParams, bytes | None, str | None]:
    """Multipart or JSON -> (params, image bytes or None, filename)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    data: bytes | None = None
    filename: str | None = None
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        try:
            for key, value in form.multi_items():
                if key == "image":
                    if not isinstance(value, UploadFile):
                        raise HTTPException(422, "image must be a file part (multipart upload)")
                    content = await value.read()
                    # Browsers send an empty part when no file was chosen: no image.
                    if content or value.filename:
                        data, filename = content, value.filename or None
                elif isinstance(value, UploadFile):
                    raise HTTPException(422, f"unexpected file field {key!r}")
                elif key in fields:
                    raise HTTPException(422, f"field {key!r} given twice")
                else:
                    fields[key] = value
        finally:
            await form.close()
        for key in ("image_base64", "filename"):
            if key in fields:
                raise HTTPException(422, f"{key} is for JSON requests; upload the file as 'image'")
    elif content_type == "application/json":
        try:
            fields = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HTTPException(400, f"invalid JSON body: {error}") from None
        if not isinstance(fields, dict):
            raise HTTPException(422, "the JSON body must be an object")
    else:
        raise HTTPException(
            415, "send multipart/form-data (file field 'image') or application/json"
        )
    try:
        params = PredictParams.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
        raise HTTPException(422, problems) from None
    if params.image_base64 is not None:
        encoded = params.image_base64.strip()
        if encoded.startswith("data:"):
            encoded = encoded.partition(",")[2]
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "image_base64 is not valid base64") from None
        filename = params.filename
    return params, data, filename


def _response_body(
    result: _ServeResult,
    session: Session,
    params: PredictParams,
    job: Job,
    received_at: float,
) -> dict[str, Any]:
    from medisee.inference.outputs import encode_rle, image_to_png_bytes, mask_to_png_bytes

    prediction = result.prediction
    mask: dict[str, Any] | None = None
    if params.mask_format == "png":
        encoded = base64.b64encode(mask_to_png_bytes(prediction.mask)).decode("ascii")
        mask = {"format": "png", "data": encoded}
    elif params.mask_format == "rle":
        mask = {"format": "rle", **encode_rle(prediction.mask)}
    image_png = None
    if params.include_image:
        image_png = base64.b64encode(image_to_png_bytes(session.image.pixels)).decode()
    started = job.started_at or job.queued_at
    finished = job.finished_at or time.perf_counter()
    return {
        "session_id": session.id,
        "turn": result.turn,
        "question": prediction.question,
        "text": prediction.text,
        "found_target": prediction.found_target,
        "box": None if prediction.box is None else [round(v, 3) for v in prediction.box],
        "box_normalized": None
        if prediction.box_normalized is None
        else [round(v, 6) for v in prediction.box_normalized],
        "image": session.image_info,
        "mask": mask,
        "scores": prediction.scores,
        "image_png": image_png,
        "timing": {
            "queue_ms": round(1000 * (started - job.queued_at), 2),
            "model_ms": round(1000 * (finished - started), 2),
            "total_ms": round(1000 * (time.perf_counter() - received_at), 2),
        },
    }


def _is_control(character: str) -> bool:
    """C0/C1 control characters other than tab and newlines (a NUL in a question is a
    client's bug, and tokenizers treat such bytes unpredictably)."""
    return unicodedata.category(character) == "Cc" and character not in "\t\n\r"


def _reserved_tokens(predictor: Any) -> list[str]:
    """The tokenizer's special-token strings (``<image>``, the candidate tokens, ``</s>``...).

    A question holding one literally would be encoded as that token: an extra image
    position or a stray candidate breaks the prompt (the model refuses it), the others are
    silently dropped. Empty for a predictor without a tokenizer (test doubles).
    """
    tokenizer = getattr(getattr(predictor, "model", None), "tokenizer", None)
    if tokenizer is None:
        return []
    tokens = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens |= {t.content for t in decoder.values() if getattr(t, "special", False)}
    return sorted((t for t in tokens if t), key=len, reverse=True)


def _session_missing(sessions: SessionStore, session_id: str, settings: ServeSettings):
    """410 for a session this server dropped (and why), 404 for one it does not know."""
    reason = sessions.gone(session_id)
    if reason == "evicted":
        return HTTPException(
            410,
            f"session_id evicted: the server keeps the {settings.max_sessions} most recently "
            "used conversations; upload the image again",
        )
    if reason == "expired":
        return HTTPException(
            410,
            f"session_id expired after {settings.session_ttl_s:g} s idle; upload the image again",
        )
    return HTTPException(404, "unknown or expired session_id: upload the image again")


# ------------------------------------------------------------------------------ app
def create_app(
    predictor: Any,
    settings: ServeSettings | None = None,
    *,
    device: str = "cpu",
) -> FastAPI:
    """Build the app; the model is loaded when the server starts (lifespan), not here.

    Args:
        predictor: a ``Predictor``, a zero-argument factory returning one (called on the
            model worker thread), or the path of a ``save_pretrained`` checkpoint.
        settings: limits (``ServeSettings()`` by default).
        device: torch device when ``predictor`` is a path.
    """
    from medisee.inference.predictor import GenerationOptions, PromptTooLongError
    from medisee.serve.webpage import INDEX_HTML, PAGE_HEADERS

    settings = settings or ServeSettings()
    factory = _predictor_factory(predictor, device, settings)
    sessions = SessionStore(settings.max_sessions, settings.session_ttl_s)
    holder: dict[str, ModelWorker] = {}
    reserved: list[str] = []  # the model's special-token strings, known once it is loaded
    displays: dict[str, str | None] = {"ct_window": None}  # the model's CT display, likewise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = ModelWorker(
            factory,
            functools.partial(_run_jobs, knowledge=settings.knowledge),
            queue_size=settings.queue_size,
            max_batch=settings.max_batch_size,
        )
        worker.start()
        holder["worker"] = worker
        await run_in_threadpool(worker.wait_ready)
        reserved.extend(_reserved_tokens(worker.resource))
        config = getattr(getattr(worker.resource, "model", None), "config", None)
        displays["ct_window"] = getattr(config, "ct_window", None)
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(
        title="medisee",
        version=_version(),
        description="Medical reasoning segmentation and detection: mask, box and "
        "explanation for an image and an implicit question, with follow-up questions.",
        lifespan=lifespan,
        docs_url="/docs" if settings.enable_docs else None,
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.state.settings = settings
    app.state.sessions = sessions

    retry_after = {"Retry-After": str(settings.retry_after_s)}

    def worker() -> ModelWorker:
        found = holder.get("worker")
        if found is None or not found.ready:
            raise HTTPException(503, "the model is not loaded yet", retry_after)
        return found

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if given is None and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send it as the X-API-Key header",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML, headers=PAGE_HEADERS)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, Any]:
        found = holder.get("worker")
        return {
            "status": found.status if found is not None else "loading",
            "queue_depth": found.depth if found else 0,
            "queue_capacity": settings.queue_size,
            "sessions": len(sessions),
            "max_sessions": settings.max_sessions,
        }

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_request_body_schema(),
        dependencies=[Depends(require_key)],
    )
    async def predict(request: Request) -> dict[str, Any]:
        """Answer a question about an uploaded image, or continue a conversation."""
        received_at = time.perf_counter()
        model_worker = worker()
        params, data, filename = await _parse_request(request)
        question = params.question.strip()
        if not question:
            raise HTTPException(422, "the question is empty")
        token = next((t for t in reserved if t in question), None)
        if token is not None:
            raise HTTPException(
                422, f"the question contains {token!r}, a token the model reserves for its prompt"
            )
        control = next((c for c in question if _is_control(c)), None)
        if control is not None:
            raise HTTPException(
                422, f"the question contains the control character U+{ord(control):04X}"
            )
        if len(question) > settings.max_question_chars:
            raise HTTPException(
                422, f"the question is longer than {settings.max_question_chars} characters"
            )
        max_new_tokens = params.max_new_tokens or settings.max_new_tokens
        if max_new_tokens > settings.max_new_tokens_limit:
            raise HTTPException(422, f"max_new_tokens must be <= {settings.max_new_tokens_limit}")
        if data is not None and params.session_id:
            raise HTTPException(
                422, "give an image to start a conversation or a session_id to continue one"
            )
        if data is None:
            if not params.session_id:
                raise HTTPException(
                    422, f"no image: upload one ({MEDIA_HINT}) or give a session_id"
                )
            session = sessions.get(params.session_id)
            if session is None:
                raise _session_missing(sessions, params.session_id, settings)
            is_new = False
        else:
            image, info = await run_in_threadpool(
                _decode_upload, data, filename, params, settings, displays["ct_window"]
            )
            session = Session(new_session_id(), image, info)
            is_new = True
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            do_sample=params.do_sample,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
        )
        # Sampled requests with their own seed run alone: a shared batch would share the RNG.
        batch_key = None if (options.do_sample and options.seed is not None) else options
        job = Job(
            _ServeJob(session, question, options),
            batch_key=batch_key,
            exclusive_key=session.id,
        )
        try:
            future = model_worker.submit(job)
        except QueueFullError as error:
            raise HTTPException(503, f"busy: {error}; retry later", retry_after) from None
        except WorkerStoppedError as error:
            raise HTTPException(503, str(error)) from None
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise HTTPException(
                504, f"timed out after {settings.request_timeout_s} s (queue wait + model)"
            ) from None
        except PromptTooLongError as error:
            raise HTTPException(422, str(error)) from None
        except WorkerStoppedError as error:
            raise HTTPException(503, str(error)) from None
        except Exception as error:
            logger.exception("prediction failed")
            raise HTTPException(
                500, f"prediction failed: {type(error).__name__}: {error}"
            ) from None
        if is_new:
            sessions.add(session)
        return await run_in_threadpool(_response_body, result, session, params, job, received_at)

    @app.delete(
        "/v1/sessions/{session_id}",
        status_code=204,
        responses={404: _ERRORS[404], 410: _ERRORS[410], 401: _ERRORS[401]},
        dependencies=[Depends(require_key)],
    )
    async def delete_session(session_id: str) -> Response:
        """Forget a conversation (its image and embedding)."""
        if not sessions.remove(session_id):
            raise _session_missing(sessions, session_id, settings)
        return Response(status_code=204)

    return app


def _version() -> str:
    from medisee import __version__

    return __version__
