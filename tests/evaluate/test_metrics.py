"""Metric definitions on hand-computed 2x2 cases and the edge cases of SPEC §5."""

import dataclasses
import math

import numpy as np
import pytest

from medisee.evaluate.metrics import (
    MetricAccumulator,
    box_iou_xyxy,
    macro_summary,
    mask_scores,
    score_target,
    summarize,
)

T, F = True, False


def test_mask_scores_2x2():
    pred = np.array([[T, T], [F, F]])
    target = np.array([[T, F], [T, F]])
    dice, iou, inter, union = mask_scores(pred, target)
    assert (inter, union) == (1, 3)
    assert dice == pytest.approx(2 * 1 / 4)
    assert iou == pytest.approx(1 / 3)


def test_both_empty_is_perfect_and_empty_prediction_is_zero():
    empty = np.zeros((2, 2), bool)
    assert mask_scores(empty, empty) == (1.0, 1.0, 0, 0)
    target = np.array([[T, F], [F, F]])
    assert mask_scores(empty, target) == (0.0, 0.0, 0, 1)
    assert mask_scores(target, empty)[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        mask_scores(np.zeros((2, 3), bool), empty)


def test_box_iou_cases():
    assert box_iou_xyxy((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou_xyxy((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0  # disjoint
    assert box_iou_xyxy(None, (0, 0, 1, 1)) == 0.0  # no prediction
    assert box_iou_xyxy((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # degenerate: empty union
    assert box_iou_xyxy((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0


def test_summary_giou_vs_ciou_and_acc():
    # target A: I=1, U=3 ; target B: I=4, U=4 ; missing prediction C: I=0, U=2
    a = score_target(
        np.array([[T, T], [F, F]]), np.array([[T, F], [T, F]]), (0, 0, 2, 2), (1, 1, 3, 3)
    )
    b = score_target(np.ones((2, 2), bool), np.ones((2, 2), bool), (0, 0, 2, 2), (0, 0, 2, 2))
    c = score_target(None, np.array([[T, T], [F, F]]), None, (0, 0, 2, 1))
    assert not c.found and c.dice == 0.0 and c.box_iou == 0.0
    s = summarize([a, b, c])
    assert s.count == 3
    assert s.giou == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert s.ciou == pytest.approx((1 + 4 + 0) / (3 + 4 + 2))
    assert s.dice == pytest.approx((0.5 + 1 + 0) / 3)
    assert s.box_iou == pytest.approx((1 / 7 + 1 + 0) / 3)
    assert s.acc == pytest.approx(1 / 3)  # only b has IoU > 0.5
    assert s.found_rate == pytest.approx(2 / 3)


def test_acc_threshold_is_strict():
    # IoU exactly 0.5 is not a hit: (0,0,2,1) vs (0,0,2,2) -> 2/4
    score = score_target(np.ones((2, 2), bool), np.ones((2, 2), bool), (0, 0, 2, 1), (0, 0, 2, 2))
    assert score.box_iou == 0.5 and not score.box_hit


def test_accumulator_groups():
    acc = MetricAccumulator()
    full = np.ones((2, 2), bool)
    acc.add(
        score_target(full, full, (0, 0, 2, 2), (0, 0, 2, 2)),
        {"length": "short", "category": "liver"},
    )
    acc.add(score_target(None, full, None, (0, 0, 2, 2)), {"length": "long", "category": "liver"})
    summary = acc.summary()
    assert summary["overall"].count == 2 and summary["overall"].dice == 0.5
    assert summary["length"]["short"].dice == 1.0 and summary["length"]["long"].dice == 0.0
    assert summary["category"]["liver"].count == 2
    assert math.isnan(summarize([]).dice)


def test_by_question_weighs_each_question_once():
    """Question a on three images (Dice 1, 1, 0; named 1, 1, 0) and question b on one
    (Dice 0, not named): pooled, Dice 2/4 and named 2/4; by question, a gives 2/3 and b
    0, so Dice (2/3 + 0) / 2 = 1/3 and named 1/3."""
    full = np.ones((2, 2), bool)
    hit = score_target(full, full, (0, 0, 2, 2), (0, 0, 2, 2))
    miss = score_target(None, full, None, (0, 0, 2, 2))
    acc = MetricAccumulator()
    for score, named, question in [
        (hit, True, "a"), (hit, True, "a"), (miss, False, "a"), (miss, False, "b"),
    ]:  # fmt: skip
        acc.add(dataclasses.replace(score, named=named), {"length": "short"}, question)
    summary = acc.summary()
    assert summary["overall"].dice == 0.5 and summary["overall"].named_rate == 0.5
    by_question = summary["by_question"]
    assert by_question.count == 2
    assert by_question.dice == pytest.approx(1 / 3) and by_question.acc == pytest.approx(1 / 3)
    assert by_question.named_rate == pytest.approx(1 / 3)
    assert math.isnan(by_question.plausible_rate)  # no question had it judged
    assert macro_summary([[hit], []]).count == 1 and math.isnan(macro_summary([]).dice)
    # Without questions there is no such entry.
    plain = MetricAccumulator()
    plain.add(hit)
    assert "by_question" not in plain.summary()


def test_the_table_shows_the_by_question_row_only_where_questions_repeat():
    from medisee.evaluate.evaluator import markdown_table

    full = np.ones((2, 2), bool)
    hit = score_target(full, full, (0, 0, 2, 2), (0, 0, 2, 2))
    repeated, unique = MetricAccumulator(), MetricAccumulator()
    for question in ("a", "a", "b"):
        repeated.add(hit, None, question)
    for question in ("a", "b"):
        unique.add(hit, None, question)
    table = markdown_table({"repeated": repeated.summary(), "unique": unique.summary()})
    assert "| repeated | by question | 2 |" in table
    assert "| unique | by question" not in table
