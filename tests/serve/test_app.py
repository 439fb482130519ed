"""The API in process (FastAPI TestClient): contract, sessions, errors, limits, key."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medisee.inference.outputs import decode_rle
from medisee.serve.app import create_app
from medisee.serve.sessions import Session, SessionStore
from medisee.serve.settings import ServeSettings
from tests.inference.helpers import echo_predictor, png_bytes, sample_image, write_ct_dicom


@pytest.fixture(scope="module")
def limited_client():
    """One app with small limits for all the bad-request cases (building it is the slow
    part); each case also checks that the app still answers a good request."""
    settings = ServeSettings(max_upload_bytes=200_000, max_pixels=256 * 256, max_new_tokens=8)
    with pytest.MonkeyPatch.context() as patch, _client(echo_predictor(patch), settings) as c:
        yield c


def _client(predictor, settings=None) -> TestClient:
    return TestClient(create_app(predictor, settings or ServeSettings(max_new_tokens=8)))


def _upload(client, data: bytes, question="Which organ filters the blood?", **fields):
    return client.post(
        "/v1/predict",
        files={"image": ("scan.png", data, "application/octet-stream")},
        data={"question": question, **{k: str(v) for k, v in fields.items()}},
    )


def test_upload_then_follow_up_reuses_the_session_and_embedding(echo, monkeypatch):
    encoded = []
    original = echo.model.embed_images
    monkeypatch.setattr(
        echo.model, "embed_images", lambda px: encoded.append(len(px)) or original(px)
    )
    data = png_bytes(sample_image(30, 50))
    with _client(echo) as client:
        first = _upload(client, data, include_image="true")
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["turn"] == 1 and body["found_target"]
        assert body["text"].startswith("Echo: Which organ filters the blood?")
        assert body["image"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert (body["image"]["height"], body["image"]["width"]) == (30, 50)
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
        assert mask.shape == (30, 50)
        x0, y0, x1, y1 = body["box"]
        assert 0 <= x0 <= x1 <= 50 and 0 <= y0 <= y1 <= 30
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image_png"]))))
        assert shown.shape == (30, 50, 3)

        second = client.post(
            "/v1/predict",
            json={
                "question": "And next to it?",
                "session_id": body["session_id"],
                "mask_format": "rle",
            },  # fmt: skip
        )
        assert second.status_code == 200, second.text
        follow = second.json()
        assert follow["turn"] == 2 and follow["session_id"] == body["session_id"]
        assert follow["text"].startswith("Echo: And next to it?")
        assert decode_rle(follow["mask"]).shape == (30, 50)
        assert follow["image_png"] is None
    assert encoded == [1]  # the follow-up did not run the image encoder again


def test_json_base64_upload_dicom_and_nifti(echo, tmp_path):
    nib = pytest.importorskip("nibabel")
    write_ct_dicom(tmp_path / "ct.dcm", np.linspace(-500, 500, 20 * 36).reshape(20, 36))
    nib.save(nib.Nifti1Image(np.random.rand(12, 10, 6).astype(np.float32), np.eye(4)),
             tmp_path / "v.nii.gz")  # fmt: skip
    with _client(echo) as client:
        dicom = client.post(
            "/v1/predict",
            json={
                "question": "Where?",
                "image_base64": base64.b64encode((tmp_path / "ct.dcm").read_bytes()).decode(),
                "window": "lung",
                "mask_format": "none",
            },
        )
        assert dicom.status_code == 200, dicom.text
        info = dicom.json()["image"]
        assert info["format"] == "dicom" and info["window"] == [-600.0, 1500.0]
        assert dicom.json()["mask"] is None
        nifti = client.post(
            "/v1/predict",
            files={"image": ("v.nii.gz", (tmp_path / "v.nii.gz").read_bytes())},
            data={"question": "Where?", "axis": "coronal", "slice_index": "4"},
        )
        assert nifti.status_code == 200, nifti.text
        info = nifti.json()["image"]
        assert info["format"] == "nifti" and info["axis"] == "coronal"
        assert info["slice_index"] == 4 and (info["height"], info["width"]) == (6, 12)


@pytest.mark.parametrize(
    ("make_request", "status", "message"),
    [
        (lambda c: _upload(c, png_bytes(sample_image(8, 8)), question="   "), 422, "empty"),
        (lambda c: _upload(c, b"\x89PNG\r\n\x1a\n" + b"\0" * 300), 400, "cannot read"),
        (lambda c: _upload(c, b"hello, this is not an image" * 20), 415, "not an image"),
        (lambda c: _upload(c, b""), 400, "empty"),
        (lambda c: _upload(c, png_bytes(sample_image(300, 300))), 413, "too large"),
        (lambda c: _upload(c, b"\0" * 300_000), 413, "request too large"),
        (lambda c: c.post("/v1/predict", json={"question": "Where?"}), 422, "no image"),
        (
            lambda c: c.post("/v1/predict", json={"question": "W?", "session_id": "nope"}),
            404,
            "unknown or expired",
        ),  # fmt: skip
        (
            lambda c: c.post("/v1/predict", json={"question": "W?", "image_base64": "%%%"}),
            400,
            "base64",
        ),  # fmt: skip
        (lambda c: c.post("/v1/predict", json={"question": "W?", "colour": 1}), 422, "colour"),
        (
            lambda c: c.post(
                "/v1/predict", content=b"{oops", headers={"content-type": "application/json"}
            ),
            400,
            "invalid JSON",
        ),  # fmt: skip
        (
            lambda c: c.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"}),
            415,
            "multipart",
        ),  # fmt: skip
        (
            lambda c: _upload(c, png_bytes(sample_image(8, 8)), session_id="abc"),
            422,
            "or a session_id",
        ),  # fmt: skip
        (
            lambda c: _upload(c, png_bytes(sample_image(8, 8)), max_new_tokens=100000),
            422,
            "max_new_tokens",
        ),  # fmt: skip
        (lambda c: _upload(c, png_bytes(sample_image(8, 8)), window="nonsense"), 422, "window"),
        (
            lambda c: _upload(c, png_bytes(sample_image(8, 8)), question="why " * 400),
            422,
            "too long",
        ),  # fmt: skip
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
    limited_client, make_request, status, message
):
    response = make_request(limited_client)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    ok = _upload(limited_client, png_bytes(sample_image(10, 12)))
    assert ok.status_code == 200, ok.text


def test_api_key(echo):
    settings = ServeSettings(api_key="s3cret", max_new_tokens=4)
    data = png_bytes(sample_image(10, 10))
    with _client(echo, settings) as client:
        assert _upload(client, data).status_code == 401
        assert client.get("/healthz").status_code == 200  # open: for load balancers
        assert client.get("/").status_code == 200
        ok = client.post(
            "/v1/predict",
            files={"image": ("a.png", data)},
            data={"question": "Where?"},
            headers={"X-API-Key": "s3cret"},
        )
        assert ok.status_code == 200
        bearer = client.post(
            "/v1/predict",
            json={"question": "Again?", "session_id": ok.json()["session_id"]},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert bearer.status_code == 200
        wrong = client.delete(
            f"/v1/sessions/{ok.json()['session_id']}", headers={"X-API-Key": "nope"}
        )
        assert wrong.status_code == 401


def test_delete_session(echo):
    with _client(echo) as client:
        session = _upload(client, png_bytes(sample_image(10, 10))).json()["session_id"]
        assert client.delete(f"/v1/sessions/{session}").status_code == 204
        assert client.delete(f"/v1/sessions/{session}").status_code == 404
        gone = client.post("/v1/predict", json={"question": "W?", "session_id": session})
        assert gone.status_code == 404


def test_full_queue_answers_503_and_timeouts_504(echo, monkeypatch):
    gate = threading.Event()
    original = echo.run

    def slow_run(requests, options=None):
        gate.wait(10)
        return original(requests, options)

    monkeypatch.setattr(echo, "run", slow_run)
    settings = ServeSettings(queue_size=1, max_batch_size=1, request_timeout_s=1.0)
    data = png_bytes(sample_image(10, 10))
    with _client(echo, settings) as client:
        results: dict[str, int] = {}

        def call(name: str) -> None:
            results[name] = _upload(client, data).status_code

        threads = [threading.Thread(target=call, args=(f"r{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.15)
        for thread in threads:
            thread.join(20)
        # One runs (blocked), one waits in the queue, the rest find it full.
        codes = sorted(results.values())
        assert codes.count(503) >= 1 and set(codes) <= {503, 504}
        assert 504 in codes
        gate.set()
        deadline = time.monotonic() + 10  # the worker drops the timed-out jobs it finds
        while client.get("/healthz").json()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _upload(client, data).status_code == 200


def test_healthz_openapi_and_page(echo):
    with _client(echo) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["queue_capacity"] == 32
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(body)
        assert "image" in body["multipart/form-data"]["schema"]["properties"]
        assert "PredictResponse" in schema["components"]["schemas"]
        page = client.get("/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        # Offline: the page loads nothing from elsewhere.
        assert "http://" not in page.text and "https://" not in page.text
        assert client.get("/docs").status_code == 404  # Swagger UI needs a CDN: off


def test_a_failing_model_load_fails_startup():
    def broken():
        raise RuntimeError("no weights here")

    with pytest.raises(Exception, match="no weights here"), TestClient(create_app(broken)):
        pass


def test_session_store_bounds_and_expiry():
    now = [0.0]
    store = SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    for name in "abc":
        store.add(Session(name, None, {}))
        now[0] += 1
    assert store.get("a") is None and len(store) == 2  # the oldest dropped
    now[0] += 5
    assert store.get("b") is not None  # touched: its idle clock restarts
    now[0] += 8
    assert store.get("c") is None and store.get("b") is not None


def test_a_model_error_is_a_500_with_its_message_and_the_next_request_works(echo, monkeypatch):
    run = echo.run

    def flaky(requests, options=None):
        if any("explode" in r.question for r in requests):
            raise RuntimeError("the model fell over")
        return run(requests, options)

    monkeypatch.setattr(echo, "run", flaky)
    data = png_bytes(sample_image(12, 12))
    with _client(echo) as client:
        failed = _upload(client, data, question="Please explode")
        assert failed.status_code == 500 and "the model fell over" in failed.json()["detail"]
        assert _upload(client, data).status_code == 200


@pytest.mark.parametrize("knowledge_on", [True, False])
def test_session_follow_ups_are_answered_from_knowledge(monkeypatch, knowledge_on):
    from types import SimpleNamespace

    import numpy as np

    from medisee.inference import knowledge
    from medisee.inference.predictor import Prediction
    from medisee.serve.app import _run_jobs, _ServeJob
    from medisee.serve.sessions import Session
    from medisee.serve.worker import Job

    # A model with a chat template and adapters to turn off, as lite-smollm2's.
    model = SimpleNamespace(
        tokenizer=SimpleNamespace(chat_template="{{ messages }}"),
        language=SimpleNamespace(model=SimpleNamespace(disable_adapter=lambda: None)),
    )
    replies = iter(
        [
            "It is the left kidney. It filters.",
            "The kidney filters the blood.",
            "It is the left kidney.",
        ]
    )
    seen = []

    def run(requests, options):
        seen.extend((r.question, r.history) for r in requests)
        text = next(replies)
        found = text.startswith("It is")
        return [
            Prediction(
                mask=np.zeros((4, 4), bool),
                box=(0.0, 0.0, 2.0, 2.0) if found else None,
                text=text,
                scores={},
                question=requests[0].question,
                raw_text=text,
            )
        ]

    predictor = SimpleNamespace(model=model, run=run, prepare=lambda *a, **k: "state")
    asked = []
    monkeypatch.setattr(
        knowledge,
        "knowledge_reply",
        lambda m, question, subject, **kw: asked.append((question, subject)) or "It makes urine.",
    )
    session = Session("s", image=None, image_info={"filename": "x.png"}, state="state")
    results = [
        _run_jobs(predictor, [Job(_ServeJob(session, question, None))], knowledge=knowledge_on)[0]
        for question in ("Which organ filters the blood?", "What does it do?", "Where is it?")
    ]
    assert session.subject == "left kidney"
    # The region follow-up is asked alone, "it" resolved; the others keep the conversation.
    assert [len(history) for _, history in seen] == [0, 1, 0]
    assert seen[2][0] == "Where is the left kidney?"
    assert results[2].prediction.question == "Where is it?"  # the user's words
    assert session.history[2][0] == "Where is it?"
    second = results[1].prediction
    if knowledge_on:
        assert asked == [("What does it do?", "left kidney")]
        assert second.text == "It makes urine." and second.scores["reply"] == "knowledge"
        assert session.history[1] == ("What does it do?", "It makes urine.")
    else:
        assert asked == [] and second.scores["reply"] == "model"
        assert second.text == "The kidney filters the blood."
