"""A directory of DICOM slices (one series) -> a 3-D volume on the scanner's grid.

A CT or MR study arrives as a folder of single-slice DICOM files. Here the files of one
series are read with pydicom, ordered along the slice normal by
``ImagePositionPatient``, stacked in their modality's units (the modality LUT applied:
Hounsfield units for CT) and given the affine those tags define, so the volume is a
``nibabel`` image like a NIfTI file and everything that reads volumes
(``medisee.data.io.load_volume``, ``medisee predict --all-slices``) reads it the same
way. A label volume predicted on it overlays the series in a viewer (3D Slicer, ITK-SNAP)
without resampling.

Geometry (DICOM patient coordinates are LPS; NIfTI's are RAS, so x and y flip): voxel
``(i, j, k)`` is column ``i``, row ``j`` of the ``k``-th slice in position order, at
``IPP_0 + i * Δc * F_row + j * Δr * F_col + k * s * n`` where ``F_row``/``F_col`` are the
row and column direction cosines of ``ImageOrientationPatient``, ``(Δr, Δc)`` the
``PixelSpacing``, ``n`` the slice normal and ``s`` the spacing between slice positions.

Refusals are :class:`DicomSeriesError` (an ``ImageReadError``) naming the reason: no
DICOM image in the directory, several series without ``series_uid``, slices of different
sizes or orientations, missing geometry tags, two slices at one position, or positions
that are not evenly spaced (a volume on one affine cannot hold them).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.errors import ImageReadError

#: Largest departure from even slice spacing, as a share of the spacing, that still
#: reads as one volume (scanners round positions to a few micrometres).
SPACING_TOLERANCE = 0.01

# LPS (DICOM) -> RAS (NIfTI): negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomSeriesError(ImageReadError):
    """A directory that cannot be read as one DICOM series volume; the message says why.

    ``problem`` is what is wrong with the directory, ``remedy`` what a user of the
    command line or of Python can do about it (empty when nothing); the message is both.
    The server, whose clients have neither, gives its own remedy after ``problem``.
    """

    def __init__(self, problem: str, remedy: str = "") -> None:
        super().__init__(f"{problem}; {remedy}" if remedy else problem)
        self.problem = problem
        self.remedy = remedy


@dataclass
class DicomSeries:
    """One series read as a volume.

    Attributes:
        image: a ``nibabel.Nifti1Image`` (data ``columns x rows x slices``, float32 in the
            modality's units; the RAS affine of the series' geometry).
        modality: the normalised modality (``"CT"``, ``"MRI"``...) or ``None``.
        series_uid: the ``SeriesInstanceUID`` read.
        files: the slice files, in position order.
    """

    image: Any
    modality: str | None
    series_uid: str
    files: list[Path]


def read_dicom_series(
    directory: str | os.PathLike[str], *, series_uid: str | None = None
) -> DicomSeries:
    """Read the DICOM series in ``directory`` (its files, not its subdirectories).

    Files that are not DICOM images (a ``DICOMDIR``, a structured report, a README) are
    skipped. With several series in the directory, ``series_uid`` picks one; without it
    the error lists them.
    """
    import nibabel as nib
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such directory: {folder}")
    headers: dict[Path, Any] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "Rows" in dataset and "Columns" in dataset and "SOPClassUID" in dataset:
            headers[path] = dataset
    if not headers:
        inside = sorted(p.name for p in folder.iterdir() if p.is_dir())
        remedy = (
            f"its subdirectories ({', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})"
            " may each hold a series: give one of them"
            if inside
            else "separate images are read one file at a time (medisee predict --images)"
        )
        raise DicomSeriesError(f"{folder} holds no DICOM image file", remedy)
    series = Counter(str(h.get("SeriesInstanceUID", "")) for h in headers.values())
    if series_uid is None and len(series) > 1:
        listed = ", ".join(f"{uid} ({count} files)" for uid, count in series.most_common())
        raise DicomSeriesError(
            f"{folder} holds {len(series)} series: {listed}",
            "pick one (medisee predict --series UID; series_uid= in Python)",
        )
    chosen = series_uid if series_uid is not None else next(iter(series))
    if chosen not in series:
        raise DicomSeriesError(f"{folder} has no series {chosen!r}")
    slices = [(p, h) for p, h in headers.items() if str(h.get("SeriesInstanceUID", "")) == chosen]
    geometry = [_slice_geometry(path, header) for path, header in slices]
    size = {(int(h.Rows), int(h.Columns)) for _, h in slices}
    if len(size) > 1:
        raise DicomSeriesError(f"{folder}: the series' slices differ in size: {sorted(size)}")
    first = geometry[0]
    for path, (orientation, _, _) in zip((p for p, _ in slices), geometry):
        if not np.allclose(orientation, first[0], atol=1e-4):
            raise DicomSeriesError(f"{path}: its orientation differs from the series' first slice")
    row_dir, col_dir = first[0][:3], first[0][3:]
    normal = np.cross(row_dir, col_dir)
    order = sorted(range(len(slices)), key=lambda i: float(geometry[i][1] @ normal))
    positions = np.array([float(geometry[i][1] @ normal) for i in order])
    step = _slice_step(folder, positions, [slices[i][0] for i in order])
    row_spacing, column_spacing = first[2]
    affine = np.eye(4)
    affine[:3, 0] = row_dir * column_spacing  # i: along a row, column to column
    affine[:3, 1] = col_dir * row_spacing  # j: down a column, row to row
    affine[:3, 2] = normal * step
    affine[:3, 3] = geometry[order[0]][1]
    data = np.stack([_values(slices[i][0]).T for i in order], axis=-1)
    image = nib.Nifti1Image(data.astype(np.float32), _LPS_TO_RAS @ affine)
    image.header.set_xyzt_units("mm")
    return DicomSeries(image, _modality(slices[0][1]), chosen, [slices[i][0] for i in order])


def _slice_geometry(path: Path, header: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``(orientation [6], position [3], (row spacing, column spacing))`` of one slice."""
    missing = [
        tag
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
        if tag not in header
    ]
    if missing:
        raise DicomSeriesError(
            f"{path} lacks {', '.join(missing)}: the slices cannot be placed in a volume"
        )
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    position = np.array([float(v) for v in header.ImagePositionPatient])
    spacing = tuple(float(v) for v in header.PixelSpacing)
    if orientation.shape != (6,) or position.shape != (3,) or len(spacing) != 2:
        raise DicomSeriesError(f"{path}: malformed geometry tags")
    return orientation, position, (spacing[0], spacing[1])


