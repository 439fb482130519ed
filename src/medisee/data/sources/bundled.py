"""The bundled offline dataset: real images shipped in PyPI packages plus phantoms.

Real images (no network needed):

* **MNI152 T1 template** (nilearn, ICBM 2009a symmetric, 1 mm): axial, coronal and
  sagittal slices with masks for the brain (nilearn's brain mask), gray and white matter
  (their probability maps > 0.5 inside the brain) and the left/right lateral ventricles,
  derived here: voxels inside the brain that are dark on T1 (< 0.35 of the template's
  range) and neither gray nor white matter, in a box around the centre of the brain,
  3-D connected components of at least 1000 voxels off the midline, the side given by the
  component's centroid (RAS+: x > 0 is the patient's right). All slices come from one
  volume and share one ``source_id`` (one split).
* **pydicom test files**: ``CT_small.dcm`` (axial CT through a thoracic vertebra; the
  vertebra is the largest connected component >= 200 HU with its holes filled, which
  keeps the cancellous interior and may include a costovertebral joint) and
  ``examples_overlay.dcm`` (abdominal MR whose radiologist-drawn overlay circles a liver
  lesion; the mask is the region the closed contour encloses).

* **pyradiomics' patient scans** (on by default; ``radiomics=False`` / ``--no-radiomics``
  leaves them out): CT and MRI slices of five patients with their expert lesion labels
  and, on CT, derived lung, trachea, body, bone and vertebra masks, split by patient,
  with augmented copies of the training patients' slices; see
  :mod:`medisee.data.sources.radiomics`. They come on top of ``num_images``.

The rest are procedural phantoms (:mod:`medisee.data.phantom`), cycling through the kinds.

Provenance (``Target.provenance``): the MNI152 masks are ``derived`` (thresholds of the
template's own probability maps and brain mask, and the ventricle rule above: computed
here, not drawn by anyone); the pydicom vertebra is ``derived``; the pydicom liver lesion
is ``expert`` (the mask is the inside of the contour a reader drew into the file's
overlay); phantom masks are ``phantom``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.build import Builder, BuildOptions, BuildResult
from medisee.data.io import Window, apply_window, display_slice, read_dicom
from medisee.data.phantom import GENERATORS, MIN_TARGET_AREA, generate
from medisee.data.schema import SkipReport
from medisee.data.sources.radiomics import RadiomicsConfig, radiomics_slices

log = logging.getLogger(__name__)

DEFAULT_NUM_IMAGES = 200
DEFAULT_MNI_SLICES = 12
MNI_SOURCE_ID = "mni152-icbm2009a-sym"
RADIOMICS_SOURCE = "pyradiomics-testdata"


@dataclass
class RealImage:
    """One real image with derived masks, ready for :meth:`Builder.add`."""

    record_id: str
    image: np.ndarray
    targets: list[tuple[str, np.ndarray]]
    modality: str
    source: str
    source_id: str
    display: str | None
    meta: dict[str, Any]
    provenance: str = "derived"


def _world_axis(affine: np.ndarray, axis: int, size: int) -> np.ndarray:
    """World coordinate (mm) of each voxel index along ``axis`` (diagonal affines only)."""
    off_diagonal = affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))
    if np.abs(off_diagonal).max() > 1e-6:
        raise ValueError("expected an axis-aligned (diagonal) affine for the MNI template")
    return affine[axis, axis] * np.arange(size) + affine[axis, 3]


def _lateral_ventricles(
    t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, affine: np.ndarray
) -> dict[str, np.ndarray]:
    """3-D masks of the right and left lateral ventricles (see the module docstring)."""
    from scipy import ndimage

    x = _world_axis(affine, 0, t1.shape[0])
    y = _world_axis(affine, 1, t1.shape[1])
    z = _world_axis(affine, 2, t1.shape[2])
    box = np.ix_(np.abs(x) < 32, (y > -60) & (y < 40), (z > -10) & (z < 40))
    csf = brain[box] & (t1[box] < 0.35) & (gm[box] < 0.5) & (wm[box] < 0.5)
    labels, count = ndimage.label(csf)
    result: dict[str, np.ndarray] = {}
    if count == 0:
        return result
    sizes = ndimage.sum(csf, labels, range(1, count + 1))
    xs_box = x[np.abs(x) < 32]
    for index in np.flatnonzero(sizes >= 1000):
        component = labels == index + 1
        centroid_x = float(xs_box[np.nonzero(component)[0]].mean())
        if abs(centroid_x) < 5:
            continue  # midline CSF (third ventricle, cisterns)
        side = "right" if centroid_x > 0 else "left"
        full = np.zeros_like(brain)
        full[box] = component
        key = f"{side} lateral ventricle"
        result[key] = result[key] | full if key in result else full
    return result


def mni_template_files() -> dict[str, Path]:
    """Paths of the MNI152 T1/GM/WM templates inside the installed nilearn package.

    Found with ``importlib.util.find_spec`` so nilearn (and scikit-learn behind it) is not
    imported: these are the files ``nilearn.datasets.load_mni152_*`` read.
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed (pip install 'medisee[data]')")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {
        name: data_dir / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
        for name in ("t1", "gm", "wm")
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"MNI152 template files not found: {missing}")
    return files


