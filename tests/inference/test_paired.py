"""Both sides of a paired structure made one answer (``medisee.inference.paired``)."""

from __future__ import annotations

import numpy as np

from medisee.inference.paired import merge_sides, side_question
from medisee.inference.predictor import Prediction


def _side(label: str, rows: slice, box, found: bool = True) -> Prediction:
    mask = np.zeros((10, 20), dtype=bool)
    if found:
        mask[rows, :5] = True
    text = (
        f"Sure, this is the {label}. The {label} lies in the lower part of the image."
        if found
        else f"The {label} is not shown on this kind of image."
    )
    return Prediction(
        mask=mask,
        box=box if found else None,
        text=text,
        scores={"found_target": found, "iou": 0.5 if found else None, "new_tokens": 3},
        raw_text=text + " <cand_0>",
        box_normalized=(0.5, 0.5, 0.2, 0.2) if found else None,
    )


def test_both_sides_found_make_one_answer() -> None:
    left = _side("left lung", slice(0, 3), (0.0, 0.0, 5.0, 3.0))
    right = _side("right lung", slice(6, 9), (0.0, 6.0, 5.0, 9.0))
    merged = merge_sides("lungs", [left, right])
    assert merged is not None
    assert merged.text == (
        "Sure, these are the lungs. The left lung lies in the lower part of the image. "
        "The right lung lies in the lower part of the image."
    )
    assert merged.raw_text == merged.text
    assert merged.box == (0.0, 0.0, 5.0, 9.0)
    assert np.array_equal(merged.mask, left.mask | right.mask)
    assert merged.scores["mask_pixels"] == 30 and merged.scores["new_tokens"] == 6
    assert merged.scores["sides"] == [left.text, right.text]


def test_one_side_found_stands_and_none_gives_none() -> None:
    left = _side("left lung", slice(0, 3), (0.0, 0.0, 5.0, 3.0))
    missing = _side("right lung", slice(0, 0), None, found=False)
    assert merge_sides("lungs", [left, missing]) is left
    assert merge_sides("lungs", [missing, missing]) is None


def test_each_side_is_asked_as_a_plain_request() -> None:
    assert side_question("left kidney") == "Where is the left kidney?"
