"""The bad-input corpus: every entry sent to one real server (uvicorn on 127.0.0.1, an API
key set) gets its documented status and a message with the expected words and no server
path; ``/healthz`` stays up after each, and a good request is answered after all of them.
The image entries then go through ``Predictor.set_image`` and ``medisee predict``, which
must refuse (``ValueError``/``ImageReadError``, exit code 2) with the same words, or
succeed where the server answers 200.
"""

from __future__ import annotations

import base64
import functools
import io
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from medisee.cli import main
from medisee.data.io import ImageReadError
from medisee.serve.app import create_app
from medisee.serve.settings import ServeSettings
from tests.inference.helpers import (
    echo_predictor,
    make_tiny_model,
    png_bytes,
    sample_image,
    write_ct_dicom,
    write_ct_series,
)
from tests.serve.conftest import live_server

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

pytestmark = pytest.mark.filterwarnings(
    "ignore:The number of bytes of compressed pixel data:UserWarning"
)

KEY = "corpus-key"
QUESTION = "Which organ filters the blood?"
SETTINGS = ServeSettings(
    api_key=KEY,
    max_upload_bytes=400_000,
    max_voxels=1_000_000,
    max_new_tokens=8,
    request_timeout_s=60,
)


# ----------------------------------------------------------------------- the files
@functools.cache
def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit ``side x side`` PNG of zeros: ~109 kB that decode to 900 M pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _saved(image: Image.Image, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return buffer.getvalue()


def png16(value: int) -> bytes:
    return _saved(Image.fromarray(np.full((16, 20), value, np.uint16)), format="PNG")


def palette_png() -> bytes:
    return _saved(Image.fromarray(sample_image(24, 36)).convert("P"), format="PNG")


def cmyk_jpeg() -> bytes:
    return _saved(Image.fromarray(sample_image(24, 36)).convert("CMYK"), format="JPEG")


def truncated_png() -> bytes:
    data = png_bytes(sample_image(64, 64))
    return data[: len(data) // 2]


def dicom(
    folder: Path,
    values: np.ndarray,
    *,
    pixel_data: bool = True,
    transfer_syntax: bytes | None = None,
) -> bytes:
    """CT DICOM bytes: ``values`` H x W (one frame) or F x H x W (multi-frame)."""
    path = folder / "made.dcm"
    frames = values if values.ndim == 3 else values[None]
    write_ct_dicom(path, frames[0])
    dataset = pydicom.dcmread(path)
    if values.ndim == 3:
        dataset.NumberOfFrames = len(frames)
        dataset.PixelData = (frames + 1024).astype(np.int16).tobytes()
    if not pixel_data:
        del dataset.PixelData
    dataset.save_as(path)
    data = path.read_bytes()
    if transfer_syntax is not None:
        # Same length as the file's own UID, so the header stays well formed.
        own = b"1.2.840.10008.1.2.1\0"
        assert data.count(own) == 1 and len(transfer_syntax) == len(own)
        data = data.replace(own, transfer_syntax)
    return data


def nifti(folder: Path, values: np.ndarray, name: str = "made.nii.gz") -> bytes:
    path = folder / name
    nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), path)
    return path.read_bytes()


def nifti_bad_header(folder: Path) -> bytes:
    """A NIfTI-1 whose ``dim`` declares a negative size."""
    data = bytearray(nifti(folder, np.random.default_rng(0).random((8, 8, 4)), "h.nii"))
    data[40:56] = struct.pack("<8h", 3, -8, 8, 4, 1, 1, 1, 1)
    return bytes(data)


def nifti_header_bomb(folder: Path) -> bytes:
    """A 1 kB NIfTI-1 whose header declares 2000 x 2000 x 2000 voxels."""
    data = bytearray(nifti(folder, np.random.default_rng(0).random((8, 8, 4)), "b.nii"))
    data[40:56] = struct.pack("<8h", 3, 2000, 2000, 2000, 1, 1, 1, 1)
    return bytes(data)


def ramp(*shape: int) -> np.ndarray:
    return np.linspace(-500, 500, int(np.prod(shape))).reshape(shape)


def dicom_upload(values: np.ndarray, **options: Any) -> dict[str, Any]:
    """``Case`` arguments that upload ``dicom(values, **options)`` as ``scan.dcm``."""
    return {"image": lambda d: dicom(d, values, **options), "filename": "scan.dcm"}