def mni_images(
    num_slices: int = DEFAULT_MNI_SLICES, report: SkipReport | None = None
) -> list[RealImage]:
    """Slices of the MNI152 template with brain, GM, WM and lateral ventricle masks.

    Intensities are rescaled to [0, 1] by their maximum and the brain mask is T1 > 0.2,
    the rules of nilearn's ``load_mni152_template`` / ``load_mni152_brain_mask``.
    """
    import nibabel as nib

    report = report if report is not None else SkipReport()
    if num_slices <= 0:
        return []
    canonical = {
        name: nib.as_closest_canonical(nib.load(path))
        for name, path in mni_template_files().items()
    }
    affine = np.asarray(canonical["t1"].affine)
    data = {}
    for name, image in canonical.items():
        volume = image.get_fdata(dtype=np.float32)
        data[name] = volume / volume.max()
    t1, gm, wm = data["t1"], data["gm"], data["wm"]
    brain = t1 > 0.2
    ventricles = _lateral_ventricles(t1, gm, wm, brain, affine)
    if len(ventricles) != 2:
        report.add("ventricles not derived", "mni152", f"found {sorted(ventricles)}")
    volumes = {
        "brain": brain,
        "gray matter": (gm > 0.5) & brain,
        "white matter": (wm > 0.5) & brain,
        **ventricles,
    }

    n_cor = max(0, round(num_slices * 0.2))
    n_sag = max(0, round(num_slices * 0.2))
    n_ax = num_slices - n_cor - n_sag
    plan: list[tuple[str, int, float]] = []
    for axis_name, axis, count, lo, hi in (
        ("axial", 2, n_ax, -12.0, 42.0),
        ("coronal", 1, n_cor, -35.0, 20.0),
        ("sagittal", 0, n_sag, -24.0, 24.0),
    ):
        if count <= 0:
            continue
        world = _world_axis(affine, axis, t1.shape[axis])
        for mm in np.linspace(lo, hi, count) if count > 1 else [(lo + hi) / 2]:
            index = int(np.argmin(np.abs(world - mm)))
            plan.append((axis_name, index, float(world[index])))
    window = Window(0.5, 1.0)  # the template's intensities span [0, 1]
    out = []
    for axis_name, index, mm in plan:
        axis = {"sagittal": 0, "coronal": 1, "axial": 2}[axis_name]
        image = apply_window(display_slice(t1, axis, index), window)
        targets = []
        for label, volume in volumes.items():
            mask = display_slice(volume, axis, index).astype(bool)
            if mask.sum() >= MIN_TARGET_AREA:
                targets.append((label, mask))
        coordinate = {"sagittal": "x", "coronal": "y", "axial": "z"}[axis_name]
        out.append(
            RealImage(
                record_id=f"mni152-{axis_name}-{coordinate}{'-' if mm < 0 else ''}{abs(mm):03.0f}mm",
                image=image,
                targets=targets,
                modality="MRI",
                source="nilearn-mni152",
                source_id=MNI_SOURCE_ID,
                display=None if axis_name == "sagittal" else "radiological",
                meta={
                    "kind": "brain_mri",
                    "axis": axis_name,
                    "index": index,
                    f"{coordinate}_mm": mm,
                    "weighting": "T1",
                    "real": True,
                },
            )
        )
    return out


