"""Both sides of a paired structure, asked for in the plural ("Where are the lungs?").

The model answers a question with one target, so "Where are the lungs?" got one lung
("Sure, this is the left lung.") and "Segment the kidneys." one kidney. A plain request
for a paired structure in the plural, with no side (``medisee.model.asked_structure.
both_sides``), is therefore also asked once per side ("Where is the left lung?", "Where is
the right lung?"), and where both are found the two answers make one prediction
(:func:`merge_sides`): the union of the masks, the box around both, and a reply that names
the pair ("Sure, these are the lungs.") followed by each side's explanation. Where one side
is found its answer stands; where neither is, the question as asked is answered (for
instance with why the image's exam cannot show it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medisee.inference.knowledge import ANSWER_SENTENCE

if TYPE_CHECKING:  # pragma: no cover
    from medisee.inference.predictor import Prediction


def side_question(label: str) -> str:
    """The question asked for one side: a plain request for ``label``."""
    return f"Where is the {label}?"


def merge_sides(plural: str, sides: Sequence[Prediction]) -> Prediction | None:
    """One prediction from the answers for each side of ``plural`` ("lungs"): ``None`` when
    no side was found, the found side's answer when one was, else their union. The
    merged reply's raw text is its shown text: it has no candidate tokens of its own."""
    found = [prediction for prediction in sides if prediction.found_target]
    if len(found) < 2:
        return found[0] if found else None
    boxes = [prediction.box for prediction in found if prediction.box is not None]
    box = (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    normalized = [p.box_normalized for p in found if p.box_normalized is not None]
    corners = [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy, w, h in normalized]
    x0, y0 = min(c[0] for c in corners), min(c[1] for c in corners)
    x1, y1 = max(c[2] for c in corners), max(c[3] for c in corners)
    explanations = [ANSWER_SENTENCE.sub("", p.text, count=1).strip() for p in found]
    text = " ".join([f"Sure, these are the {plural}.", *(e for e in explanations if e)])
    ious = [p.scores["iou"] for p in found if p.scores.get("iou") is not None]
    mask = np.logical_or.reduce([p.mask for p in found])
    first = found[0]
    scores = {
        **first.scores,
        "iou": sum(ious) / len(ious) if ious else None,
        "mask_pixels": int(mask.sum()),
        "new_tokens": sum(int(p.scores.get("new_tokens", 0)) for p in found),
        "explanation": (
            "ontology" if any(p.scores.get("explanation") == "ontology" for p in found) else "model"
        ),
        "position_from_mask": any(bool(p.scores.get("position_from_mask")) for p in found),
        # The sides asked and found, each with its own answer (``medisee.inference.paired``).
        "sides": [p.text for p in found],
    }
    return dataclasses.replace(
        first,
        mask=mask,
        box=box,
        box_normalized=((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0),
        text=text,
        raw_text=text,
        scores=scores,
    )
