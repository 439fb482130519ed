"""A real uvicorn server on 127.0.0.1: concurrent clients, bad uploads among them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import httpx
import numpy as np
from PIL import Image

from medisee.serve.app import create_app
from medisee.serve.settings import ServeSettings
from tests.inference.helpers import png_bytes, sample_image
from tests.serve.conftest import live_server

N_UPLOADS = 40
N_FOLLOW_UPS = 10


def _mask_shape(body: dict) -> tuple[int, int]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"])))).shape


async def _upload(client: httpx.AsyncClient, data: bytes, question: str, **fields):
    return await client.post(
        "/v1/predict",
        files={"image": ("x.png", data, "image/png")},
        data={"question": question, **fields},
    )


async def _scenario(base_url: str) -> None:
    limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        # Sessions to follow up on, opened first.
        opened = []
        for i in range(N_FOLLOW_UPS):
            response = await _upload(
                client, png_bytes(sample_image(20 + i, 30, seed=100 + i)), "Q?"
            )
            assert response.status_code == 200, response.text
            opened.append(response.json())

        uploads = []
        for i in range(N_UPLOADS):
            height, width = 24 + i, 40 + (7 * i) % 53  # every image its own size
            uploads.append((png_bytes(sample_image(height, width, seed=i)), (height, width)))
        good = [
            _upload(client, data, f"Question number {i}: which organ is it?")
            for i, (data, _) in enumerate(uploads)
        ] + [
            client.post(
                "/v1/predict",
                json={"question": f"Follow-up number {i}?", "session_id": s["session_id"]},
            )
            for i, s in enumerate(opened)
        ]
        bad = [
            _upload(client, b"\0" * 300_000, "Too big?"),
            _upload(client, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 40, "Corrupt?"),
            _upload(client, b"%PDF-1.4 not an image " * 30, "Not an image?"),
            _upload(client, png_bytes(sample_image(10, 10)), "  "),
            client.post("/v1/predict", json={"question": "Who?", "session_id": "unknown"}),
        ]
        responses = await asyncio.gather(*good, *bad)
        good_responses, bad_responses = responses[: len(good)], responses[len(good) :]

        session_ids = set()
        for i, response in enumerate(good_responses[:N_UPLOADS]):
            assert response.status_code == 200, response.text
            body = response.json()
            data, (height, width) = uploads[i]
            # The answer is this request's: its question, its image bytes, its size.
            assert body["text"].startswith(f"Echo: Question number {i}: which organ is it?")
            assert body["image"]["sha256"] == hashlib.sha256(data).hexdigest()
            assert (body["image"]["height"], body["image"]["width"]) == (height, width)
            assert _mask_shape(body) == (height, width)
            x0, y0, x1, y1 = body["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
            assert body["turn"] == 1
            session_ids.add(body["session_id"])
        assert len(session_ids) == N_UPLOADS
        for i, response in enumerate(good_responses[N_UPLOADS:]):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["session_id"] == opened[i]["session_id"] and body["turn"] == 2
            assert body["text"].startswith(f"Echo: Follow-up number {i}?")
            assert _mask_shape(body) == (20 + i, 30)

        assert [r.status_code for r in bad_responses] == [413, 400, 415, 422, 404]
        for response in bad_responses:
            assert response.json()["detail"]

        # Still serving, queue drained.
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["queue_depth"] == 0
        last = await _upload(client, png_bytes(sample_image(33, 44, seed=999)), "Still there?")
        assert last.status_code == 200 and last.json()["text"].startswith("Echo: Still there?")


def test_fifty_concurrent_requests_none_lost_or_mixed_up(echo, monkeypatch):
    batch_sizes: list[int] = []
    run = echo.run
    monkeypatch.setattr(
        echo,
        "run",
        lambda requests, options=None: batch_sizes.append(len(requests)) or run(requests, options),
    )
    settings = ServeSettings(
        max_upload_bytes=200_000, queue_size=128, max_batch_size=4, max_new_tokens=8
    )
    with live_server(create_app(echo, settings)) as base_url:
        asyncio.run(_scenario(base_url))
    assert sum(batch_sizes) == N_FOLLOW_UPS + N_UPLOADS + N_FOLLOW_UPS + 1
    assert max(batch_sizes) > 1  # queued requests were answered in shared batches
