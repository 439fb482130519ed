"""Training/evaluation samples: one ``(record, target, QA item)`` per sample.

The trainer mixes referring and reasoning samples at a ratio (paper: 7:3); every sample
says which it is in :attr:`Sample.kind`. Images load as ``H x W x 3`` uint8 display
pixels, masks as ``H x W`` bool, both in the original image frame; boxes are pixel-edge
``xyxy`` in that frame (:mod:`medisee.boxes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.io import read_image
from medisee.data.manifest import read_manifest, resolve_manifest, resolve_path
from medisee.data.masks import load_mask
from medisee.data.schema import QA_KINDS, QAItem, Record, SkipReport, Target


def load_record_image(record: Record, root: str | os.PathLike[str]) -> np.ndarray:
    """The record's image as ``H x W x 3`` uint8 (checked against the record's size)."""
    image = read_image(resolve_path(root, record.image)).pixels
    if image.shape[:2] != (record.height, record.width):
        raise ValueError(
            f"record {record.id}: image is {image.shape[0]}x{image.shape[1]}, "
            f"record says {record.height}x{record.width} (HxW)"
        )
    return image


def load_target_mask(
    record: Record, target: Target | int, root: str | os.PathLike[str]
) -> np.ndarray:
    """A target's mask as ``H x W`` bool (``target`` is a Target or its index)."""
    if isinstance(target, int):
        target = record.targets[target]
    return load_mask(target.mask, root, shape=(record.height, record.width))


@dataclass(frozen=True)
class Sample:
    """One question about one target; ``qa_index`` is ``None`` for a label-only sample."""

    record: Record
    target_index: int
    qa_index: int | None
    root: Path

    @property
    def target(self) -> Target:
        return self.record.targets[self.target_index]

    @property
    def qa(self) -> QAItem | None:
        return None if self.qa_index is None else self.target.qa[self.qa_index]

    @property
    def kind(self) -> str:
        """``"referring"`` (names the label) or ``"reasoning"`` (implicit question)."""
        return "referring" if self.qa is None else self.qa.kind

    @property
    def label(self) -> str:
        return self.target.label

    @property
    def question(self) -> str:
        """The question; label-only samples get ``"Segment the <label>."``."""
        return f"Segment the {self.label}." if self.qa is None else self.qa.question

    @property
    def answer(self) -> str:
        return f"Sure, this is the {self.label}." if self.qa is None else self.qa.answer

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        return self.target.box_xyxy

    def load_image(self) -> np.ndarray:
        """``H x W x 3`` uint8."""
        return load_record_image(self.record, self.root)

    def load_mask(self) -> np.ndarray:
        """``H x W`` bool."""
        return load_target_mask(self.record, self.target, self.root)

    def to_dict(self, *, with_arrays: bool = False) -> dict[str, Any]:
        item = self.qa
        data: dict[str, Any] = {
            "record_id": self.record.id,
            "target_index": self.target_index,
            "label": self.label,
            "kind": self.kind,
            "perspective": None if item is None else item.perspective,
            "length": "short" if item is None else item.length,
            "question": self.question,
            "answer": self.answer,
            "explanation": "" if item is None else item.explanation,
            "box_xyxy": self.box_xyxy,
            "height": self.record.height,
            "width": self.record.width,
            "modality": self.record.modality,
            "split": self.record.split,
        }
        if with_arrays:
            data["image"] = self.load_image()
            data["mask"] = self.load_mask()
        return data


def flatten(
    records: Iterable[Record],
    root: str | os.PathLike[str],
    *,
    kinds: Sequence[str] = QA_KINDS,
    splits: Sequence[str] | None = None,
    label_only_fallback: bool = True,
) -> list[Sample]:
    """All ``(record, target, qa_item)`` samples of the given kinds (and splits).

    Targets without any QA item give one label-only referring sample when
    ``label_only_fallback`` (so a manifest built with ``--qa none`` still trains).
    """
    unknown = set(kinds) - set(QA_KINDS)
    if unknown:
        raise ValueError(f"unknown sample kinds {sorted(unknown)}; use {QA_KINDS}")
    root = Path(root)
    samples = []
    for record in records:
        if splits is not None and record.split not in splits:
            continue
        for t_index, target in enumerate(record.targets):
            if not target.qa:
                if label_only_fallback and "referring" in kinds:
                    samples.append(Sample(record, t_index, None, root))
                continue
            for q_index, item in enumerate(target.qa):
                if item.kind in kinds:
                    samples.append(Sample(record, t_index, q_index, root))
    return samples


class ManifestDataset:
    """Samples of a manifest, indexable: ``dataset[i]`` -> dict with ``image`` (``H x W x 3``
    uint8), ``mask`` (``H x W`` bool), ``box_xyxy``, ``question``, ``answer``,
    ``explanation``, ``kind`` ... (see :meth:`Sample.to_dict`). Torch-free; wrap it in a
    ``torch.utils.data.Dataset`` in the trainer.
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        *,
        splits: Sequence[str] | None = None,
        kinds: Sequence[str] = QA_KINDS,
        check_files: bool = False,
    ) -> None:
        path = resolve_manifest(manifest)
        self.root = path.parent
        self.records, self.report = read_manifest(path, check_files=check_files)
        self.samples = flatten(self.records, self.root, kinds=kinds, splits=splits)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index].to_dict(with_arrays=True)

    def indices_by_kind(self) -> dict[str, list[int]]:
        """Sample indices per kind, for a sampler that mixes them at a ratio."""
        out: dict[str, list[int]] = {kind: [] for kind in QA_KINDS}
        for i, sample in enumerate(self.samples):
            out[sample.kind].append(i)
        return out

    @property
    def skipped(self) -> SkipReport:
        return self.report
