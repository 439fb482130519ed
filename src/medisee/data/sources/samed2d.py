"""SA-Med2D-20M source (the images, masks and labels MLMR-SD was built from).

Layout (``ROOT``; the JSON files may also sit in ``ROOT/annotations``)::

    SAMed2D_v1.json                    {"images/<image>.png": ["masks/<mask>.png", ...]}
    SAMed2D_v1_class_mapping_id.json   optional {"<dataset>": {"<class name>": <id>, ...}}
    images/<modality>--<dataset>--<case>--<axis>_<slice>.png
    masks/<image stem>--<class>_<instance>.png

``<class>`` is a class id (looked up in the mapping for the image's dataset) or a class
name (``liver_000``). ``union_*`` classes (unions of others) are skipped and counted.
Instances of one class in one image are merged into one target. ``source_id`` is
``<dataset>--<case>`` so all slices of one volume share a split. SA-Med2D does not say
how slices are oriented, so ``display`` is ``None`` (no patient-side claims) unless given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medisee.data.build import Builder, BuildOptions, BuildResult
from medisee.data.io import ImageReadError, read_raster
from medisee.data.masks import MaskError, read_mask_png
from medisee.data.schema import normalize_modality, slugify

INDEX_NAME = "SAMed2D_v1.json"
MAPPING_NAME = "SAMed2D_v1_class_mapping_id.json"
_CLASS = re.compile(r"^(?P<cls>.+?)_(?P<instance>\d+)$")


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "annotations" / name):
        if candidate.exists():
            return candidate
    return None


def parse_image_name(name: str) -> dict[str, str]:
    """``ct_00--AbdomenCT1K--case_0001--x_0095.png`` -> modality, dataset, case, axis, slice."""
    stem = Path(name).name
    stem = stem[: -len(".png")] if stem.lower().endswith(".png") else stem
    parts = stem.split("--")
    if len(parts) != 4:
        raise ValueError(f"SA-Med2D image name needs 4 '--' fields, got {len(parts)}: {name!r}")
    axis, _, index = parts[3].rpartition("_")
    return {
        "modality": parts[0],
        "dataset": parts[1],
        "case": parts[2],
        "axis": axis or parts[3],
        "slice": index,
    }


def parse_mask_class(name: str) -> tuple[str, int]:
    """The ``<class>_<instance>`` field of a mask name -> ``(class, instance)``."""
    stem = Path(name).name
    stem = stem[: -len(".png")] if stem.lower().endswith(".png") else stem
    last = stem.split("--")[-1]
    match = _CLASS.match(last)
    if not match:
        raise ValueError(f"mask name does not end in '<class>_<instance>': {name!r}")
    return match.group("cls"), int(match.group("instance"))


def build_samed2d(
    root: str | Path,
    out_dir: str | Path,
    options: BuildOptions | None = None,
    *,
    max_images: int | None = None,
    datasets: Sequence[str] | None = None,
    display: str | None = None,
    progress: Callable[[int], Any] | None = None,
) -> BuildResult:
    """Build a dataset from an SA-Med2D-20M directory (see the module docstring)."""
    root = Path(root)
    index_path = _find(root, INDEX_NAME)
    if index_path is None:
        raise FileNotFoundError(f"{INDEX_NAME} not found in {root} or {root / 'annotations'}")
    index = json.loads(index_path.read_text("utf-8"))
    if not isinstance(index, dict):
        raise ValueError(f"{index_path}: expected an object mapping image paths to mask lists")
    mapping_path = _find(root, MAPPING_NAME)
    id_to_name: dict[str, dict[int, str]] = {}
    if mapping_path is not None:
        mapping = json.loads(mapping_path.read_text("utf-8"))
        for dataset, classes in mapping.items():
            id_to_name[dataset] = {int(v): str(k) for k, v in classes.items()}
    builder = Builder(out_dir, options)
    wanted = set(datasets) if datasets else None
    done = 0
    for image_key in sorted(index):
        if max_images is not None and done >= max_images:
            break
        try:
            fields = parse_image_name(image_key)
        except ValueError as error:
            builder.report.add("bad file name", image_key, str(error))
            continue
        if wanted is not None and fields["dataset"] not in wanted:
            continue
        try:
            modality = normalize_modality(fields["modality"])
        except ValueError as error:
            builder.report.add("unknown modality", image_key, str(error))
            continue
        try:
            image = read_raster(root / image_key)
        except FileNotFoundError:
            builder.report.add("missing image", image_key)
            continue
        except (ImageReadError, ValueError) as error:
            builder.report.add("corrupt image", image_key, str(error))
            continue
        targets = []
        for mask_key in index[image_key] or []:
            try:
                cls, _instance = parse_mask_class(mask_key)
            except ValueError as error:
                builder.report.add("bad file name", mask_key, str(error))
                continue
            if cls.isdigit():
                name = id_to_name.get(fields["dataset"], {}).get(int(cls))
                if name is None:
                    builder.report.add(
                        "unknown class id", mask_key, f"class {cls} of dataset {fields['dataset']}"
                    )
                    continue
            else:
                name = cls
            if name.startswith("union_"):
                builder.report.add("union label", mask_key)
                continue
            try:
                targets.append((name, read_mask_png(root / mask_key)))
            except FileNotFoundError:
                builder.report.add("missing mask", mask_key)
            except MaskError as error:
                builder.report.add("corrupt mask", mask_key, str(error))
        stem = Path(image_key).name.rsplit(".", 1)[0]
        record = builder.add(
            slugify(stem).replace("_", "-"),
            image.pixels[..., 0] if image.is_gray else image.pixels,
            targets,
            modality=modality,
            source=f"samed2d:{fields['dataset']}",
            source_id=f"{fields['dataset']}--{fields['case']}",
            display=display,
            meta={"file": image_key, "axis": fields["axis"], "slice": fields["slice"]},
        )
        if record is not None:
            done += 1
            if progress:
                progress(done)
    return builder.finish({"name": "sa-med2d", "source": "samed2d", "input": str(root)})
