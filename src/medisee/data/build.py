"""What all dataset builders share: template QA on the fly, splits, the final write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.geometry import Layout
from medisee.data.ontology import Ontology
from medisee.data.qa_template import TemplateEngine
from medisee.data.schema import QAItem, Record, SkipReport
from medisee.data.splits import DEFAULT_RATIOS, assign_splits, check_no_leakage, check_ratios
from medisee.data.writer import MASK_FORMATS, DatasetWriter

QA_MODES = ("template", "none")


@dataclass(frozen=True)
class BuildOptions:
    """The build options shared by every source (bundled, folder, SA-Med2D, NIfTI).

    - ``seed``: seed for phantoms, QA wording and the split;
    - ``mask_format``: ``"rle"`` (masks inline in the manifest) or ``"png"`` (mask files);
    - ``qa``: ``"template"`` (template QA while building) or ``"none"``;
    - ``ratios``: train, val and test fractions (by source image/volume; normalised by
      the split);
    - ``overwrite``: replace an existing manifest in the output directory;
    - ``allow_unknown_labels``: keep labels that are not in the ontology (verbatim,
      lower-cased) instead of skipping and counting them;
    - ``train_qa_variants`` = n > 0: n more template draws per image (other facts,
      location descriptors and wording for the same targets); their new reasoning
      questions are added to the images that the split puts in ``train`` only, so
      validation and test questions are exactly those of a build without it.

    Invalid values raise ``ValueError`` naming the field.
    """

    seed: int = 0
    mask_format: str = "rle"
    qa: str = "template"
    ratios: Sequence[float] = DEFAULT_RATIOS
    overwrite: bool = False
    allow_unknown_labels: bool = False
    train_qa_variants: int = 0

    def __post_init__(self) -> None:
        if self.qa not in QA_MODES:
            raise ValueError(f"qa must be one of {QA_MODES}, got {self.qa!r}")
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {self.mask_format!r}")
        if self.train_qa_variants < 0:
            raise ValueError(f"train_qa_variants must be >= 0, got {self.train_qa_variants}")
        try:
            check_ratios(self.ratios)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"ratios must be three non-negative numbers (train, val, test) with a "
                f"positive sum, got {self.ratios!r}"
            ) from error
        # A tuple, so the options are immutable (the values themselves are kept as given).
        object.__setattr__(self, "ratios", tuple(self.ratios))


@dataclass
class BuildResult:
    """A finished build: where the manifest is, its records, and what was skipped."""

    manifest: Path
    records: list[Record]
    report: SkipReport
    qa_report: SkipReport
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        targets = sum(len(r.targets) for r in self.records)
        qa = sum(len(t.qa) for r in self.records for t in r.targets)
        labels = {t.label for r in self.records for t in r.targets}
        modalities = sorted({r.modality for r in self.records})
        lines = [
            f"wrote {self.manifest}: {len(self.records)} images, {targets} targets, "
            f"{len(labels)} labels, {qa} QA items, modalities {', '.join(modalities)} "
            f"in {self.seconds:.1f} s",
            f"input problems: {self.report.summary()}",
            f"QA generation: {self.qa_report.summary()}",
        ]
        return "\n".join(lines)


class Builder:
    """Collects records from a source and writes the dataset (QA, splits, manifest).

    Usage: ``builder.add(...)`` per image (masks are only held while QA is generated),
    then ``builder.finish(info)``. ``options`` (default ``BuildOptions()``): see
    :class:`BuildOptions`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        options: BuildOptions | None = None,
        *,
        ontology: Ontology | None = None,
    ) -> None:
        options = options if options is not None else BuildOptions()
        self.options = options
        self.writer = DatasetWriter(
            out_dir, mask_format=options.mask_format, overwrite=options.overwrite
        )
        self.ontology = ontology if ontology is not None else Ontology.load()
        self.engine = (
            TemplateEngine(self.ontology, seed=options.seed) if options.qa == "template" else None
        )
        # Per record id, per target: reasoning items of the extra draws (kept until the
        # split is known; text only).
        self._variant_items: dict[str, list[list[QAItem]]] = {}
        self.records: list[Record] = []
        self.report = SkipReport()
        self.qa_report = SkipReport()
        self._start = time.perf_counter()

    def canonical_label(self, label: str, where: str) -> str | None:
        """The ontology's canonical form of ``label``; unknown labels are skipped and
        counted (or kept verbatim, lower-cased, with ``allow_unknown_labels``)."""
        resolved = self.ontology.resolve(label)
        if resolved is not None:
            return resolved.label
        if self.allow_unknown_labels:
            return " ".join(label.replace("_", " ").split()).lower()
        self.report.add("unknown label", where, repr(label))
        return None

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def ratios(self) -> Sequence[float]:
        return self.options.ratios

    @property
    def allow_unknown_labels(self) -> bool:
        return self.options.allow_unknown_labels

    @property
    def train_qa_variants(self) -> int:
        """Extra template draws; none without template QA."""
        return self.options.train_qa_variants if self.options.qa == "template" else 0

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
        provenance: str | Sequence[str | None] | None = None,
        split: str | None = None,
    ) -> Record | None:
        """Add one image with its ``(label, mask)`` targets; returns the record (``None`` if
        nothing was left to keep).

        ``provenance``: one value for every target or one per target (see
        :data:`medisee.data.schema.PROVENANCES`). ``split``: pin this record to a split
        (``"train"``, ``"val"`` or ``"test"``; e.g. a held-out patient) instead of leaving it
        to :func:`medisee.data.splits.assign_splits`; records of one ``source_id`` must be
        pinned alike.
        """
        if split is not None and split not in ("train", "val", "test"):
            raise ValueError(f"split must be None, 'train', 'val' or 'test', got {split!r}")
        origins: Sequence[str | None] = (
            [provenance] * len(targets)
            if provenance is None or isinstance(provenance, str)
            else provenance
        )
        if len(origins) != len(targets):
            raise ValueError(
                f"{record_id}: {len(origins)} provenance entries for {len(targets)} targets"
            )
        canonical = []
        origin_of: dict[str, str | None] = {}
        for (label, mask), origin in zip(targets, origins):
            name = self.canonical_label(label, f"{record_id}/{label}")
            if name is not None:
                canonical.append((name, mask))
                origin_of[name] = _weaker(origin_of[name], origin) if name in origin_of else origin
        merged = _merge_same_label(canonical)
        base, suffix = record_id, 2
        while self.writer.has_id(record_id):  # two inputs slugified to the same id
            record_id, suffix = f"{base}-{suffix}", suffix + 1
        record = self.writer.add(
            record_id,
            image,
            merged,
            modality=modality,
            source=source,
            source_id=source_id,
            display=display,
            meta=meta,
            report=self.report,
            provenance=[origin_of[label] for label, _ in merged],
        )
        if record is None:
            return None
        if split is not None:
            record.split = split
        if self.engine is not None:
            label_masks = {
                label: mask
                for label, mask in merged
                if mask.shape == image.shape[:2] and mask.any()
            }
            masks = [label_masks[target.label] for target in record.targets]
            # One layout serves the record and all its variant draws.
            layout = Layout([t.label for t in record.targets], masks) if masks else None
            result = self.engine.generate(record, masks, layout=layout)
            for target, items in zip(record.targets, result.qa):
                target.qa = items
            record.conversation = result.conversation
            self.qa_report.merge(result.report)
            if self.train_qa_variants:
                extra: list[list[QAItem]] = [[] for _ in record.targets]
                for variant in range(1, self.train_qa_variants + 1):
                    drawn = self.engine.generate(record, masks, variant=variant, layout=layout)
                    for items, more in zip(extra, drawn.qa):
                        items += [item for item in more if item.kind == "reasoning"]
                self._variant_items[record.id] = extra
        self.records.append(record)
        return record

    def _add_variant_questions(self) -> int:
        """Append the extra draws' questions (new wording only) to training images."""
        added = 0
        for record in self.records:
            extra = self._variant_items.get(record.id)
            if record.split != "train" or extra is None:
                continue
            for target, items in zip(record.targets, extra):
                seen = {item.question for item in target.qa}
                for item in items:
                    if item.question not in seen:
                        seen.add(item.question)
                        target.qa.append(item)
                        added += 1
        return added

    def finish(self, info: dict[str, Any]) -> BuildResult:
        if not self.records:
            raise ValueError(f"no usable images; {self.report.summary()}")
        # Pinned records keep their split; the others are split as if alone.
        unpinned = [record for record in self.records if record.split == "unassigned"]
        assign_splits(unpinned, self.ratios, seed=self.seed)
        check_no_leakage(self.records)
        added = self._add_variant_questions()
        info = {
            **info,
            "train_qa_variants": self.train_qa_variants,
            "train_variant_questions": added,
            "seed": self.seed,
            "split_ratios": list(self.ratios),
            "skipped": self.report.to_dict(),
        }
        manifest = self.writer.finish(self.records, info)
        return BuildResult(
            manifest,
            self.records,
            self.report,
            self.qa_report,
            time.perf_counter() - self._start,
            info,
        )


def _merge_same_label(targets: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """One target per label: masks of repeated labels (instances) are united, so a
    referring question "segment the X" has one answer."""
    merged: dict[str, np.ndarray] = {}
    for label, mask in targets:
        if label in merged and merged[label].shape == mask.shape:
            merged[label] = merged[label] | mask.astype(bool)
        elif label not in merged:
            merged[label] = mask.astype(bool)
    return list(merged.items())


_PROVENANCE_RANK = {"expert": 0, "derived": 1, "phantom": 2}


def _weaker(a: str | None, b: str | None) -> str | None:
    """The provenance of two masks united under one label: the less trustworthy one
    (``None``, unknown, wins over any value)."""
    if a is None or b is None:
        return None
    return a if _PROVENANCE_RANK.get(a, 3) >= _PROVENANCE_RANK.get(b, 3) else b
