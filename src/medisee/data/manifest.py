"""Reading manifests with validation: every skipped line or target has a counted reason.

:func:`read_manifest` parses ``manifest.jsonl``; with ``check_files=True`` it also decodes
every image and mask and checks sizes, emptiness and boxes; with an ontology it drops
targets whose label it does not know. Nothing is dropped silently: the returned
:class:`~medisee.data.schema.SkipReport` counts each reason (see its docstring).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from medisee.data.io import ImageReadError, read_image
from medisee.data.masks import MaskError, load_mask
from medisee.data.ontology import Ontology
from medisee.data.schema import Record, SchemaVersionError, SkipReport, Target
from medisee.data.writer import MANIFEST_NAME

logger = logging.getLogger(__name__)


def resolve_manifest(path: str | os.PathLike[str]) -> Path:
    """A dataset directory or a manifest file -> the manifest path."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}")
    return path


def resolve_path(root: str | os.PathLike[str], relative: str) -> Path:
    """A record path (relative to the manifest directory, or absolute) -> a real path."""
    path = Path(relative)
    return path if path.is_absolute() else Path(root) / path


def _check_target(
    record: Record, index: int, target: Target, root: Path, report: SkipReport
) -> bool:
    # Imported here: medisee.boxes imports torch, which commands that never touch masks
    # (generate --engine llm, stats) should not pay for at start-up.
    from medisee.boxes import mask_to_box

    where = f"{record.id}/{target.label}"
    try:
        mask = load_mask(target.mask, root, shape=(record.height, record.width))
    except FileNotFoundError:
        report.add("missing mask", where, str(target.mask))
        return False
    except MaskError as error:
        reason = "mask size mismatch" if "image is" in str(error) else "corrupt mask"
        report.add(reason, where, str(error))
        return False
    box = mask_to_box(mask)
    if box is None:
        report.add("empty mask", where)
        return False
    if tuple(box) != tuple(target.box_xyxy) or int(mask.sum()) != target.area:
        report.add(
            "box mismatch",
            where,
            f"stored box {target.box_xyxy} area {target.area}, mask gives {box} area {int(mask.sum())}",
        )
        return False
    return True


def _check_image(record: Record, root: Path, report: SkipReport) -> bool:
    path = resolve_path(root, record.image)
    if not path.exists():
        report.add("missing image", record.id, str(path))
        return False
    try:
        image = read_image(path)
    except (ImageReadError, ValueError) as error:
        report.add("corrupt image", record.id, str(error))
        return False
    if (image.height, image.width) != (record.height, record.width):
        report.add(
            "image size mismatch",
            record.id,
            f"file is {image.height}x{image.width}, record says {record.height}x{record.width} (HxW)",
        )
        return False
    return True


def _filter_targets(record: Record, keep: list[int], report: SkipReport) -> Record | None:
    """``record`` with only the targets in ``keep``; conversations are re-indexed or,
    if they point at a dropped target, removed (and counted)."""
    if not keep:
        report.add("no targets left", record.id)
        return None
    if len(keep) == len(record.targets):
        return record
    new_index = {old: new for new, old in enumerate(keep)}
    conversation = record.conversation
    if conversation is not None:
        if any(turn.target is not None and turn.target not in new_index for turn in conversation):
            report.add("conversation dropped", record.id, "it refers to a skipped target")
            conversation = None
        else:
            conversation = [
                replace(turn, target=None if turn.target is None else new_index[turn.target])
                for turn in conversation
            ]
    return replace(record, targets=[record.targets[i] for i in keep], conversation=conversation)


def read_manifest(
    path: str | os.PathLike[str],
    *,
    check_files: bool = False,
    ontology: Ontology | None = None,
    report: SkipReport | None = None,
) -> tuple[list[Record], SkipReport]:
    """Parse a manifest (or a dataset directory) into records, skipping invalid input.

    Returns ``(records, report)``. Blank lines are ignored; everything else that is not
    kept is counted in ``report`` with its reason. ``check_files`` decodes images and masks
    (slower; use it once, e.g. in ``medisee data stats --check``).
    """
    manifest = resolve_manifest(path)
    root = manifest.parent
    report = report if report is not None else SkipReport()
    records: list[Record] = []
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{manifest.name}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                report.add("invalid json", where, str(error))
                continue
            try:
                record = Record.from_dict(data)
            except SchemaVersionError as error:
                report.add("unsupported schema version", where, str(error))
                continue
            except (ValueError, TypeError) as error:
                report.add("schema error", where, str(error))
                continue
            if record.id in seen:
                report.add("duplicate id", where, record.id)
                continue
            seen.add(record.id)
            keep = list(range(len(record.targets)))
            if ontology is not None:
                kept = []
                for i in keep:
                    if ontology.resolve(record.targets[i].label) is None:
                        report.add("unknown label", f"{record.id}/{record.targets[i].label}")
                    else:
                        kept.append(i)
                keep = kept
            if check_files:
                if not _check_image(record, root, report):
                    continue
                keep = [
                    i for i in keep if _check_target(record, i, record.targets[i], root, report)
                ]
            filtered = _filter_targets(record, keep, report)
            if filtered is not None:
                records.append(filtered)
    return records, report


def load_records(manifest: str | os.PathLike[str]) -> tuple[list[Record], Path]:
    """Records of a manifest (invalid ones skipped with a warning) and the directory their
    relative paths start from."""
    records, report = read_manifest(manifest)
    if report:
        logger.warning("manifest %s: skipped %s", manifest, report.summary())
    return records, resolve_manifest(manifest).parent