def nifti_upload(values: np.ndarray) -> dict[str, Any]:
    """``Case`` arguments that upload ``nifti(values)`` as ``scan.nii.gz``."""
    return {"image": lambda d: nifti(d, values), "filename": "scan.nii.gz"}


def zipped(files: Mapping[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zipped_series(folder: Path) -> bytes:
    """A three-slice CT series, its files named as if to escape the server's folder."""
    slices = [ramp(12, 10) * (k + 1) for k in range(3)]
    paths = write_ct_series(folder / "series", slices, positions=[0.0, 2.0, 4.0])
    return zipped({f"../../../etc/{path.name}": path.read_bytes() for path in paths})


def two_series_zipped(folder: Path) -> bytes:
    """Two CT series of two slices each in one zip."""
    files = {}
    for number, uid in enumerate(("1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8")):
        slices = [ramp(12, 10) * (k + 1) for k in range(2)]
        paths = write_ct_series(folder / uid, slices, positions=[0.0, 2.0], series_uid=uid)
        files.update({f"s{number}_{path.name}": path.read_bytes() for path in paths})
    return zipped(files)


def good_png(folder: Path) -> bytes:
    return png_bytes(sample_image(12, 12))


# ----------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Case:
    """One entry: what is sent, the status and the words its ``detail`` must contain.

    ``image`` builds the upload (it gets a scratch folder); ``api`` says whether the same
    file also goes through ``Predictor.set_image`` and ``medisee predict`` (with ``read``
    as read options), which raise with ``words`` where the server answers 4xx/5xx.
    """

    id: str
    status: int
    words: str
    image: Callable[[Path], bytes] | None = None
    filename: str = "scan.png"
    question: str = QUESTION
    fields: Mapping[str, str] = field(default_factory=dict)
    body: Callable[[Path], Any] | None = None  # a JSON body instead of multipart
    raw: tuple[bytes, str] | None = None  # a body and its content type
    key: str | None = KEY
    api: bool = True
    read: Mapping[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (H, W) of a 200 answer


CORPUS = [
    # The probe's thirteen.
    Case("bomb-30000px", 413, "image too large: 900000000 pixels", lambda d: bomb_png()),
    Case("truncated-png", 400, "image file is truncated", lambda d: truncated_png()),
    Case("zero-bytes", 400, "empty", lambda d: b""),
    Case("text-named-png", 415, "not an image", lambda d: b"Not a picture at all.\n" * 30),
    Case(
        "dicom-no-pixel-data",
        400,
        "no pixel data",
        **dicom_upload(ramp(8, 10), pixel_data=False),
    ),
    Case("nifti-all-nan", 422, "has no finite values", **nifti_upload(np.full((8, 8, 4), np.nan))),
    Case("png-1x1", 200, "", lambda d: png_bytes(np.full((1, 1, 3), 90, np.uint8)), size=(1, 1)),
    Case(
        "question-100kB",
        422,
        "longer than 2000 characters",
        question="why " * 25_000,
        image=good_png,
        api=False,
    ),
    Case("question-empty", 422, "the question is empty", question="", image=good_png, api=False),
    Case(
        "question-nul",
        422,
        "control character U+0000",
        question="Où est le foie ? 肝臓\x00",
        image=good_png,
        api=False,
    ),
    Case("png16-all-65535", 422, "has no varying values", lambda d: png16(65535)),
    Case(
        "json-body",
        200,
        "",
        body=lambda d: {
            "question": QUESTION,
            "image_base64": base64.b64encode(png_bytes(sample_image(14, 18))).decode(),
        },
        size=(14, 18),
    ),
    # More.
    Case(
        "question-image-token",
        422,
        "'<image>', a token the model reserves",
        question="What is <image> here?",
        image=good_png,
        api=False,
    ),  # fmt: skip
    Case(
        "question-candidate-token",
        422,
        "'<cand_0>', a token the model reserves",
        question="Where is <cand_0>?",
        image=good_png,
        api=False,
    ),  # fmt: skip
    Case(
        "question-unicode",
        200,
        "",
        good_png,
        question="Où est le foie ? 肝臓はどこ？",
        api=False,
    ),  # fmt: skip
    Case("dicom-all-constant", 422, "has no varying values", **dicom_upload(np.zeros((8, 10)))),
    Case(
        "nifti-all-constant",
        422,
        "has no varying values",
        **nifti_upload(np.full((8, 8, 4), 7.0)),
    ),
    Case(
        "dicom-unknown-transfer-syntax",
        400,
        "Transfer Syntax UID",
        **dicom_upload(ramp(8, 10), transfer_syntax=b"9.9.999.99999.9.9.9\0"),
    ),
    Case(
        "dicom-rle-syntax-raw-pixels",
        400,
        "cannot read DICOM",
        **dicom_upload(ramp(8, 10), transfer_syntax=b"1.2.840.10008.1.2.5\0"),
    ),
    Case(
        "nifti-header-bomb",
        413,
        "image too large: 8000000000 voxels",
        nifti_header_bomb,
        filename="scan.nii",
        api=False,
    ),  # fmt: skip
    Case("nifti-bad-header", 400, "cannot read NIfTI", nifti_bad_header, filename="scan.nii"),
    Case(
        "nifti-4d-no-axis",  # the first volume's middle axial slice: Y x X
        200,
        "",
        **nifti_upload(ramp(8, 10, 6, 3)),
        size=(10, 8),
    ),
    Case(
        "dicom-multiframe-no-frame",  # frame 0
        200,
        "",
        **dicom_upload(ramp(3, 12, 16)),
        size=(12, 16),
    ),
    Case(
        "dicom-multiframe-frame-out-of-range",
        422,
        "frame 5 out of range",
        **dicom_upload(ramp(3, 12, 16)),
        fields={"frame": "5"},
        read={"frame": 5},
    ),
    Case("palette-png", 200, "", lambda d: palette_png(), size=(24, 36)),
    Case("cmyk-jpeg", 200, "", lambda d: cmyk_jpeg(), filename="scan.jpg", size=(24, 36)),
    Case(
        "json-file-as-image",
        415,
        "not an image",
        lambda d: b'{"question": "a JSON file, not a picture"}',
        api=False,  # as a path it is read as a raster: covered by text-named-png
    ),
    Case("json-array-body", 422, "must be an object", raw=(b"[1, 2]", "application/json")),
    # A zipped DICOM series (the server only: a path to a zip is no image for the library).
    Case(
        "zip-dicom-series", 200, "", zipped_series, filename="study.zip", api=False, size=(12, 10)
    ),
    Case(
        "zip-without-dicom",
        400,
        "holds no DICOM image file; zip the files of one series",
        lambda d: zipped({"notes.txt": b"hello"}),
        filename="study.zip",
        api=False,
    ),
    Case(
        "zip-two-series",
        400,
        "holds 2 series",
        two_series_zipped,
        filename="studies.zip",
        api=False,
    ),
    Case(
        "zip-too-many-files",
        413,
        "the zip holds 2001 files, the limit is 2000",
        lambda d: zipped({f"{n}.dcm": b"" for n in range(2001)}),
        filename="study.zip",
        api=False,
    ),
    Case(
        "zip-bomb",
        413,
        "larger than a volume of 1000000 voxels",
        lambda d: zipped({"slice.dcm": bytes(20_000_000)}),
        filename="study.zip",
        api=False,
    ),
    Case("zip-empty", 400, "the zip is empty", lambda d: zipped({}), filename="a.zip", api=False),
    Case(
        "max-new-tokens-huge",
        422,
        "max_new_tokens must be <=",
        good_png,
        fields={"max_new_tokens": str(10**30)},
        api=False,
    ),
    Case(
        "unknown-form-fields",
        422,
        "colour: Extra inputs are not permitted",
        good_png,
        fields={"colour": "red", "favourite_organ": "liver"},
        api=False,
    ),
    Case(
        "session-of-nobody",
        404,
        "unknown or expired session_id",
        body=lambda d: {"question": QUESTION, "session_id": "belongs-to-nobody"},
    ),
    Case(
        "api-key-missing",
        401,
        "API key",
        good_png,
        key=None,
        api=False,
    ),  # fmt: skip
    Case(
        "api-key-wrong",
        401,
        "API key",
        good_png,
        key="not-the-key",
        api=False,
    ),  # fmt: skip
]
IMAGE_CASES = [case for case in CORPUS if case.image is not None and case.api]

# A server-side path in a message: the temporary folder, its prefix or the file's name.
LEAKS = re.compile(
    rf"{re.escape(tempfile.gettempdir())}|medisee-upload|\bupload\.(png|jpe?g|tif|bmp|dcm|nii)"
)


# ------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server():
    with pytest.MonkeyPatch.context() as patch:
        predictor = echo_predictor(patch)
        with live_server(create_app(predictor, SETTINGS)) as base_url:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                yield client


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def send(client: httpx.Client, case: Case, scratch: Path) -> httpx.Response:
    headers = {"X-API-Key": case.key} if case.key else {}
    if case.raw is not None:
        content, content_type = case.raw
        headers["content-type"] = content_type
        return client.post("/v1/predict", content=content, headers=headers)
    if case.body is not None:
        return client.post("/v1/predict", json=case.body(scratch), headers=headers)
    files = None
    if case.image is not None:
        files = {"image": (case.filename, case.image(scratch), "application/octet-stream")}
    data = {"question": case.question, **case.fields}
    return client.post("/v1/predict", files=files, data=data, headers=headers)


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_the_server_answers_each_bad_input_with_its_status_and_words(server, scratch, case):
    response = send(server, case, scratch)
    assert response.status_code == case.status, response.text
    body = response.json()
    if case.status == 200:
        assert body["text"].startswith("Echo:")
        if case.size is not None:
            assert (body["image"]["height"], body["image"]["width"]) == case.size
    else:
        assert case.words in body["detail"], body["detail"]
        assert not LEAKS.search(body["detail"]), body["detail"]
        # A client of the server has no command-line flags to follow.
        assert "medisee predict" not in body["detail"], body["detail"]
    health = server.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_after_the_corpus_the_same_server_answers_a_good_request(server):
    response = server.post(
        "/v1/predict",
        files={"image": ("good.png", png_bytes(sample_image(30, 40, seed=3)))},
        data={"question": "Still there?", "mask_format": "rle"},
        headers={"X-API-Key": KEY},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].startswith("Echo: Still there?") and body["mask"]["size"] == [30, 40]
    assert server.get("/healthz").json()["queue_depth"] == 0


def test_the_multiframe_answer_says_which_frame(server, scratch):
    case = next(c for c in CORPUS if c.id == "dicom-multiframe-no-frame")
    info = send(server, case, scratch).json()["image"]
    assert info["format"] == "dicom" and info["frame"] == 0


# ------------------------------------------------------- the Python API and the CLI
@pytest.fixture(scope="module")
def api_predictor():
    with pytest.MonkeyPatch.context() as patch:
        yield echo_predictor(patch)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_model().save_pretrained(path)
    return path


def _written(case: Case, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / case.filename
    path.write_bytes(case.image(folder))  # type: ignore[misc]
    return path


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.id for case in IMAGE_CASES])
def test_set_image_refuses_the_same_files_with_the_same_words(api_predictor, tmp_path, case):
    path = _written(case, tmp_path)
    if case.status == 200:
        state = api_predictor.set_image(path, **case.read)
        if case.size is not None:
            assert state.size == case.size
        return
    with pytest.raises(ValueError) as raised:
        api_predictor.set_image(path, **case.read)
    assert case.words in str(raised.value)
    if case.status != 422 or "frame" not in case.read:
        assert isinstance(raised.value, ImageReadError)


def test_predict_all_slices_refuses_blank_volumes_too(saved_model, tmp_path, capsys):
    for case in (c for c in IMAGE_CASES if c.id in ("nifti-all-nan", "nifti-all-constant")):
        path = _written(case, tmp_path / case.id)
        argv = ["predict", "--model", str(saved_model), "--image", str(path), "--all-slices",
                "--question", QUESTION, "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
        assert main(argv) == 2
        assert case.words in capsys.readouterr().err


def test_medisee_predict_refuses_the_same_files_with_the_same_words(saved_model, tmp_path, capsys):
    flags = {"frame": "--frame", "axis": "--axis", "index": "--slice", "window": "--window"}
    for number, case in enumerate(IMAGE_CASES):
        path = _written(case, tmp_path / f"in{number}")
        argv = ["predict", "--model", str(saved_model), "--image", str(path), "--question",
                QUESTION, "--out", str(tmp_path / f"out{number}"), "--max-new-tokens", "2",
                "--quiet", "--no-overlay"]  # fmt: skip
        for key, value in case.read.items():
            argv += [flags[key], str(value)]
        code = main(argv)
        err = capsys.readouterr().err
        if case.status == 200:
            assert code == 0, (case.id, err)
        else:
            assert code == 2, (case.id, err)
            assert "medisee predict: error:" in err and case.words in err, (case.id, err)
