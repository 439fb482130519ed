"""The release check: a fixed handful of bundled test images, made again from their
sources (the pyradiomics sdist's test patients, the seeded phantom generator), asked the
questions ``medisee release`` recorded, and scored with Dice.

``release.json`` keeps the items and the Dice the release measured on them; CI loads the
shipped weights, scores the same items and compares (``tests/release``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medisee.data.schema import Record
    from medisee.inference.predictor import Predictor

#: the images of the check: real CT with the tumour and with the trachea, real MRI with
#: its tumour, and three phantoms (bundled test split ids)
CHECK_RECORDS = (
    "radiomics-lung2-z020",
    "radiomics-lung2-z038",
    "radiomics-brain2-z009",
    "phantom-chest-ct-00044",
    "phantom-brain-mri-00015",
    "phantom-abdominal-ct-00001",
)
_PHANTOM_ID = re.compile(r"phantom-(?P<kind>[a-z-]+)-(?P<index>\d{5})")
_RADIOMICS_ID = re.compile(r"radiomics-(?P<case>[a-z0-9]+)-z\d{3}")


@dataclass(frozen=True)
class CheckItem:
    """One question about one check image; ``dice`` is what the release measured."""

    record: str
    label: str
    question: str
    dice: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_items(
    records: Sequence[Record], ids: Sequence[str] = CHECK_RECORDS, per_image: int = 6
) -> list[CheckItem]:
    """Per check image, the first reasoning question of each of its first ``per_image``
    targets (from the built manifest's ``records``, in target order)."""
    by_id = {record.id: record for record in records}
    missing = [record_id for record_id in ids if record_id not in by_id]
    if missing:
        raise ValueError(f"check images {missing} are not in the built dataset")
    items: list[CheckItem] = []
    for record_id in ids:
        for target in by_id[record_id].targets[:per_image]:
            qa = next((q for q in target.qa if q.kind == "reasoning"), None)
            if qa is not None:
                items.append(CheckItem(record_id, target.label, qa.question))
    return items


def check_images(ids: Sequence[str], seed: int = 0) -> dict[str, tuple[np.ndarray, dict]]:
    """``{record id: (uint8 image, {label: bool mask})}``, made as ``medisee data build
    --source bundled`` makes them with ``seed`` (phantom ``i`` is drawn from ``(seed, i)``;
    the radiomics slices do not depend on it)."""
    from medisee.data.phantom import generate
    from medisee.data.sources.radiomics import RadiomicsConfig, radiomics_slices

    out: dict[str, tuple[np.ndarray, dict]] = {}
    cases = sorted({m["case"] for i in ids if (m := _RADIOMICS_ID.fullmatch(i))})
    if cases:
        for scan in radiomics_slices(RadiomicsConfig(cases=cases)):
            if scan.record_id in ids:
                out[scan.record_id] = (scan.image, {label: mask for label, mask in scan.targets})
    for record_id in ids:
        match = _PHANTOM_ID.fullmatch(record_id)
        if match is None:
            continue
        phantom = generate(match["kind"].replace("-", "_"), [seed, int(match["index"])])
        out[record_id] = (phantom.image, {label: mask for label, mask in phantom.targets})
    missing = [record_id for record_id in ids if record_id not in out]
    if missing:
        raise ValueError(f"check images {missing}: not radiomics test slices or phantoms")
    return out


def score_items(predictor: Predictor, items: Sequence[CheckItem], seed: int = 0) -> list[CheckItem]:
    """``items`` with ``dice`` set to ``predictor``'s generated answer's Dice (its default
    generation options: greedy, answer constrained to the exam, question prior on)."""
    from medisee.evaluate.metrics import mask_scores

    images = check_images(sorted({item.record for item in items}), seed)
    states = {record_id: predictor.prepare(image) for record_id, (image, _) in images.items()}
    predictions = predictor.predict_batch([(states[item.record], item.question) for item in items])
    scored = []
    for item, prediction in zip(items, predictions):
        masks = images[item.record][1]
        if item.label not in masks:
            raise ValueError(f"{item.record} has no {item.label!r} target")
        dice = mask_scores(prediction.mask, masks[item.label])[0]
        scored.append(CheckItem(item.record, item.label, item.question, round(dice, 4)))
    return scored


def mean_dice(items: Sequence[CheckItem]) -> float:
    values = [item.dice for item in items if item.dice is not None]
    if len(values) != len(items):
        raise ValueError("every item needs a dice to average")
    return float(np.mean(values))
