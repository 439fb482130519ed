"""Writing datasets: images, masks, the JSONL manifest and ``dataset.json``.

Builders hand each image with its ``(label, H x W bool mask)`` targets to
:class:`DatasetWriter`, which validates them (non-empty, same size as the image),
writes the files, computes boxes with :func:`medisee.boxes.mask_to_box` and returns the
:class:`~medisee.data.schema.Record`. The manifest is written atomically at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.io import save_png
from medisee.data.masks import encode_rle, write_mask_png
from medisee.data.schema import SCHEMA_VERSION, Record, SkipReport, Target, slugify

MANIFEST_NAME = "manifest.jsonl"
INFO_NAME = "dataset.json"
MASK_FORMATS = ("rle", "png")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_manifest(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    """Write records as JSONL (one compact JSON object per line), atomically."""
    lines = [
        json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))
        for record in records
    ]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


class DatasetWriter:
    """Writes one dataset directory (see :mod:`medisee.data.schema` for the layout).

    ``mask_format="rle"`` stores masks inline in the manifest (compact, no extra files);
    ``"png"`` writes ``masks/<record id>/<index>_<label>.png``.
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], *, mask_format: str = "rle", overwrite: bool = False
    ) -> None:
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.out_dir = Path(out_dir)
        self.mask_format = mask_format
        manifest = self.out_dir / MANIFEST_NAME
        if manifest.exists() and not overwrite:
            raise FileExistsError(
                f"{manifest} exists; pass overwrite=True (--overwrite) to replace it"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._ids: set[str] = set()

    def has_id(self, record_id: str) -> bool:
        return record_id in self._ids

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    def add(
        self,
        record_id: str,
        image: np.ndarray,
        targets: Sequence[tuple[str, np.ndarray]],
        *,
        modality: str,
        source: str,
        source_id: str,
        display: str | None = None,
        meta: dict[str, Any] | None = None,
        report: SkipReport | None = None,
        provenance: Sequence[str | None] | None = None,
    ) -> Record | None:
        """Write ``image`` (``H x W`` or ``H x W x 3`` uint8) and its targets; return the record.

        ``provenance`` (one entry per target, see :data:`medisee.data.schema.PROVENANCES`)
        goes into each ``Target.provenance``; ``None`` leaves it unrecorded.
        Empty masks and masks of another size are skipped and counted in ``report``;
        a record left without targets is skipped (``None``) and counted too.
        """
        # Imported here: medisee.boxes imports torch, which commands that never touch masks
        # (generate --engine llm, stats) should not pay for at start-up.
        from medisee.boxes import mask_to_box

        report = report if report is not None else SkipReport()
        if record_id in self._ids:
            raise ValueError(f"duplicate record id {record_id!r}")
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"{record_id}: image must be H x W (x 3) uint8, got {image.shape} {image.dtype}"
            )
        height, width = int(image.shape[0]), int(image.shape[1])
        if provenance is None:
            provenance = [None] * len(targets)
        if len(provenance) != len(targets):
            raise ValueError(
                f"{record_id}: {len(provenance)} provenance entries for {len(targets)} targets"
            )
        kept: list[tuple[str, np.ndarray, str | None]] = []
        for (label, mask), origin in zip(targets, provenance):
            if mask.shape != (height, width):
                report.add(
                    "mask size mismatch",
                    f"{record_id}/{label}",
                    f"mask {mask.shape} vs image {(height, width)}",
                )
                continue
            if not mask.any():
                report.add("empty mask", f"{record_id}/{label}")
                continue
            kept.append((label, mask.astype(bool), origin))
        if not kept:
            report.add("no targets left", record_id)
            return None
        image_rel = f"images/{record_id}.png"
        save_png(self.out_dir / image_rel, image)
        record_targets = []
        for index, (label, mask, origin) in enumerate(kept):
            box = mask_to_box(mask)
            assert box is not None  # non-empty, checked above
            if self.mask_format == "rle":
                stored: str | dict[str, Any] = encode_rle(mask)
            else:
                stored = f"masks/{record_id}/{index:02d}_{slugify(label)}.png"
                write_mask_png(self.out_dir / stored, mask)
            record_targets.append(
                Target(
                    label=label,
                    mask=stored,
                    box_xyxy=box,
                    area=int(mask.sum()),
                    provenance=origin,
                )
            )
        self._ids.add(record_id)
        return Record(
            id=record_id,
            image=image_rel,
            modality=modality,
            source=source,
            source_id=source_id,
            height=height,
            width=width,
            targets=record_targets,
            display=display,
            meta=dict(meta or {}),
        )

    def finish(self, records: Sequence[Record], info: dict[str, Any]) -> Path:
        """Write ``manifest.jsonl`` and ``dataset.json`` (``info`` plus counts)."""
        write_manifest(self.manifest_path, records)
        splits: dict[str, int] = {}
        for record in records:
            splits[record.split] = splits.get(record.split, 0) + 1
        payload = {
            "schema_version": SCHEMA_VERSION,
            "manifest": MANIFEST_NAME,
            "num_records": len(records),
            "num_targets": sum(len(r.targets) for r in records),
            "splits": splits,
            "mask_format": self.mask_format,
            **info,
        }
        atomic_write_text(
            self.out_dir / INFO_NAME, json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
        )
        return self.manifest_path