def _dicom_vertebra(values: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    bone = values >= 200.0
    labels, count = ndimage.label(bone)
    if count == 0:
        return bone
    sizes = ndimage.sum(bone, labels, range(1, count + 1))
    largest = labels == int(np.argmax(sizes)) + 1
    return ndimage.binary_fill_holes(ndimage.binary_closing(largest, iterations=1))


def _overlay_lesion(overlay: np.ndarray) -> np.ndarray:
    """The region enclosed by a drawn contour (largest enclosed area of the overlay)."""
    from scipy import ndimage

    closed = ndimage.binary_closing(overlay, structure=np.ones((3, 3)), iterations=2)
    inner = ndimage.binary_fill_holes(closed) & ~closed
    labels, count = ndimage.label(inner)
    if count == 0:
        return inner
    sizes = ndimage.sum(inner, labels, range(1, count + 1))
    return labels == int(np.argmax(sizes)) + 1


def dicom_images(report: SkipReport | None = None) -> list[RealImage]:
    """Real DICOM samples from pydicom's test files with derived masks."""
    import pydicom
    from pydicom.data import get_testdata_file

    report = report if report is not None else SkipReport()
    out = []
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        report.add("missing sample", "pydicom CT_small.dcm")
    else:
        ct = read_dicom(path)
        assert ct.values is not None
        vertebra = _dicom_vertebra(ct.values)
        out.append(
            RealImage(
                "pydicom-ct-small",
                ct.pixels[..., 0],
                [("vertebra", vertebra)],
                "CT",
                "pydicom-testdata",
                "pydicom-ct-small",
                ct.meta.display,
                {"file": "CT_small.dcm", "window": list(ct.meta.window or ()), "real": True},
            )
        )
    path = get_testdata_file("examples_overlay.dcm")
    if path is None:
        report.add("missing sample", "pydicom examples_overlay.dcm")
    else:
        mr = read_dicom(path)
        overlay = pydicom.dcmread(path).overlay_array(0x6000).astype(bool)
        lesion = _overlay_lesion(overlay)
        out.append(
            RealImage(
                "pydicom-mr-overlay",
                mr.pixels[..., 0],
                [("liver lesion", lesion)],
                "MRI",
                "pydicom-testdata",
                "pydicom-mr-overlay",
                mr.meta.display,
                {
                    "file": "examples_overlay.dcm",
                    "kind": "abdominal_mri",
                    "window": list(mr.meta.window or ()),
                    "real": True,
                },
                provenance="expert",
            )
        )
    return out


def build_bundled(
    out_dir: str | Path,
    options: BuildOptions | None = None,
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    kinds: Sequence[str] | None = None,
    mni_slices: int = DEFAULT_MNI_SLICES,
    dicom: bool = True,
    radiomics: bool = True,
    radiomics_config: RadiomicsConfig | None = None,
    progress: Callable[[int], Any] | None = None,
) -> BuildResult:
    """Build the bundled dataset into ``out_dir``.

    ``num_images`` counts every image: real ones first (``mni_slices`` MNI slices, the
    pydicom samples if ``dicom``), phantoms for the rest, cycling through ``kinds``
    (default: all of :data:`medisee.data.phantom.GENERATORS`). Phantom ``i`` is drawn
    from ``(seed, i)``, so the build is deterministic for a seed. ``progress`` is called
    with the number of images done after each one. ``radiomics`` (default): add the
    pyradiomics patient slices (``radiomics_config``, default :class:`RadiomicsConfig`), on top of
    ``num_images``, with their splits fixed by patient; a missing or corrupt sdist raises
    :class:`~medisee.data.sources.radiomics.RadiomicsDataError`. ``options``: see
    :class:`medisee.data.build.BuildOptions`; its ``allow_unknown_labels`` is ignored
    (every bundled label is in the ontology; unknown ones are skipped and counted).
    """
    kinds = list(kinds) if kinds else list(GENERATORS)
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown phantom kinds {unknown}; kinds: {', '.join(GENERATORS)}")
    # Every bundled label is in the ontology: unknown labels are never kept here.
    options = replace(options or BuildOptions(), allow_unknown_labels=False)
    builder = Builder(out_dir, options)
    seed = options.seed
    real: list[RealImage] = []
    if mni_slices > 0:
        try:
            real += mni_images(min(mni_slices, num_images), builder.report)
        except FileNotFoundError as error:
            # Without nilearn the set is phantoms (and DICOM) only; say so in the report.
            builder.report.add("missing sample", "nilearn MNI152 templates", str(error))
    if dicom:
        real += dicom_images(builder.report)
    real = real[:num_images]
    done = 0
    for item in real:
        builder.add(
            item.record_id,
            item.image,
            item.targets,
            modality=item.modality,
            source=item.source,
            source_id=item.source_id,
            display=item.display,
            meta=item.meta,
            provenance=item.provenance,
        )
        done += 1
        if progress:
            progress(done)
    for i in range(max(0, num_images - len(real))):
        kind = kinds[i % len(kinds)]
        phantom = generate(kind, [seed, i])
        record_id = f"phantom-{kind.replace('_', '-')}-{i:05d}"
        builder.add(
            record_id,
            phantom.image,
            phantom.targets,
            modality=phantom.modality,
            source="phantom",
            source_id=record_id,
            display=phantom.display,
            meta={"kind": kind, "seed": [seed, i], **phantom.meta},
            provenance="phantom",
        )
        done += 1
        if progress:
            progress(done)
    radiomics_counts: dict[str, int] = {}
    if radiomics:
        for scan in radiomics_slices(radiomics_config):
            record = builder.add(
                scan.record_id,
                scan.image,
                scan.targets,
                modality=scan.modality,
                source=RADIOMICS_SOURCE,
                source_id=scan.source_id,
                display="radiological",
                meta=scan.meta,
                provenance=scan.provenance,
                split=scan.split,
            )
            if record is not None:
                key = f"{scan.meta['patient']}/{scan.split}"
                radiomics_counts[key] = radiomics_counts.get(key, 0) + 1
    extra = {"radiomics": True, "radiomics_slices": radiomics_counts} if radiomics else {}
    return builder.finish(
        {
            "name": "medisee-bundled",
            "source": "bundled",
            "num_images_requested": num_images,
            "phantom_kinds": kinds,
            "mni_slices": mni_slices,
            "dicom_samples": dicom,
            **extra,
        }
    )
