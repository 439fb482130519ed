"""Generic folder source: images plus per-target masks plus a label map.

Layout (``ROOT``)::

    images/<stem>.<png|jpg|jpeg|tif|tiff|bmp|dcm>
    masks/<stem>/<key>.png      one binary mask per target (non-zero = inside);
                                "<key>_<n>.png" instances of one label are merged
    masks/<stem>.png            or one label map per image (pixel value = class id)
    labels.json                 optional: {"labels": {"<key or class id>": "<label>"},
                                           "modality": "CT", "display": "radiological",
                                           "source_ids": {"<stem>": "<volume id>"}}

A mask key without a label-map entry is used as the label itself (``left_kidney`` ->
``left kidney``). Labels are mapped onto the ontology; unknown ones are skipped and
counted unless ``allow_unknown_labels``. Corrupt images or masks are skipped and counted.
``source_id_regex`` (first group, matched on the stem) groups slices of one volume.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.build import Builder, BuildOptions, BuildResult
from medisee.data.io import ImageReadError, Window, read_image
from medisee.data.masks import MaskError, read_mask_png
from medisee.data.schema import slugify

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
_INSTANCE = re.compile(r"^(.*?)[_-](\d+)$")


def read_label_file(path: str | Path | None) -> dict[str, Any]:
    """``labels.json`` as a dict (empty if ``path`` is None or missing)."""
    if path is None or not Path(path).exists():
        return {}
    data = json.loads(Path(path).read_text("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _label_map_from(data: dict[str, Any]) -> dict[str, str]:
    labels = data.get("labels", {})
    if not isinstance(labels, dict):
        raise ValueError("'labels' must map keys or class ids to label names")
    out: dict[str, str] = {}
    for key, value in labels.items():
        # Accept both {"1": "liver"} and {"liver": 1}.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(int(value))] = str(key)
        else:
            out[str(key)] = str(value)
    return out


def _read_label_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MaskError(f"cannot read label map {path}: {error}") from error
    if array.ndim != 2:
        raise MaskError(f"label map {path} must be single-channel, got shape {array.shape}")
    return array.astype(np.int64)


def build_folder(
    root: str | Path,
    out_dir: str | Path,
    options: BuildOptions | None = None,
    *,
    modality: str | None = None,
    label_map: str | Path | None = None,
    display: str | None = None,
    source_id_regex: str | None = None,
    window: str | Window | None = "auto",
    progress: Callable[[int], Any] | None = None,
) -> BuildResult:
    """Build a dataset from a folder (see the module docstring for the layout)."""
    root = Path(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir} not found (expected ROOT/images and ROOT/masks)")
    info = read_label_file(label_map if label_map is not None else root / "labels.json")
    labels = _label_map_from(info)
    modality = modality or info.get("modality")
    if not modality:
        raise ValueError("give --modality or a 'modality' entry in labels.json")
    display = display if display is not None else info.get("display")
    source_ids = info.get("source_ids", {})
    group = re.compile(source_id_regex) if source_id_regex else None
    builder = Builder(out_dir, options)
    paths = sorted(
        p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"no images in {images_dir} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    masks_dir = root / "masks"
    for count, path in enumerate(paths, start=1):
        stem = path.stem
        try:
            image = read_image(path, window=window)
        except (ImageReadError, ValueError) as error:
            builder.report.add("corrupt image", path.name, str(error))
            continue
        targets: list[tuple[str, np.ndarray]] = []
        per_target = masks_dir / stem
        label_image = masks_dir / f"{stem}.png"
        if per_target.is_dir():
            for mask_path in sorted(per_target.glob("*.png")):
                key = mask_path.stem
                match = _INSTANCE.match(key)
                base = match.group(1) if match and key not in labels else key
                label = labels.get(key) or labels.get(base) or base.replace("_", " ")
                try:
                    targets.append((label, read_mask_png(mask_path)))
                except MaskError as error:
                    builder.report.add("corrupt mask", f"{stem}/{mask_path.name}", str(error))
        elif label_image.exists():
            try:
                ids = _read_label_image(label_image)
            except MaskError as error:
                builder.report.add("corrupt mask", label_image.name, str(error))
                ids = None
            if ids is not None:
                for value in np.unique(ids):
                    if value == 0:
                        continue
                    name = labels.get(str(int(value)))
                    if name is None:
                        builder.report.add(
                            "unknown label", f"{stem}/id {int(value)}", "no entry in labels.json"
                        )
                        continue
                    targets.append((name, ids == value))
        else:
            builder.report.add("no masks", stem, f"neither {per_target} nor {label_image}")
            continue
        if group is not None:
            found = group.search(stem)
            source_id = (
                found.group(1) if found and found.groups() else (found.group(0) if found else stem)
            )
        else:
            source_id = source_ids.get(stem, stem)
        pixels = image.pixels[..., 0] if image.is_gray else image.pixels
        builder.add(
            slugify(stem).replace("_", "-"),
            pixels,
            targets,
            modality=modality,
            source=f"folder:{root.name}",
            source_id=str(source_id),
            display=display if display is not None else image.meta.display,
            meta={"file": path.name, **image.meta.to_dict()},
        )
        if progress:
            progress(count)
    return builder.finish({"name": root.name, "source": "folder", "input": str(root)})
