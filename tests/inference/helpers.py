"""Shared by the inference and serve tests: a tiny predictor, a scripted LM, test images.

A random tiny LM rarely emits its candidate tokens, so tests of the mask/box path replace
``model.language.generate`` (the LM's token generation only) with ``echo_generate``:
each row "answers" ``Echo: <its own question> <cand_0><cand_1> Explained.`` The rest of
the path (re-run over prompt + answer, candidate states, fusion, box and mask decoders,
frame mapping) is the real one, and the echoed question tells which request an answer
belongs to.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from medisee.inference.predictor import Predictor
from medisee.model.medisee import build_model
from medisee.model.presets import tiny
from tests.conftest import TINY_CORPUS


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread (autouse where a conftest imports it: the inference and serve
    tests). Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    an OpenMP team spinning against other processes makes them 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tiny_model():
    torch.manual_seed(0)
    return build_model(tiny(), corpus=TINY_CORPUS)


def echo_generate(model, calls: list | None = None):
    """A stand-in for ``model.language.generate`` (see the module docstring).

    ``calls`` (if given) collects each call's ``input_ids`` rows (unpadded), so tests can
    check what the model was shown.
    """
    tokenizer = model.tokenizer
    builder = model.prompt_builder()

    def generate(input_ids, attention_mask, vision_inputs, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            ids = ids[mask.bool()]
            if calls is not None:
                calls.append(ids.tolist())
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            question = prompt.rsplit("USER:", 1)[-1].rsplit("ASSISTANT:", 1)[0].strip()
            reply = builder.answer_text(f"Echo: {question}", "Explained.")
            reply_ids = tokenizer(" " + reply, add_special_tokens=False).input_ids
            rows.append(reply_ids + [tokenizer.eos_token_id])
        width = max(len(row) for row in rows)
        out = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        for index, row in enumerate(rows):
            out[index, : len(row)] = torch.tensor(row)
        return out.to(input_ids.device)

    return generate


def echo_predictor(monkeypatch, batch_size: int = 4, calls: list | None = None) -> Predictor:
    model = make_tiny_model()
    monkeypatch.setattr(model.language, "generate", echo_generate(model, calls))
    return Predictor(model, batch_size=batch_size)


def sample_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``H x W x 3`` uint8 with a bright ellipse on noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ellipse = ((yy - height * 0.45) / (height * 0.25)) ** 2 + (
        (xx - width * 0.55) / (width * 0.2)
    ) ** 2 < 1
    gray = rng.integers(0, 60, size=(height, width)) + 150 * ellipse
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_ct_dicom(
    path,
    values_hu: np.ndarray,
    window: tuple[float, float] | None = None,
    geometry: dict | None = None,
) -> None:
    """A minimal CT DICOM (Part 10) with int16 stored values, slope 1, intercept -1024;
    ``geometry``: more tags (``ImagePositionPatient``, ``SeriesInstanceUID``...)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = values_hu.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -1024
    dataset.PixelSpacing = [0.7, 0.7]
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    for tag, value in (geometry or {}).items():
        setattr(dataset, tag, value)
    stored = (values_hu + 1024).astype(np.int16)
    dataset.PixelData = stored.tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


def write_ct_series(
    folder,
    slices_hu: list[np.ndarray],
    *,
    positions: list[float],
    orientation=(1, 0, 0, 0, 1, 0),
    spacing=(0.5, 0.75),
    origin=(-20.0, -30.0),
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
) -> list:
    """One CT series, a file per slice: slice ``k`` at ``positions[k]`` mm along the normal
    of ``orientation`` (the files named and numbered in reverse, so that only the
    positions give the order). Returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, column)
    paths = []
    for k, (values, along) in enumerate(zip(slices_hu, positions)):
        number = len(slices_hu) - k
        position = origin[0] * row + origin[1] * column + along * normal
        path = folder / f"IM{number:04d}"
        write_ct_dicom(
            path,
            values,
            geometry={
                "ImagePositionPatient": [float(v) for v in position],
                "ImageOrientationPatient": [float(v) for v in orientation],
                "PixelSpacing": list(spacing),
                "SeriesInstanceUID": series_uid,
                "InstanceNumber": number,
            },
        )
        paths.append(path)
    return paths
