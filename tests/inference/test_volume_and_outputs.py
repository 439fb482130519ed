"""NIfTI label volumes on the source grid; mask RLE/PNG and overlays."""

from __future__ import annotations

import numpy as np
import pytest

from medisee.inference.outputs import complete_sentences, decode_rle, draw_overlay, encode_rle
from medisee.inference.predictor import Prediction, Predictor
from medisee.inference.volume import canonical_to_original, display_to_plane, predict_volume

nib = pytest.importorskip("nibabel")

# Non-canonical voxel orders: LPS (DICOM-like), permuted axes, oblique-ish with flips.
AFFINES = [
    np.diag([-0.8, -0.8, 2.0, 1.0]),
    np.array([[0, 0, -1.5, 10], [-1, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]], dtype=float),
    np.array([[0, 1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float),
    np.eye(4),
]


@pytest.mark.parametrize("affine", AFFINES)
def test_canonical_to_original_inverts_the_reader_reorientation(affine, tmp_path):
    from medisee.data.io import load_volume

    data = np.random.default_rng(0).integers(0, 100, size=(5, 6, 7)).astype(np.float32)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    canonical = load_volume(path).data
    assert np.array_equal(canonical_to_original(canonical, affine), data)


def test_display_to_plane_inverts_display_slice():
    from medisee.data.io import display_slice

    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for axis in range(3):
        assert np.array_equal(display_to_plane(display_slice(data, axis, 2)), data.take(2, axis))


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_every_slice_gives_a_label_volume_with_the_original_affine(axis, tmp_path, monkeypatch):
    """A stand-in model that segments bright display pixels must give back exactly the
    bright voxels of the file, in the file's voxel order, with its affine."""
    rng = np.random.default_rng(1)
    data = np.where(rng.random((9, 7, 5)) > 0.7, 1000.0, 0.0).astype(np.float32)
    affine = AFFINES[1]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)

    def run(self, requests, options=None):
        out = []
        for request in requests:
            mask = request.state.image.pixels[..., 0] > 127
            out.append(Prediction(mask, (0, 0, 1, 1), "bright", {"found_target": True}))
        return out

    monkeypatch.setattr(Predictor, "run", run)
    predictor = Predictor.__new__(Predictor)  # run() is replaced: no model needed
    predictor.batch_size = 3
    predictor.transform = _transform()
    predictor.generation = _generation()
    result = predict_volume(predictor, path, "Where is it bright?", axis=axis, window=(500, 100))
    assert result.labels.shape == data.shape
    assert np.array_equal(result.labels, (data > 500).astype(np.uint8))
    saved = nib.load(result.save_nifti(tmp_path / "mask.nii.gz"))
    assert np.allclose(saved.affine, affine)
    assert saved.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(saved.dataobj), result.labels)
    from medisee.data.io import AXES, load_volume

    # Slices run along the canonical (RAS+) axis, whatever the file's voxel order.
    assert len(result.slice_boxes()) == load_volume(path).data.shape[AXES[axis]]


def _transform():
    from medisee.model.preprocess import SamTransform

    return SamTransform(16)


def _generation():
    from medisee.inference.predictor import GenerationOptions

    return GenerationOptions()


def test_volume_with_the_real_tiny_model(echo, tmp_path):
    data = np.random.default_rng(2).random((12, 10, 4)).astype(np.float32)
    path = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(data, AFFINES[0]), path)
    result = predict_volume(echo, path, "Which region is bright?")
    assert result.labels.shape == (12, 10, 4) and len(result.slices) == 4
    assert all(p.found_target and p.mask.shape == (10, 12) for p in result.slices)


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(5, 7, dtype=bool),
        np.random.default_rng(0).random((17, 9)) > 0.5,
    ],
)
def test_rle_round_trip_and_coco_compatibility(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
    assert np.array_equal(decode_rle(rle), mask)
    masks = pytest.importorskip("medisee.data.masks")
    pytest.importorskip("pycocotools")
    assert np.array_equal(masks.decode_rle(rle), mask)


def test_overlay_tints_the_mask_and_draws_the_box():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:20] = True
    out = draw_overlay(image, mask, (30, 5, 50, 35), "Where?", "There.")
    factor = out.shape[1] // 60
    assert factor == 7 and out.shape[0] > 40 * factor  # upscaled, caption below
    tinted = out[15 * factor, 15 * factor]
    assert tinted[0] > tinted[1] and tinted[0] > 100  # red tint inside the mask
    assert tuple(out[20 * factor, 30 * factor]) == (64, 255, 64)  # the box's left edge
    assert tuple(out[2 * factor, 2 * factor]) == (100, 100, 100)  # untouched


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("It is the brain. It fills the skull,", "It is the brain."),
        ("It is the brain! Is it? It lies", "It is the brain! Is it?"),
        ("It is the brain. It thinks.", "It is the brain. It thinks."),
        ("  It is 2.5 cm wide and", "It is 2.5 cm wide and"),  # "2.5" ends no sentence
        ("no sentence end", "no sentence end"),
        ("", ""),
    ],
)
def test_complete_sentences_cuts_after_the_last_sentence_end(text, complete):
    assert complete_sentences(text) == complete
