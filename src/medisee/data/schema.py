"""The medisee dataset record schema (one JSON object per line of a manifest).

A dataset is a directory with ``manifest.jsonl`` (one :class:`Record` per line),
``dataset.json`` (what built it) and the image / mask files the records point to. Paths
inside records are POSIX paths relative to the manifest's directory (absolute paths are
accepted too).

Coordinate convention (the one of :mod:`medisee.boxes`, used everywhere):

* An image is ``H x W`` (rows x columns); ``x`` runs along columns, ``y`` along rows,
  origin at the top-left corner of the stored image.
* ``box_xyxy = (x0, y0, x1, y1)`` is in pixel-edge coordinates of the stored (original)
  image: pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``, so the box of a mask is
  ``(min col, min row, max col + 1, max row + 1)`` (:func:`medisee.boxes.mask_to_box`).
* Masks are ``H x W`` booleans, stored as a PNG (non-zero = inside) or as a COCO RLE dict
  ``{"size": [H, W], "counts": "<compressed string>"}`` (pycocotools, column-major).
* ``display`` says how image columns map to the patient's sides: ``"radiological"``
  (the patient's right is on the image's left, as CT/MRI/X-ray are read), ``"neurological"``
  (patient's right on the image's right) or ``None`` (no patient laterality: photos,
  fundus, endoscopy). Location questions say "left of the image" for image sides and
  "the patient's left" only when ``display`` is set.

Provenance: each target says where its mask comes from (``Target.provenance``):
``"expert"`` (drawn by a human annotator and shipped with the image), ``"derived"``
(computed here by a documented rule: thresholds, connected components, a template's
probability maps), ``"phantom"`` (the generator's ground truth of a synthetic image), or
``None`` when the source does not say (user datasets, manifests written before 1.1).

Versioning: every line carries ``schema_version`` ``"MAJOR.MINOR"``; readers accept the
same major version. Minor versions only add optional fields (1.1: ``Target.provenance``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "1.1"

SPLITS = ("train", "val", "test", "unassigned")
QA_KINDS = ("referring", "reasoning")
PERSPECTIVES = ("attribute", "location")
LENGTHS = ("short", "long")
DISPLAYS = ("radiological", "neurological")
ROLES = ("user", "assistant")
#: Where a target's mask comes from (see the module docstring).
PROVENANCES = ("expert", "derived", "phantom")

#: Canonical modality names. Aliases (SA-Med2D prefixes, DICOM codes) map onto these.
MODALITIES = (
    "CT",
    "MRI",
    "X-ray",
    "mammography",
    "ultrasound",
    "fundus",
    "dermoscopy",
    "endoscopy",
    "PET",
    "OCT",
    "histopathology",
)
_MODALITY_ALIASES = {
    "ct": "CT",
    "mr": "MRI",
    "mri": "MRI",
    "x-ray": "X-ray",
    "xray": "X-ray",
    "x_ray": "X-ray",
    "cr": "X-ray",
    "dx": "X-ray",
    "radiograph": "X-ray",
    "mg": "mammography",
    "mammogram": "mammography",
    "mammography": "mammography",
    "us": "ultrasound",
    "ultrasound": "ultrasound",
    "fundus": "fundus",
    "fundus photography": "fundus",
    "fundus_photography": "fundus",
    "dermoscopy": "dermoscopy",
    "endoscopy": "endoscopy",
    "colonoscopy": "endoscopy",
    "pet": "PET",
    "pt": "PET",
    "oct": "OCT",
    "histopathology": "histopathology",
    "pathology": "histopathology",
}

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def normalize_modality(name: str) -> str:
    """Canonical modality for ``name`` (case-insensitive, accepts aliases such as ``mr_t1``)."""
    key = str(name).strip().lower()
    if key in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[key]
    # SA-Med2D style prefixes: "mr_t1", "ct_00", "ultrasound_00" ...
    head = re.split(r"[_\s-]", key, maxsplit=1)[0]
    if head in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[head]
    for canonical in MODALITIES:
        if key == canonical.lower():
            return canonical
    raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_str(value: Any, name: str, *, allow_empty: bool = False) -> str:
    _require(isinstance(value, str), f"{name} must be a string, got {type(value).__name__}")
    _require(allow_empty or bool(value.strip()), f"{name} must not be empty")
    return value


def check_rle(rle: Mapping[str, Any], where: str = "mask") -> None:
    """Validate the shape of a COCO RLE dict (does not decode it)."""
    _require(isinstance(rle, Mapping), f"{where}: RLE must be a dict")
    _require(set(rle) == {"size", "counts"}, f"{where}: RLE needs exactly 'size' and 'counts'")
    size = rle["size"]
    _require(
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and v > 0 for v in size),
        f"{where}: RLE size must be [H, W] positive ints, got {size!r}",
    )
    counts = rle["counts"]
    _require(
        isinstance(counts, str)
        or (isinstance(counts, list) and all(isinstance(c, int) for c in counts)),
        f"{where}: RLE counts must be a compressed string or a list of ints",
    )


@dataclass
class QAItem:
    """One question about one target.

    ``kind`` is ``"referring"`` (the question names the target: "Segment the liver.") or
    ``"reasoning"`` (implicit: the question must not name the label or its synonyms).
    ``perspective`` is ``"attribute"`` / ``"location"`` for reasoning items, ``None`` for
    referring ones. ``engine`` records what wrote it (``"template"``, ``"llm"``, ``"human"``).
    """

    kind: str
    perspective: str | None
    length: str
    question: str
    answer: str
    explanation: str = ""
    engine: str = "template"

    def __post_init__(self) -> None:
        _require(self.kind in QA_KINDS, f"QAItem.kind must be one of {QA_KINDS}, got {self.kind!r}")
        if self.kind == "reasoning":
            _require(
                self.perspective in PERSPECTIVES,
                f"reasoning QAItem.perspective must be one of {PERSPECTIVES}, got {self.perspective!r}",
            )
        else:
            _require(
                self.perspective is None or self.perspective in PERSPECTIVES,
                f"QAItem.perspective must be None or one of {PERSPECTIVES}",
            )
        _require(
            self.length in LENGTHS, f"QAItem.length must be one of {LENGTHS}, got {self.length!r}"
        )
        _check_str(self.question, "QAItem.question")
        _check_str(self.answer, "QAItem.answer")
        _check_str(self.explanation, "QAItem.explanation", allow_empty=True)
        _check_str(self.engine, "QAItem.engine")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "perspective": self.perspective,
            "length": self.length,
            "question": self.question,
            "answer": self.answer,
            "explanation": self.explanation,
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QAItem:
        _require(isinstance(data, Mapping), "QAItem must be a JSON object")
        unknown = set(data) - {
            "kind",
            "perspective",
            "length",
            "question",
            "answer",
            "explanation",
            "engine",
        }
        _require(not unknown, f"QAItem has unknown fields {sorted(unknown)}")
        try:
            return cls(
                kind=data["kind"],
                perspective=data.get("perspective"),
                length=data["length"],
                question=data["question"],
                answer=data["answer"],
                explanation=data.get("explanation", ""),
                engine=data.get("engine", "template"),
            )
        except KeyError as error:
            raise ValueError(f"QAItem is missing field {error.args[0]!r}") from None


@dataclass
class Turn:
    """One turn of a multi-turn conversation about a record's image.

    ``target`` is the index (into ``Record.targets``) of the object an assistant turn
    segments, or ``None`` for a text-only turn. User turns never carry a target.
    """

    role: str
    text: str
    target: int | None = None

    def __post_init__(self) -> None:
        _require(self.role in ROLES, f"Turn.role must be one of {ROLES}, got {self.role!r}")
        _check_str(self.text, "Turn.text")
        if self.target is not None:
            _require(
                isinstance(self.target, int) and self.target >= 0,
                "Turn.target must be a non-negative int",
            )
            _require(self.role == "assistant", "only assistant turns can carry a target")

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "target": self.target}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        _require(isinstance(data, Mapping), "Turn must be a JSON object")
        try:
            return cls(role=data["role"], text=data["text"], target=data.get("target"))
        except KeyError as error:
            raise ValueError(f"Turn is missing field {error.args[0]!r}") from None


@dataclass
class Target:
    """One object to segment in a record's image.

    ``mask`` is a path (relative to the manifest directory) to a PNG mask or a COCO RLE
    dict; ``box_xyxy`` is the tight pixel-edge box of that mask (see the module docstring);
    ``area`` is its pixel count; ``provenance`` is one of :data:`PROVENANCES` or ``None``
    (not recorded; see the module docstring).
    """

    label: str
    mask: str | dict[str, Any]
    box_xyxy: tuple[int, int, int, int]
    area: int
    qa: list[QAItem] = field(default_factory=list)
    provenance: str | None = None

    def __post_init__(self) -> None:
        _check_str(self.label, "Target.label")
        _require(self.label == self.label.strip(), "Target.label has surrounding whitespace")
        if isinstance(self.mask, str):
            _check_str(self.mask, "Target.mask")
        else:
            check_rle(self.mask, f"target {self.label!r} mask")
        box = tuple(self.box_xyxy)
        _require(
            len(box) == 4 and all(isinstance(v, int) for v in box),
            f"target {self.label!r}: box_xyxy must be 4 ints, got {self.box_xyxy!r}",
        )
        x0, y0, x1, y1 = box
        _require(
            0 <= x0 < x1 and 0 <= y0 < y1,
            f"target {self.label!r}: box_xyxy {box} must satisfy 0 <= x0 < x1, 0 <= y0 < y1",
        )
        self.box_xyxy = box  # type: ignore[assignment]
        _require(
            isinstance(self.area, int) and self.area > 0,
            f"target {self.label!r}: area must be a positive int (empty masks are not targets)",
        )
        _require(
            self.area <= (x1 - x0) * (y1 - y0),
            f"target {self.label!r}: area {self.area} exceeds its box",
        )
        for item in self.qa:
            _require(isinstance(item, QAItem), "Target.qa must hold QAItem objects")
        _require(
            self.provenance is None or self.provenance in PROVENANCES,
            f"target {self.label!r}: provenance must be None or one of {PROVENANCES}, "
            f"got {self.provenance!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "mask": self.mask if isinstance(self.mask, str) else dict(self.mask),
            "box_xyxy": list(self.box_xyxy),
            "area": self.area,
            "provenance": self.provenance,
            "qa": [item.to_dict() for item in self.qa],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        _require(isinstance(data, Mapping), "Target must be a JSON object")
        unknown = set(data) - {"label", "mask", "box_xyxy", "area", "qa", "provenance"}
        _require(not unknown, f"Target has unknown fields {sorted(unknown)}")
        try:
            qa = data.get("qa") or []
            _require(isinstance(qa, list), "Target.qa must be a list")
            return cls(
                label=data["label"],
                mask=data["mask"],
                box_xyxy=tuple(data["box_xyxy"]),
                area=data["area"],
                qa=[QAItem.from_dict(item) for item in qa],
                provenance=data.get("provenance"),  # absent before schema 1.1
            )
        except KeyError as error:
            raise ValueError(f"Target is missing field {error.args[0]!r}") from None


@dataclass
class Record:
    """One image with its targets (see the module docstring for conventions).

    ``source_id`` names the image or volume the record comes from: all records sharing
    it land in the same split (slices of one CT volume never straddle train and test).
    """

    id: str
    image: str
    modality: str
    source: str
    source_id: str
    height: int
    width: int
    targets: list[Target]
    split: str = "unassigned"
    display: str | None = None
    conversation: list[Turn] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str(self.id, "Record.id")
        _require(
            bool(_ID_RE.match(self.id)),
            f"Record.id {self.id!r} must match {_ID_RE.pattern} (it names files)",
        )
        _check_str(self.image, "Record.image")
        self.modality = normalize_modality(self.modality)
        _check_str(self.source, "Record.source")
        _check_str(self.source_id, "Record.source_id")
        _require(
            isinstance(self.height, int) and isinstance(self.width, int),
            "Record.height/width must be ints",
        )
        _require(self.height > 0 and self.width > 0, "Record.height/width must be positive")
        _require(self.split in SPLITS, f"Record.split must be one of {SPLITS}, got {self.split!r}")
        _require(
            self.display is None or self.display in DISPLAYS,
            f"Record.display must be None or one of {DISPLAYS}, got {self.display!r}",
        )
        _require(isinstance(self.meta, dict), "Record.meta must be a dict")
        for target in self.targets:
            _require(isinstance(target, Target), "Record.targets must hold Target objects")
            self.check_target_frame(target)
        if self.conversation is not None:
            _require(len(self.conversation) > 0, "Record.conversation must be None or non-empty")
            for turn in self.conversation:
                if turn.target is not None:
                    _require(
                        turn.target < len(self.targets),
                        f"record {self.id}: conversation turn targets #{turn.target} "
                        f"but there are {len(self.targets)} targets",
                    )

    def check_target_frame(self, target: Target) -> None:
        """Raise ``ValueError`` if ``target``'s box or RLE size is outside this image."""
        x0, y0, x1, y1 = target.box_xyxy
        _require(
            x1 <= self.width and y1 <= self.height,
            f"record {self.id}: box {target.box_xyxy} of {target.label!r} exceeds the "
            f"{self.width}x{self.height} (WxH) image",
        )
        if isinstance(target.mask, Mapping):
            _require(
                list(target.mask["size"]) == [self.height, self.width],
                f"record {self.id}: RLE size {target.mask['size']} of {target.label!r} != "
                f"image [H, W] = [{self.height}, {self.width}]",
            )

    @property
    def labels(self) -> list[str]:
        return [target.label for target in self.targets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "image": self.image,
            "modality": self.modality,
            "source": self.source,
            "source_id": self.source_id,
            "split": self.split,
            "height": self.height,
            "width": self.width,
            "display": self.display,
            "targets": [target.to_dict() for target in self.targets],
            "conversation": (
                None if self.conversation is None else [t.to_dict() for t in self.conversation]
            ),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Parse one manifest line; raises ``ValueError`` with the reason if it is invalid."""
        _require(isinstance(data, Mapping), "a record must be a JSON object")
        check_schema_version(data.get("schema_version"))
        known = {
            "schema_version",
            "id",
            "image",
            "modality",
            "source",
            "source_id",
            "split",
            "height",
            "width",
            "display",
            "targets",
            "conversation",
            "meta",
        }
        unknown = set(data) - known
        _require(not unknown, f"record has unknown fields {sorted(unknown)}")
        try:
            targets = data["targets"]
            _require(isinstance(targets, list), "Record.targets must be a list")
            conversation = data.get("conversation")
            _require(
                conversation is None or isinstance(conversation, list),
                "Record.conversation must be a list or null",
            )
            return cls(
                id=data["id"],
                image=data["image"],
                modality=data["modality"],
                source=data["source"],
                source_id=data["source_id"],
                split=data.get("split", "unassigned"),
                height=data["height"],
                width=data["width"],
                display=data.get("display"),
                targets=[Target.from_dict(t) for t in targets],
                conversation=(
                    None if conversation is None else [Turn.from_dict(t) for t in conversation]
                ),
                meta=dict(data.get("meta") or {}),
            )
        except KeyError as error:
            raise ValueError(f"record is missing field {error.args[0]!r}") from None


def exam_kind(record: Record) -> str:
    """The record's kind of exam: ``meta["kind"]`` where its source gives one
    (``brain_mri``, ``chest_ct``, ``mammography``...: modality and body region), else its
    modality."""
    kind = (record.meta or {}).get("kind")
    return str(kind) if kind else str(record.modality)


class SchemaVersionError(ValueError):
    """A record written with a schema major version this medisee cannot read."""


def check_schema_version(version: Any) -> None:
    """Accept ``"MAJOR.MINOR"`` strings with our major version; raise
    :class:`SchemaVersionError` otherwise."""
    if not isinstance(version, str):
        raise SchemaVersionError(f"schema_version missing or not a string: {version!r}")
    major = version.split(".", 1)[0]
    ours = SCHEMA_VERSION.split(".", 1)[0]
    if major != ours:
        raise SchemaVersionError(
            f"unsupported schema_version {version!r} (this medisee reads {ours}.x)"
        )


class SkipReport:
    """What a loader or builder skipped and why: counts per reason plus a few examples.

    Loaders never drop input silently; they add a reason here. Typical reasons:
    ``"invalid json"``, ``"schema error"``, ``"missing image"``, ``"corrupt image"``,
    ``"image size mismatch"``, ``"mask size mismatch"``, ``"empty mask"``,
    ``"box mismatch"``, ``"unknown label"``, ``"no targets left"``.
    """

    def __init__(self, max_examples: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(f"{where}: {detail}" if detail else where)

    def merge(self, other: SkipReport) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            bucket = self.examples.setdefault(reason, [])
            room = self.max_examples - len(bucket)
            bucket.extend(other.examples.get(reason, [])[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        lines = [f"skipped {self.total}:"]
        for reason, count in self.counts.most_common():
            lines.append(f"  {reason}: {count}")
            lines.extend(f"    e.g. {example}" for example in self.examples.get(reason, [])[:2])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipReport({dict(self.counts)})"


def slugify(text: str) -> str:
    """File-name-safe form of a label or id (``"Left kidney"`` -> ``"left_kidney"``)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text.strip().lower()).strip("_")
    return slug or "x"


def iter_qa(records: Iterable[Record]) -> Iterable[tuple[Record, int, int]]:
    """Yield ``(record, target_index, qa_index)`` for every QA item."""
    for record in records:
        for t_index, target in enumerate(record.targets):
            for q_index in range(len(target.qa)):
                yield record, t_index, q_index
