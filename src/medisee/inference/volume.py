"""Every slice of a volume -> a label volume in the volume's own voxel grid.

The volume is a NIfTI file or a directory of DICOM slices (one series,
``medisee.data.dicom_series``, whose grid is the series' columns x rows x slices in
position order with the affine of its geometry tags).

``medisee.data.io.load_volume`` reorients a volume to the closest canonical RAS+ order
(``nibabel.as_closest_canonical``) and ``display_slice`` turns each canonical slice into
the radiological display the model sees. Predictions come back on display slices; both
steps are undone here, so the written label volume has the **original** voxel order,
shape and affine: it overlays the source scan in any viewer without resampling.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medisee.data.io import AXES, ImageMeta, MedicalImage, render_display

if TYPE_CHECKING:  # pragma: no cover
    from medisee.inference.predictor import Prediction, Predictor


def display_to_plane(display: np.ndarray) -> np.ndarray:
    """Inverse of ``medisee.data.io.display_slice`` for one 2-D slice.

    ``display = plane[::-1, ::-1].T``, hence ``plane = display.T[::-1, ::-1]``.
    """
    return np.ascontiguousarray(display.T[::-1, ::-1])


def canonical_to_original(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo ``nibabel.as_closest_canonical`` on a 3-D array.

    ``as_closest_canonical`` applies ``ornt = io_orientation(affine)`` with
    ``apply_orientation``: flip the original axes marked ``-1``, then transpose so that
    original axis ``i`` becomes canonical axis ``ornt[i, 0]``. The inverse transposes by
    ``ornt[:, 0]`` (axis ``i`` of the result is canonical axis ``ornt[i, 0]``) and then
    flips the same axes.

    Args:
        data: ``X x Y x Z`` in canonical order.
        affine: the **original** image's affine.
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    out = np.transpose(data, ornt[:, 0].astype(int))
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out)


@dataclass
class VolumePrediction:
    """Per-slice predictions of one question over a whole volume.

    Attributes:
        labels: uint8 label volume (1 = target) in the source file's voxel order.
        affine: the source file's affine (``labels`` lies on the same grid).
        header: the source header (copied into the output; data type set to uint8).
        axis: the slicing axis (``axial``/``coronal``/``sagittal``, canonical frame).
        slices: the prediction of each display slice, index = canonical slice index.
    """

    labels: np.ndarray
    affine: np.ndarray
    header: Any
    axis: str
    slices: list[Prediction] = field(repr=False)

    def save_nifti(self, path: str | os.PathLike[str]) -> Path:
        """Write the label volume (``.nii`` or ``.nii.gz``) on the source grid."""
        import nibabel as nib

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(self.header, nib.Nifti1Header):
            header = self.header.copy()
            header.set_data_dtype(np.uint8)
            header["cal_min"], header["cal_max"] = 0, 1
            # affine=None keeps the header's sform/qform (and their codes) exactly.
            image = type_for_header(header)(self.labels, None, header=header)
            image.header.set_slope_inter(1, 0)
        else:  # Analyze and friends: no sform/qform; the affine is all we have
            image = nib.Nifti1Image(self.labels, self.affine)
        nib.save(image, str(target))
        return target

    def slice_boxes(self) -> list[dict[str, Any]]:
        """Per slice: index and the box JSON (pixels of that display slice)."""
        return [
            {"index": index, "found_target": p.found_target, **p.box_json()}
            for index, p in enumerate(self.slices)
        ]


def type_for_header(header: Any) -> Any:
    import nibabel as nib

    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image


def predict_volume(
    predictor: Predictor,
    path: str | os.PathLike[str],
    question: str,
    *,
    axis: str = "axial",
    window: Any = "auto",
    modality: str | None = None,
    volume: int = 0,
    series_uid: str | None = None,
    progress: Callable[[int], None] | None = None,
    **generation: Any,
) -> VolumePrediction:
    """Ask ``question`` about every slice along ``axis``; stack the masks as a volume.

    All slices share one display (``medisee.data.io.volume_display``; a CT in the model's
    ``ct_window`` unless ``window`` says otherwise), as when the
    training slices were made. Slices run through ``Predictor.predict_iter`` in batches.
    """
    from medisee.data.io import (
        check_informative,
        load_volume,
        open_volume,
        volume_display,
        volume_modality,
    )

    if axis not in AXES:
        raise ValueError(f"axis must be one of {list(AXES)}, got {axis!r}")
    # A NIfTI file, or a directory of DICOM files (``series_uid``: one of its series).
    source, file_modality = open_volume(path, series_uid)
    vol = load_volume(path, volume=volume, image=source)
    check_informative(vol.data, f"the volume {path}")  # as read_nifti: no blank volumes
    modality = volume_modality(vol, modality, file_modality)
    # The model's CT display (a predictor double may have no model).
    config = getattr(getattr(predictor, "model", None), "config", None)
    windows = volume_display(vol, window, modality, getattr(config, "ct_window", None))
    axis_index = AXES[axis]
    count = vol.num_slices(axis_index)

    def slices():
        for index in range(count):
            values = vol.slice(axis_index, index)
            meta = ImageMeta(
                format="nifti", modality=modality, axis=axis, index=index, num_slices=count
            )
            image = MedicalImage(render_display(values, windows, meta), values, meta)
            yield image, question

    predictions = list(predictor.predict_iter(slices(), progress=progress, **generation))
    canonical = np.zeros(vol.data.shape, dtype=np.uint8)
    for index, prediction in enumerate(predictions):
        plane = display_to_plane(prediction.mask.astype(np.uint8))
        selector: list[Any] = [slice(None)] * 3
        selector[axis_index] = index
        canonical[tuple(selector)] = plane
    labels = canonical_to_original(canonical, source.affine)
    return VolumePrediction(labels, np.asarray(source.affine), source.header, axis, predictions)