def _slice_step(folder: Path, positions: np.ndarray, files: list[Path]) -> float:
    """The even spacing of the slice positions along the normal (1 for one slice)."""
    if len(positions) == 1:
        return 1.0
    gaps = np.diff(positions)
    if np.any(gaps <= 1e-6):
        at = int(np.argmin(gaps))
        raise DicomSeriesError(
            f"{files[at].name} and {files[at + 1].name} lie at the same position: "
            "more than one volume in the series"
        )
    step = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > SPACING_TOLERANCE * step:
        raise DicomSeriesError(
            f"{folder}: the slices are not evenly spaced ({gaps[worst]:.3f} mm between "
            f"{files[worst].name} and {files[worst + 1].name}, {step:.3f} mm elsewhere); "
            "a missing slice, or a series to resample first"
        )
    return step


def _values(path: Path) -> np.ndarray:
    """One slice's ``rows x columns`` values with the modality LUT applied."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except (AttributeError, KeyError, ValueError, OSError, RuntimeError, EOFError) as error:
        raise DicomSeriesError(f"cannot read DICOM {path}: {error}") from error
    if pixels.ndim != 2:
        raise DicomSeriesError(
            f"{path} holds {pixels.shape} pixels: a series is read from single-slice grey files"
        )
    return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)


def _modality(header: Any) -> str | None:
    from medisee.data.schema import normalize_modality

    code = header.get("Modality")
    try:
        return normalize_modality(str(code)) if code else None
    except ValueError:
        return None
