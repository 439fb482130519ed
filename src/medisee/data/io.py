"""Image readers shared by the data builders, the trainer and inference.

Every reader returns a :class:`MedicalImage`:

* ``pixels``: the display image, ``H x W x 3`` ``uint8`` (grey images have three equal
  channels). This is what models see and what mask/box coordinates refer to.
* ``values``: for grey medical data, the ``H x W`` ``float32`` values before display
  mapping, in the modality's units (Hounsfield units for CT after the DICOM modality LUT;
  raw intensities for MRI); ``None`` for ordinary 8-bit photographs.
* ``meta``: an :class:`ImageMeta` (format, modality, window used, spacing, slice, display
  convention).

Display convention (what "left" means):

* NIfTI volumes are reoriented to the closest canonical RAS+ orientation
  (``nibabel.as_closest_canonical``: voxel index ``i`` grows toward the patient's Right,
  ``j`` toward Anterior, ``k`` toward Superior) and sliced in the **radiological**
  convention: axial and coronal slices show the patient's right on the image's left;
  axial slices have anterior at the top, coronal and sagittal slices superior at the top,
  sagittal slices anterior on the left. Pixels are not resampled: spacing is in ``meta``.
* DICOM pixels are returned in their stored order (no flipping); ``meta.display`` says
  whether that is radiological, read from ``ImageOrientationPatient``.
* Windowing is linear: ``lo = center - width / 2``; output ``round(255 * clip((v - lo) /
  width, 0, 1))`` (half rounds up). ``MONOCHROME1`` images are inverted after windowing so
  that bright always means high attenuation/signal on screen.

Refusals are ``ImageReadError`` (a ``ValueError``) with the reason in the message:
corrupt or unsupported files; ``ImageTooLargeError`` for rasters over Pillow's
decompression-bomb limit (the message gives the header's real pixel count); and
``BlankImageError`` for grey data with nothing to show: a DICOM frame, a NIfTI volume or a
16-bit/float raster with no finite values or a single value everywhere. 8-bit photographs
are not checked (a black PNG is still a picture).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from medisee.data.errors import ImageReadError

#: CT window presets ``name -> (center, width)`` in Hounsfield units (common radiology values).
WINDOW_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "brain": (40.0, 80.0),
        "subdural": (75.0, 215.0),
        "stroke": (40.0, 40.0),
        "temporal_bone": (600.0, 2800.0),
        "soft_tissue": (50.0, 350.0),
        "mediastinum": (50.0, 350.0),
        "abdomen": (40.0, 400.0),
        "liver": (30.0, 150.0),
        "lung": (-600.0, 1500.0),
        # Air to bone in one view: lung dark, soft tissue mid-grey, bone bright (the
        # chest CT phantoms' window, medisee.data.phantom).
        "chest_wide": (-160.0, 1150.0),
        "bone": (400.0, 1800.0),
        "angio": (300.0, 600.0),
    }
)

#: CT displays that show one window per colour channel ``name -> (red, green, blue)``
#: preset names. One grey window cannot show air, soft tissue and bone apart at once:
#: in the lung window soft tissue sits at 0.93 of the grey range and bone at 1.0, so the
#: ribs and vertebrae look like the muscle around them; in three channels each range
#: keeps its own contrast.
COMPOSITE_WINDOWS: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {"lung_mediastinum_bone": ("lung", "mediastinum", "bone")}
)

#: Window used for CT when neither the caller nor the header chooses one.
DEFAULT_CT_WINDOW = "abdomen"
#: Percentiles for the intensity stretch used when no window applies.
STRETCH_PERCENTILES = (0.5, 99.5)

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than a reader will decode.

    Attributes:
        pixels: the pixel count the header declares (``W * H``).
        limit: the count that was exceeded.
    """

    def __init__(self, message: str, pixels: int, limit: int) -> None:
        super().__init__(message)
        self.pixels = pixels
        self.limit = limit


class BlankImageError(ImageReadError):
    """A file that decodes but holds nothing to look at: no finite values (all NaN or
    infinite) or one value everywhere. Its display would be a flat field, so a mask drawn
    on it would mean nothing."""


