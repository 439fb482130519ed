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


def write_ct_dicom(path, values_hu: np.ndarray, window: tuple[float, float] | None = None) -> None:
    """A minimal CT DICOM (Part 10) with int16 stored values, slope 1, intercept -1024."""
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
    stored = (values_hu + 1024).astype(np.int16)
    dataset.PixelData = stored.tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
