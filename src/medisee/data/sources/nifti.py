"""NIfTI source: image volumes with label volumes, sliced into 2-D records.

Layout (``ROOT``): ``images/`` and ``labels/`` (or nnU-Net's ``imagesTr``/``labelsTr``)
with matching file names (an nnU-Net channel suffix ``_0000`` on images is ignored).
The label map (``--label-map`` or ``ROOT/dataset.json``) maps ids to names, as
``{"labels": {"1": "liver"}}`` (MSD) or ``{"labels": {"liver": 1}}`` (nnU-Net v2);
``"modality"`` may be a string or MSD's ``{"0": "CT"}``.

Volumes are reoriented to canonical RAS+ and sliced in the radiological display
convention (:mod:`medisee.data.io`). From each volume, ``slices_per_volume`` slices are
taken evenly among those where any label is present. Every record of a volume shares
``source_id = <case>``, so a volume never straddles two splits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.build import Builder, BuildOptions, BuildResult
from medisee.data.io import (
    ImageReadError,
    Window,
    composite_name,
    display_pixels,
    load_volume,
    volume_display,
)
from medisee.data.schema import normalize_modality, slugify
from medisee.data.sources.folder import _label_map_from, read_label_file

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") else name


def _pairs(root: Path) -> list[tuple[str, Path, Path | None]]:
    for images_name, labels_name in (("images", "labels"), ("imagesTr", "labelsTr")):
        images_dir, labels_dir = root / images_name, root / labels_name
        if images_dir.is_dir():
            labels = (
                {_case_name(p): p for p in labels_dir.glob("*.nii*")} if labels_dir.is_dir() else {}
            )
            images = sorted(p for p in images_dir.glob("*.nii*") if p.name.endswith(NIFTI_SUFFIXES))
            return [(_case_name(p), p, labels.get(_case_name(p))) for p in images]
    raise FileNotFoundError(f"no images/ (or imagesTr/) directory in {root}")


def _modality_from(info: dict[str, Any]) -> str | None:
    value = info.get("modality") or info.get("channel_names")
    if isinstance(value, dict):
        value = next(iter(value.values()), None)
    return str(value) if value else None


def choose_slices(present: np.ndarray, count: int) -> list[int]:
    """``count`` indices spread evenly over the positions where ``present`` is True."""
    candidates = np.flatnonzero(present)
    if candidates.size == 0 or count <= 0:
        return []
    if candidates.size <= count:
        return candidates.tolist()
    picks = np.linspace(0, candidates.size - 1, count + 2)[1:-1]  # avoid the extreme slices
    return sorted({int(candidates[int(round(p))]) for p in picks})


def build_nifti(
    root: str | Path,
    out_dir: str | Path,
    options: BuildOptions | None = None,
    *,
    label_map: str | Path | None = None,
    modality: str | None = None,
    axis: str = "axial",
    slices_per_volume: int = 5,
    window: str | Window | None = "auto",
    progress: Callable[[int], Any] | None = None,
) -> BuildResult:
    """Build a dataset of 2-D slices from NIfTI image/label volume pairs."""
    root = Path(root)
    info = read_label_file(label_map if label_map is not None else root / "dataset.json")
    names = {
        k: v for k, v in _label_map_from(info).items() if v.lower() != "background" and k != "0"
    }
    if not names:
        raise ValueError("no label names: give --label-map or ROOT/dataset.json with 'labels'")
    modality = normalize_modality(modality or _modality_from(info) or "")
    builder = Builder(out_dir, options)
    done = 0
    for case, image_path, label_path in _pairs(root):
        if label_path is None:
            builder.report.add("missing label volume", case)
            continue
        try:
            volume = load_volume(image_path)
            labels = load_volume(label_path, labels=True)
        except (ImageReadError, ValueError) as error:
            builder.report.add("corrupt volume", case, str(error))
            continue
        if labels.data.shape != volume.data.shape:
            builder.report.add(
                "label volume size mismatch", case, f"{labels.data.shape} vs {volume.data.shape}"
            )
            continue
        axis_index = volume.axis_index(axis)
        unknown_ids = sorted(
            {int(v) for v in np.unique(labels.data) if v != 0 and str(int(v)) not in names}
        )
        for value in unknown_ids:
            builder.report.add("unknown label id", f"{case}/id {value}", "not in the label map")
        other_axes = tuple(a for a in range(3) if a != axis_index)
        present = np.asarray((labels.data > 0).any(axis=other_axes))
        windows = volume_display(volume, window, modality)
        for index in choose_slices(present, slices_per_volume):
            pixels = display_pixels(volume.slice(axis_index, index), windows)
            label_slice = labels.slice(axis_index, index)
            targets = [
                (names[str(int(v))], label_slice == v)
                for v in np.unique(label_slice)
                if v != 0 and str(int(v)) in names
            ]
            axis_name = ("sagittal", "coronal", "axial")[axis_index]
            builder.add(
                f"{slugify(case).replace('_', '-')}-{axis_name}-{index:04d}",
                pixels,
                targets,
                modality=modality,
                source=f"nifti:{root.name}",
                source_id=case,
                display=None if axis_name == "sagittal" else "radiological",
                meta={
                    "file": image_path.name,
                    "axis": axis_name,
                    "index": index,
                    # A composite by its name (its windows in "windows"), as the trainer
                    # reads a model's CT display (ModelConfig.ct_window) from it.
                    "window": composite_name(window) or [windows[0].center, windows[0].width],
                    **(
                        {"windows": [[w.center, w.width] for w in windows]}
                        if len(windows) > 1
                        else {}
                    ),
                    "spacing": list(volume.spacing(axis_index)),
                },
            )
        done += 1
        if progress:
            progress(done)
    return builder.finish({"name": root.name, "source": "nifti", "input": str(root), "axis": axis})