def check_informative(values: np.ndarray, what: str) -> None:
    """Raise ``BlankImageError`` if ``values`` have no finite or no varying values.

    ``what`` names the data in the message ("the image", "the volume", "slice 3").
    """
    data = np.asarray(values)
    if data.size == 0:
        raise BlankImageError(f"{what} is empty (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.any():
            raise BlankImageError(f"{what} has no finite values (every value is NaN or infinite)")
        if not finite.all():
            data = data[finite]
    low, high = data.min(), data.max()
    if low == high:
        raise BlankImageError(f"{what} has no varying values (every finite value is {low:g})")


@dataclass(frozen=True)
class Window:
    """A linear display window ``(center, width)`` in the values' units."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width <= 0:
            raise ValueError(f"window needs a finite center and a positive width, got {self}")

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2


def resolve_window(window: str | Window | tuple[float, float] | None) -> Window | None:
    """A preset name, ``(center, width)``, a :class:`Window` or ``None`` -> ``Window | None``.

    The strings ``"auto"``/``"header"``/``"stretch"`` are policies, not windows: they
    resolve to ``None`` here and are interpreted by the readers.
    """
    if window is None or isinstance(window, Window):
        return window
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key in ("auto", "header", "stretch", "none"):
            return None
        if key in COMPOSITE_WINDOWS:
            raise ValueError(
                f"{window!r} is a composite display (three windows), not one window: "
                "resolve it with resolve_display"
            )
        if key not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown window preset {window!r}; presets: {', '.join(WINDOW_PRESETS)}; "
                f"composites: {', '.join(COMPOSITE_WINDOWS)}; or 'CENTER,WIDTH'"
            )
        return Window(*WINDOW_PRESETS[key])
    if isinstance(window, (tuple, list)) and len(window) == 2:
        return Window(float(window[0]), float(window[1]))
    raise ValueError(f"cannot interpret window {window!r}")


def parse_window(text: str) -> str | Window:
    """CLI helper: ``"lung"`` stays a name, ``"40,400"`` becomes ``Window(40, 400)``."""
    if "," in text:
        center, width = (float(part) for part in text.split(",", 1))
        return Window(center, width)
    resolve_display(text)  # validates the name
    return text


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Linear windowing of ``values`` (any shape) to ``uint8`` (see the module docstring)."""
    scaled = np.clip((np.asarray(values, dtype=np.float64) - window.low) / window.width, 0.0, 1.0)
    return np.floor(scaled * 255.0 + 0.5).astype(np.uint8)


def display_pixels(values: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """``H x W`` values through a display's windows -> ``uint8``: ``H x W`` for one window
    (:func:`apply_window`), ``H x W x 3`` for a composite (channel ``c`` through
    ``windows[c]``)."""
    if len(windows) == 1:
        return apply_window(values, windows[0])
    if len(windows) != 3:
        raise ValueError(f"a display has one window or three (a composite), got {len(windows)}")
    return np.stack([apply_window(values, window) for window in windows], axis=-1)


def composite_windows(name: str) -> tuple[Window, ...]:
    """The windows of a :data:`COMPOSITE_WINDOWS` display, red to blue."""
    if name not in COMPOSITE_WINDOWS:
        raise ValueError(
            f"unknown composite CT display {name!r}; known: {', '.join(COMPOSITE_WINDOWS)}"
        )
    return tuple(Window(*WINDOW_PRESETS[preset]) for preset in COMPOSITE_WINDOWS[name])


def check_display_name(name: object, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``name`` is a :data:`WINDOW_PRESETS` or
    :data:`COMPOSITE_WINDOWS` name (how a CT is shown, by name)."""
    if name not in WINDOW_PRESETS and name not in COMPOSITE_WINDOWS:
        known = ", ".join([*WINDOW_PRESETS, *COMPOSITE_WINDOWS])
        raise ValueError(f"{what} must be one of {known}, got {name!r}")


def composite_name(window: Any) -> str | None:
    """The :data:`COMPOSITE_WINDOWS` name ``window`` spells (any case, ``-`` or space for
    ``_``), else ``None``."""
    if not isinstance(window, str):
        return None
    key = window.strip().lower().replace("-", "_").replace(" ", "_")
    return key if key in COMPOSITE_WINDOWS else None


def resolve_display(
    window: str | Window | tuple[float, float] | None,
) -> tuple[Window, ...] | None:
    """As :func:`resolve_window`, and a composite name -> its windows, red to blue: the
    windows of a display, one (grey) or three (composite); ``None`` for a policy."""
    name = composite_name(window)
    if name is not None:
        return composite_windows(name)
    resolved = resolve_window(window)
    return None if resolved is None else (resolved,)


def render_display(values: np.ndarray, windows: Sequence[Window], meta: ImageMeta) -> np.ndarray:
    """``H x W`` values through a display's windows -> ``H x W x 3`` ``uint8``, and the
    display written into ``meta``: ``window`` for one (grey on three channels), ``None``
    and ``extra["windows"]`` (``[[center, width], ...]``, red to blue) for a composite."""
    pixels = display_pixels(values, windows)
    if pixels.ndim == 2:
        meta.window = (windows[0].center, windows[0].width)
        return gray_to_rgb(pixels)
    meta.window = None
    meta.extra["windows"] = [[w.center, w.width] for w in windows]
    return pixels


def stretch_window(
    values: np.ndarray, percentiles: tuple[float, float] = STRETCH_PERCENTILES
) -> Window:
    """The window spanning the given percentiles of ``values`` (degenerate data -> width 1)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return Window(0.0, 1.0)
    low, high = np.percentile(finite, percentiles)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return Window(float(low) + 0.5, 1.0)
    return Window((low + high) / 2, high - low)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``H x W`` uint8 -> ``H x W x 3`` uint8 (three equal channels)."""
    if gray.ndim != 2:
        raise ValueError(f"gray_to_rgb expects H x W, got {gray.shape}")
    return np.repeat(gray[:, :, None], 3, axis=2)


@dataclass
class ImageMeta:
    """Where an image came from and how it was mapped to display pixels."""

    format: str
    modality: str | None = None
    display: str | None = None
    window: tuple[float, float] | None = None
    spacing: tuple[float, float] | None = None  # (row, column) pixel size in mm
    axis: str | None = None
    index: int | None = None
    num_slices: int | None = None
    photometric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: value for key, value in data.items() if value not in (None, {})}


@dataclass
class MedicalImage:
    """A decoded image: display ``pixels`` (``H x W x 3`` uint8), raw ``values`` and ``meta``."""

    pixels: np.ndarray
    values: np.ndarray | None
    meta: ImageMeta

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] != 3 or self.pixels.dtype != np.uint8:
            raise ValueError(
                f"pixels must be H x W x 3 uint8, got {self.pixels.shape} {self.pixels.dtype}"
            )
        if self.values is not None and self.values.shape != self.pixels.shape[:2]:
            raise ValueError(
                f"values {self.values.shape} do not match pixels {self.pixels.shape[:2]}"
            )

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_gray(self) -> bool:
        p = self.pixels
        return bool(np.array_equal(p[..., 0], p[..., 1]) and np.array_equal(p[..., 0], p[..., 2]))

    def rewindow(self, window: str | Window | tuple[float, float]) -> MedicalImage:
        """The same image displayed through another window (needs ``values``)."""
        if self.values is None:
            raise ValueError("this image has no raw values to re-window (8-bit photograph)")
        resolved = resolve_window(window) or stretch_window(self.values)
        gray = apply_window(self.values, resolved)
        if self.meta.photometric == "MONOCHROME1":
            gray = 255 - gray
        meta = ImageMeta(**{**asdict(self.meta), "window": (resolved.center, resolved.width)})
        return MedicalImage(gray_to_rgb(gray), self.values, meta)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is DICOM: by its suffix, or ``DICM`` at offset 128 (Part 10)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz"))


def read_image(
    path: str | os.PathLike[str],
    *,
    window: str | Window | tuple[float, float] | None = "auto",
    axis: str | int = "axial",
    index: int | None = None,
    frame: int = 0,
    modality: str | None = None,
    ct_window: str | None = None,
    series_uid: str | None = None,
) -> MedicalImage:
    """Read PNG/JPEG/TIFF/BMP, DICOM, or a slice of a NIfTI volume or of a directory's
    DICOM series (``medisee.data.dicom_series``); chosen by content and suffix.

    ``window`` applies to grey medical data (DICOM, NIfTI, 16-bit rasters): a preset name
    (:data:`WINDOW_PRESETS`), a composite (:data:`COMPOSITE_WINDOWS`: one window per
    colour channel), ``(center, width)``, ``"auto"`` (for CT ``ct_window`` when given,
    else the DICOM header's window, else :data:`DEFAULT_CT_WINDOW` for CT, else a
    percentile stretch) or ``"stretch"``. ``ct_window``: how a model was shown CT (its
    ``ModelConfig.ct_window``), so that an ``"auto"`` CT looks as its training CT did.
    ``axis``/``index`` choose a volume's slice (default: the middle one), ``series_uid`` a
    series of a directory that holds several; ``frame`` a frame of
    a multi-frame DICOM. ``modality`` overrides what the file says (NIfTI has no modality).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(f"cannot read image {path}: the file is empty (0 bytes)")
    if _is_nifti(path) or path.is_dir():  # a directory: one DICOM series
        return read_nifti(
            path,
            axis=axis,
            index=index,
            window=window,
            modality=modality,
            ct_window=ct_window,
            series_uid=series_uid,
        )
    if is_dicom_file(path):
        return read_dicom(path, window=window, frame=frame, ct_window=ct_window)
    return read_raster(path, window=window, modality=modality)


def raster_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of a Pillow-readable file, read from its header only.

    Unlike ``Image.open`` this also answers for images over Pillow's decompression-bomb
    limit, so that a refusal can say how large the image is. Raises ``ImageReadError``.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError:
        pass  # the header was read; open it again without Pillow's size check
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            if accept is not None and not accept(prefix):
                continue
            handle.seek(0)
            try:
                return factory(handle, str(path)).size
            except (OSError, SyntaxError, ValueError, IndexError, TypeError):
                continue
    raise ImageReadError(f"cannot read image {path}: no reader for its header")


def _pillow_pixel_limit() -> int:
    """The size over which ``Image.open`` raises ``DecompressionBombError``."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return 2 * int(limit) if limit else 2**63 - 1


def read_raster(
    path: str | os.PathLike[str],
    *,
    window: str | Window | tuple[float, float] | None = "auto",
    modality: str | None = None,
) -> MedicalImage:
    """PNG/JPEG/TIFF/BMP via Pillow. 8-bit grey/colour pass through; 16-bit and float images
    keep their values and are displayed through ``window`` (default: percentile stretch).
    Alpha is dropped; palettes are expanded; a multi-page TIFF gives its first page."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            fmt = (image.format or path.suffix.lstrip(".")).lower()
            if mode in ("RGB",):
                pixels = np.asarray(image, dtype=np.uint8).copy()
                return MedicalImage(pixels, None, ImageMeta(format=fmt, modality=modality))
            if mode in (
                "L",
                "1",
                "LA",
                "P",
                "PA",
                "RGBA",
                "CMYK",
                "YCbCr",
                "LAB",
                "HSV",
                "RGBX",
                "La",
            ):
                if mode in ("L", "1", "LA", "La"):
                    gray = np.asarray(image.convert("L"), dtype=np.uint8)
                    pixels = gray_to_rgb(gray)
                else:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
                return MedicalImage(pixels, None, ImageMeta(format=fmt, modality=modality))
            # "I;16", "I;16B", "I", "F": high bit depth grey.
            values = np.asarray(image, dtype=np.float32)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError:
        width, height = raster_size(path)
        limit = _pillow_pixel_limit()
        raise ImageTooLargeError(
            f"image too large: {width * height} pixels ({width} x {height}), over the "
            f"{limit} pixels Pillow decodes (a decompression bomb?)",
            width * height,
            limit,
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {path}: not an image (PNG/JPEG/TIFF/BMP, DICOM or NIfTI)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    if values.ndim != 2:
        raise ImageReadError(f"{path}: unsupported image mode {mode} with shape {values.shape}")
    check_informative(values, f"the image {path}")
    windows = resolve_display(window) or (stretch_window(values),)
    meta = ImageMeta(format=fmt, modality=modality)
    return MedicalImage(render_display(values, windows, meta), values, meta)


def _first_value(value: Any) -> float | None:
    """DICOM multi-valued DS -> its first value (``None`` if absent)."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_display(dataset: Any) -> str | None:
    """Radiological/neurological from ImageOrientationPatient (LPS: +x is patient left)."""
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    row = np.asarray([float(v) for v in orientation[:3]])  # direction of increasing column
    if abs(row[0]) < max(abs(row[1]), abs(row[2])):
        return None  # in-plane horizontal axis is not left-right (e.g. sagittal)
    return "radiological" if row[0] > 0 else "neurological"


#: DICOM modalities whose pixel data is not an image of the patient (a dose grid, a
#: label map); the others without pixel data fail when their pixels are read.
NOT_IMAGES = {"RTDOSE": "a radiotherapy dose grid", "SEG": "a segmentation"}


def read_dicom(
    path: str | os.PathLike[str],
    *,
    window: str | Window | tuple[float, float] | None = "auto",
    frame: int = 0,
    ct_window: str | None = None,
) -> MedicalImage:
    """Read one DICOM image (one frame of a multi-frame file).

    Grey images: the modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT
    Sequence) gives ``values`` (HU for CT); the display uses ``window`` (a window or a
    composite) — with ``"auto"``, for CT ``ct_window`` when given, else the header's first
    ``WindowCenter``/``WindowWidth`` if present, else :data:`DEFAULT_CT_WINDOW` for CT,
    else a percentile stretch; ``MONOCHROME1`` is inverted.
    Colour images (RGB/YBR) come back as RGB with ``values=None``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
        array = dataset.pixel_array
    except FileNotFoundError:
        raise
    except (
        InvalidDicomError,
        AttributeError,
        KeyError,
        ValueError,
        OSError,
        RuntimeError,
        EOFError,
    ) as error:
        raise ImageReadError(f"cannot read DICOM {path}: {error}") from error
    kind = NOT_IMAGES.get(str(dataset.get("Modality", "")))
    if kind is not None:
        raise ImageReadError(
            f"{path} is a DICOM {dataset.Modality} object ({kind}), not an image of the "
            "patient: give the image series it belongs to"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        if not 0 <= frame < frames:
            raise ValueError(f"{path}: frame {frame} out of range (file has {frames})")
        array = array[frame]
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    modality_code = dataset.get("Modality")
    from medisee.data.schema import normalize_modality

    try:
        modality = normalize_modality(modality_code) if modality_code else None
    except ValueError:
        modality = None
    spacing_value = dataset.get("PixelSpacing")
    spacing = (float(spacing_value[0]), float(spacing_value[1])) if spacing_value else None
    meta = ImageMeta(
        format="dicom",
        modality=modality,
        display=_dicom_display(dataset),
        spacing=spacing,
        index=frame if frames > 1 else None,
        num_slices=frames if frames > 1 else None,
        photometric=photometric,
    )
    if samples == 3:
        # pydicom converts YBR to RGB by default; scale > 8-bit colour down to 8 bits.
        rgb = np.asarray(array)
        if rgb.dtype != np.uint8:
            bits = int(dataset.get("BitsStored", 8))
            rgb = np.floor(rgb.astype(np.float64) / (2**bits - 1) * 255 + 0.5).astype(np.uint8)
        return MedicalImage(np.ascontiguousarray(rgb), None, meta)
    values = np.asarray(apply_modality_lut(np.asarray(array), dataset), dtype=np.float32)
    check_informative(values, f"the image {path}" if frames == 1 else f"frame {frame} of {path}")
    windows = resolve_display(window)
    policy = window.strip().lower() if isinstance(window, str) else None
    if windows is None and policy in (None, "auto") and modality == "CT" and ct_window:
        windows = resolve_display(ct_window)
    if windows is None and policy in (None, "auto", "header"):
        center = _first_value(dataset.get("WindowCenter"))
        width = _first_value(dataset.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            windows = (Window(center, width),)
        elif policy == "header":
            raise ValueError(f"{path}: window='header' but the file has no WindowCenter/Width")
        elif modality == "CT":
            windows = (Window(*WINDOW_PRESETS[DEFAULT_CT_WINDOW]),)
    if windows is None:
        windows = (stretch_window(values),)
    pixels = render_display(values, windows, meta)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return MedicalImage(pixels, values, meta)


@dataclass
class Volume:
    """A 3-D volume in closest-canonical RAS+ voxel order (see the module docstring).

    ``data`` is ``X x Y x Z`` (index ``i`` toward patient Right, ``j`` Anterior, ``k``
    Superior); ``zooms`` the voxel size in mm along those axes.
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]

    def axis_index(self, axis: str | int) -> int:
        if isinstance(axis, str):
            if axis not in AXES:
                raise ValueError(f"axis must be one of {list(AXES)} or 0/1/2, got {axis!r}")
            return AXES[axis]
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        return int(axis)

    def num_slices(self, axis: str | int) -> int:
        return int(self.data.shape[self.axis_index(axis)])

    def slice(self, axis: str | int, index: int) -> np.ndarray:
        """The ``H x W`` display slice ``index`` along ``axis`` (radiological orientation)."""
        return display_slice(self.data, self.axis_index(axis), index)

    def spacing(self, axis: str | int) -> tuple[float, float]:
        """``(row, column)`` pixel size in mm of a display slice along ``axis``."""
        a = self.axis_index(axis)
        in_plane = [d for d in range(3) if d != a]
        # Display slices are transposed: rows run along the second in-plane axis.
        return (float(self.zooms[in_plane[1]]), float(self.zooms[in_plane[0]]))


def display_slice(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice a RAS+ ``X x Y x Z`` array and orient it for display.

    For every axis the 2-D slice ``S[u, v]`` has ``u`` growing toward patient Right (axial,
    coronal) or Anterior (sagittal) and ``v`` toward Anterior (axial) or Superior; display
    wants the reverse of both along rows/columns, so the result is ``S[::-1, ::-1].T``:
    rows top = Anterior (axial) or Superior, columns left = patient Right (radiological),
    or Anterior for sagittal slices.
    """
    size = data.shape[axis]
    if not 0 <= index < size:
        raise ValueError(f"slice index {index} out of range 0..{size - 1} along axis {axis}")
    plane = data[(slice(None),) * axis + (index,)]
    return np.ascontiguousarray(plane[::-1, ::-1].T)


#: Hounsfield units put air at -1000: a volume whose lowest 1 % lies at or below this
#: reads as CT when nothing else gives its modality (a NIfTI header has no field for it).
#: No MR intensity scale goes this low.
CT_AIR_HU = -900.0


def looks_like_ct(data: np.ndarray) -> bool:
    """Whether a volume's values are Hounsfield units: air around or inside the body."""
    sample = np.asarray(data).ravel()[:: max(1, data.size // 2_000_000)]
    finite = sample[np.isfinite(sample)]
    return finite.size > 0 and float(np.percentile(finite, 1)) <= CT_AIR_HU


def open_volume(
    path: str | os.PathLike[str], series_uid: str | None = None
) -> tuple[Any, str | None]:
    """``(nibabel image, modality)`` of a NIfTI (or Analyze) file, or of a directory read
    as a DICOM series (``medisee.data.dicom_series``; ``series_uid`` picks one of several;
    NIfTI files have no modality)."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such volume: {path}")
    if path.is_dir():
        from medisee.data.dicom_series import read_dicom_series

        series = read_dicom_series(path, series_uid=series_uid)
        return series.image, series.modality
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for a bad header
        detail = str(error) or type(error).__name__
        raise ImageReadError(f"cannot read NIfTI {path}: {detail}") from error
    if not isinstance(image, SpatialImage):
        raise ImageReadError(f"{path} is not a volume with an affine ({type(image).__name__})")
    return image, None


def load_volume(
    path: str | os.PathLike[str], *, labels: bool = False, volume: int = 0, image: Any = None
) -> Volume:
    """Load a NIfTI (or Analyze) file, or a directory's DICOM series, reoriented with
    ``nibabel.as_closest_canonical``; ``image``: the one ``open_volume(path)`` gave.

    ``labels=True`` keeps the stored integer values (no scaling to float) so label ids
    survive exactly; otherwise data is ``float32`` with the header's scaling applied.
    4-D files give their ``volume``-th 3-D volume.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    path = Path(path)
    if image is None:
        image, _ = open_volume(path)
    try:
        canonical = nib.as_closest_canonical(image)
        if labels:
            data = np.asanyarray(canonical.dataobj)
            if np.issubdtype(data.dtype, np.floating):
                rounded = np.rint(data)
                if not np.allclose(rounded, data):
                    raise ImageReadError(f"{path}: label volume has non-integer values")
                data = rounded.astype(np.int32)
            else:
                data = data.astype(np.int32)
        else:
            data = canonical.get_fdata(dtype=np.float32)
    except FileNotFoundError:
        raise
    # A bad header fails in many ways: nibabel's own errors, and negative dimensions
    # reach numpy's memory map as an OverflowError.
    except (
        ImageFileError,
        HeaderDataError,
        OSError,
        EOFError,
        ValueError,
        OverflowError,
        MemoryError,
    ) as error:
        if isinstance(error, ImageReadError):
            raise
        detail = str(error) or type(error).__name__  # MemoryError has no message
        raise ImageReadError(f"cannot read NIfTI {path}: {detail}") from error
    if data.ndim == 4:
        if not 0 <= volume < data.shape[3]:
            raise ValueError(f"{path}: volume {volume} out of range (file has {data.shape[3]})")
        data = data[..., volume]
    elif data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3-D or 4-D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    while len(zooms) < 3:
        zooms = (*zooms, 1.0)
    return Volume(np.ascontiguousarray(data), np.asarray(canonical.affine), zooms)  # type: ignore[arg-type]


def volume_modality(volume: Volume, given: str | None, from_file: str | None) -> str | None:
    """A volume's modality: the caller's, else its files' (a DICOM series), else ``"CT"``
    for values in Hounsfield units (:func:`looks_like_ct`), else unknown."""
    from medisee.data.schema import normalize_modality

    if given:
        return normalize_modality(given)
    if from_file:
        return from_file
    return "CT" if looks_like_ct(volume.data) else None


def volume_display(
    volume: Volume,
    window: str | Window | tuple[float, float] | None,
    modality: str | None,
    ct_window: str | None = None,
) -> tuple[Window, ...]:
    """The display of a volume's slices (one window, or three for a composite): explicit,
    for CT ``ct_window`` (a model's) or the CT default, or a whole-volume stretch (one
    display for all slices, so slices of one volume share their intensity scale)."""
    resolved = resolve_display(window)
    if resolved is not None:
        return resolved
    stretch = isinstance(window, str) and window.strip().lower() == "stretch"
    shown = resolve_display(ct_window or DEFAULT_CT_WINDOW) if modality == "CT" else None
    if shown is not None and not stretch:  # a name always resolves to a display
        return shown
    data = volume.data
    # Subsample big volumes: percentiles of every 4th voxel are close enough.
    sample = data.ravel()[:: max(1, data.size // 2_000_000)]
    nonzero = sample[sample != 0]
    return (stretch_window(nonzero if nonzero.size > 100 else sample),)


def read_nifti(
    path: str | os.PathLike[str],
    *,
    axis: str | int = "axial",
    index: int | None = None,
    window: str | Window | tuple[float, float] | None = "auto",
    modality: str | None = None,
    volume: int = 0,
    ct_window: str | None = None,
    series_uid: str | None = None,
) -> MedicalImage:
    """One display slice of a NIfTI volume, or of a directory's DICOM series (default: the
    middle slice along ``axis``); ``window`` and ``ct_window`` as in :func:`volume_display`.
    The modality is ``modality``, else a series' files', else CT for a volume in Hounsfield
    units (:func:`volume_modality`)."""
    image, file_modality = open_volume(path, series_uid)
    vol = load_volume(path, volume=volume, image=image)
    check_informative(vol.data, f"the volume {path}")
    modality = volume_modality(vol, modality, file_modality)
    axis_i = vol.axis_index(axis)
    count = vol.num_slices(axis_i)
    index = count // 2 if index is None else index
    values = vol.slice(axis_i, index)
    if not np.isfinite(values).any():
        # A blank slice of a varying volume is shown (one window for the volume), but
        # one with no finite value has nothing to show at all.
        axis_name = {v: k for k, v in AXES.items()}[axis_i]
        raise BlankImageError(
            f"{axis_name} slice {index} of {path} has no finite values (every value is NaN "
            "or infinite)"
        )
    windows = volume_display(vol, window, modality, ct_window)
    axis_name = {v: k for k, v in AXES.items()}[axis_i]
    meta = ImageMeta(
        format="dicom_series" if Path(path).is_dir() else "nifti",
        modality=modality,
        display=None if axis_name == "sagittal" else "radiological",
        spacing=vol.spacing(axis_i),
        axis=axis_name,
        index=index,
        num_slices=count,
    )
    pixels = render_display(values, windows, meta)
    return MedicalImage(pixels, values.astype(np.float32), meta)


def save_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write ``H x W`` or ``H x W x 3`` uint8 as PNG (grey when all channels are equal)."""
    from PIL import Image

    if pixels.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(
            pixels[..., 0], pixels[..., 2]
        ):
            pixels = pixels[..., 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Low zlib effort: 3-5x faster than the default for a few % larger files.
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=1)


def load_rgb(path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """``read_image(path, **kwargs).pixels``: ``H x W x 3`` uint8."""
    return read_image(path, **kwargs).pixels
