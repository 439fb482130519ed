"""What the predictor accepts as an image, turned into one ``MedicalImage``.

Every input ends as display pixels ``H x W x 3`` ``uint8`` in the **original frame** (the
frame masks and boxes are returned in):

* a path: PNG/JPEG/TIFF/BMP, DICOM (windowed) or one NIfTI slice, via
  ``medisee.data.io.read_image`` (the same reader the training data is built with, so the
  model sees test images the way it saw training images);
* a ``MedicalImage``: used as is;
* an array: ``H x W`` or ``H x W x {1, 3, 4}``. ``uint8`` passes through; any other dtype
  (CT values, floats, 16-bit) is displayed with a percentile stretch, its values kept, and
  refused (``BlankImageError``) when it has no finite or no varying values.

Uploads (the server) are sniffed by content, not by name, and their size is probed from
the header before any pixel is decoded, so a decompression bomb is refused cheaply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np

from medisee.data.io import (
    ImageMeta,
    ImageReadError,
    MedicalImage,
    Window,
    apply_window,
    check_informative,
    gray_to_rgb,
    is_dicom_file,
    raster_size,
    stretch_window,
)

#: An image the predictor accepts.
ImageInput: TypeAlias = np.ndarray | MedicalImage | str | os.PathLike

#: Suffixes ``--images DIR`` picks up (``.nii.gz`` is checked on the full name).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii")
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz")


@dataclass(frozen=True)
class ReadOptions:
    """How a file is turned into a 2-D display image (see ``medisee.data.io.read_image``).

    Attributes:
        window: CT/MR display window: preset name, ``(center, width)``, ``"auto"``
            (the DICOM header's, else the CT default, else a percentile stretch) or
            ``"stretch"``.
        axis: NIfTI slicing axis (``axial``/``coronal``/``sagittal``).
        index: NIfTI slice index along ``axis`` in the canonical (RAS+) volume; ``None``
            is the middle slice.
        frame: frame of a multi-frame DICOM.
        modality: overrides the file's modality (NIfTI has none; it selects the CT window).
        ct_window: the display an ``"auto"`` CT gets: a window preset or a composite
            (``medisee.data.io.COMPOSITE_WINDOWS``). ``Predictor`` fills it with its
            model's ``ModelConfig.ct_window``, so a CT looks as the model's training CT did.
        series_uid: the ``SeriesInstanceUID`` to read from a directory holding several.
    """

    window: str | Window | tuple[float, float] | None = "auto"
    axis: str = "axial"
    index: int | None = None
    frame: int = 0
    modality: str | None = None
    ct_window: str | None = None
    series_uid: str | None = None


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """A NIfTI file, or a directory (read as one DICOM series)."""
    return is_nifti_path(path) or Path(path).is_dir()


def is_image_path(path: Path) -> bool:
    """Whether ``--images DIR`` should take ``path`` (by suffix)."""
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) or name.endswith(".nii.gz")


def array_to_image(array: np.ndarray) -> MedicalImage:
    """An in-memory array -> ``MedicalImage`` (see the module docstring)."""
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[-1] in (1, 3, 4):
        data = data[..., 0] if data.shape[-1] == 1 else data[..., :3]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] != 3):
        raise ValueError(f"an image array must be H x W or H x W x {{1, 3, 4}}, got {array.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"empty image array {array.shape}")
    meta = ImageMeta(format="array")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    if data.dtype == np.uint8:
        pixels = gray_to_rgb(data) if data.ndim == 2 else np.ascontiguousarray(data)
        return MedicalImage(pixels, None, meta)
    # Wide dtypes are stretched: with no finite or no varying value there is no stretch.
    check_informative(data, "the image array")
    if data.ndim == 3:
        # Colour with a wide dtype: one stretch over all channels keeps the hue.
        window = stretch_window(data)
        meta.window = (window.center, window.width)
        return MedicalImage(apply_window(data, window), None, meta)
    values = data.astype(np.float32)
    window = stretch_window(values)
    meta.window = (window.center, window.width)
    return MedicalImage(gray_to_rgb(apply_window(values, window)), values, meta)


def load_image(image: ImageInput, options: ReadOptions | None = None) -> MedicalImage:
    """Any accepted input -> ``MedicalImage`` whose ``pixels`` are the original frame."""
    from medisee.data.io import read_image

    options = options or ReadOptions()
    if isinstance(image, MedicalImage):
        return image
    if isinstance(image, np.ndarray):
        return array_to_image(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(
            image,
            window=options.window,
            axis=options.axis,
            index=options.index,
            frame=options.frame,
            modality=options.modality,
            ct_window=options.ct_window,
            series_uid=options.series_uid,
        )
    raise TypeError(f"cannot use {type(image).__name__} as an image (array, MedicalImage or path)")


# ----------------------------------------------------------------------------- uploads
def sniff_suffix(head: bytes) -> str | None:
    """File suffix for the first bytes of an upload (>= 352 bytes), or ``None`` if unknown.

    DICOM: ``DICM`` at offset 128 (Part 10). NIfTI-1/2: the header size 348/540 as int32
    (either byte order) at offset 0. Gzip: assumed to be ``.nii.gz`` (the only gzipped
    format we read). Zip: a DICOM series, one file per slice. Rasters: the magic numbers
    Pillow reads.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a member first, or an empty zip
        return ".zip"
    if head[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return ".nii"
    if len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540):
        return ".nii"
    rasters = {
        b"\x89PNG\r\n\x1a\n": ".png",
        b"\xff\xd8\xff": ".jpg",
        b"II*\x00": ".tif",
        b"MM\x00*": ".tif",
        b"BM": ".bmp",
    }
    for magic, suffix in rasters.items():
        if head.startswith(magic):
            return suffix
    return None


def probe_pixel_count(path: str | os.PathLike[str], options: ReadOptions | None = None) -> int:
    """Pixels the image at ``path`` decodes to, read from its header only.

    Raster: ``W * H``; DICOM: ``rows * columns * frames``; NIfTI: the voxel count of the
    whole volume (the reader loads it whole to pick a slice); a directory (a DICOM series):
    the sum over its DICOM files. Raises ``ImageReadError`` if a header cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        return sum(
            probe_pixel_count(member, options)
            for member in sorted(path.iterdir())
            if member.is_file() and is_dicom_file(member)
        )
    if is_nifti_path(path):
        import nibabel as nib
        from nibabel.spatialimages import SpatialImage

        try:
            image = nib.load(str(path))
            if not isinstance(image, SpatialImage):
                raise TypeError(f"{type(image).__name__} is not a volume")
            shape = image.shape
        except Exception as error:  # nibabel raises many types for a bad header
            raise ImageReadError(f"cannot read NIfTI header: {error}") from error
        if not shape or min(shape) < 1:
            raise ImageReadError(f"cannot read NIfTI header: it declares the shape {shape}")
        return int(np.prod(shape[:4], dtype=np.int64))
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
        except Exception as error:  # pydicom raises many types for a bad file
            raise ImageReadError(f"cannot read DICOM header: {error}") from error
        return rows * columns * frames
    width, height = raster_size(path)  # answers for decompression bombs too
    return int(width) * int(height)
