"""The field's segmentation and detection metrics, as LISA/MediSee compute them (SPEC §5).

Per target (one predicted mask and box against one ground truth):

* ``I = |P ∩ G|``, ``U = |P ∪ G|`` over binary masks in the same frame.
* Dice ``= 2I / (|P| + |G|)``; both empty -> 1 (a correct "nothing"), one empty -> 0.
* IoU ``= I / U``; both empty -> 1.
* gIoU = mean over targets of IoU; cIoU = ``ΣI / ΣU`` over the split (0 if ``ΣU = 0``).
* Box IoU of predicted vs ground-truth pixel boxes; a missing prediction (the model did not
  emit its candidate tokens) scores IoU 0. Acc = fraction of targets with box IoU > 0.5.
* Named = fraction of replies whose answer sentence names the target (generated
  evaluation only; ``medisee.evaluate.naming``); NaN where no score carries it.

Numbers are aggregated overall and per group (split, query length, perspective,
category...), by ``MetricAccumulator``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ACC_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class TargetScore:
    """Scores of one target; ``intersection``/``union`` kept for cIoU."""

    dice: float
    iou: float
    intersection: int
    union: int
    box_iou: float
    found: bool
    #: whether the reply named the target (``None``: not judged, e.g. teacher-forced)
    named: bool | None = None
    #: whether it named only structures its kind of exam shows
    #: (``medisee.evaluate.plausibility``; ``None``: not judged)
    plausible: bool | None = None

    @property
    def box_hit(self) -> bool:
        return self.box_iou > ACC_IOU_THRESHOLD


def mask_scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, int, int]:
    """``(dice, iou, I, U)`` of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    pred = pred.astype(bool)
    target = target.astype(bool)
    intersection = int(np.logical_and(pred, target).sum())
    union = int(np.logical_or(pred, target).sum())
    total = int(pred.sum()) + int(target.sum())
    dice = 1.0 if total == 0 else 2.0 * intersection / total
    iou = 1.0 if union == 0 else intersection / union
    return dice, iou, intersection, union


def box_iou_xyxy(pred: tuple[float, ...] | None, target: tuple[float, ...]) -> float:
    """IoU of two pixel ``(x0, y0, x1, y1)`` boxes; ``None`` or an empty union -> 0."""
    if pred is None:
        return 0.0
    ix = max(0.0, min(pred[2], target[2]) - max(pred[0], target[0]))
    iy = max(0.0, min(pred[3], target[3]) - max(pred[1], target[1]))
    intersection = ix * iy
    area_p = max(0.0, pred[2] - pred[0]) * max(0.0, pred[3] - pred[1])
    area_t = max(0.0, target[2] - target[0]) * max(0.0, target[3] - target[1])
    union = area_p + area_t - intersection
    return intersection / union if union > 0 else 0.0


def score_target(
    pred_mask: np.ndarray | None,
    target_mask: np.ndarray,
    pred_box: tuple[float, ...] | None,
    target_box: tuple[float, ...],
) -> TargetScore:
    """Score one target; ``pred_mask=None`` counts as an empty mask (no target emitted)."""
    found = pred_mask is not None
    if pred_mask is None:
        pred_mask = np.zeros_like(target_mask, dtype=bool)
    dice, iou, intersection, union = mask_scores(pred_mask, target_mask)
    return TargetScore(dice, iou, intersection, union, box_iou_xyxy(pred_box, target_box), found)


@dataclass
class Summary:
    """Aggregated metrics of a set of targets."""

    count: int
    dice: float
    giou: float
    ciou: float
    box_iou: float
    acc: float
    found_rate: float
    named_rate: float = float("nan")
    plausible_rate: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def summarize(scores: list[TargetScore]) -> Summary:
    if not scores:
        return Summary(
            0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan")
        )
    total_union = sum(s.union for s in scores)
    return Summary(
        count=len(scores),
        dice=float(np.mean([s.dice for s in scores])),
        giou=float(np.mean([s.iou for s in scores])),
        ciou=sum(s.intersection for s in scores) / total_union if total_union else 0.0,
        box_iou=float(np.mean([s.box_iou for s in scores])),
        acc=float(np.mean([s.box_hit for s in scores])),
        found_rate=float(np.mean([s.found for s in scores])),
        named_rate=float(np.mean(named))
        if (named := [s.named for s in scores if s.named is not None])
        else float("nan"),
        plausible_rate=float(np.mean(plausible))
        if (plausible := [s.plausible for s in scores if s.plausible is not None])
        else float("nan"),
    )


def macro_summary(groups: Sequence[Sequence[TargetScore]]) -> Summary:
    """Each group of scores summarised on its own, then every figure averaged over the
    groups with equal weight; ``count`` is the number of groups. With one group per
    question, a question paired with 16 images weighs as much as one paired with one."""
    summaries = [summarize(list(scores)) for scores in groups if scores]
    if not summaries:
        return summarize([])

    def mean(name: str) -> float:
        values = [getattr(s, name) for s in summaries if not math.isnan(getattr(s, name))]
        return float(np.mean(values)) if values else float("nan")

    return Summary(
        count=len(summaries),
        **{f.name: mean(f.name) for f in dataclasses.fields(Summary) if f.name != "count"},
    )


class MetricAccumulator:
    """Collects ``TargetScore`` s with their group labels; ``summary()`` gives overall and
    per-group numbers, e.g. ``{"overall": Summary, "length": {"short": ..., "long": ...}}``,
    and, where scores were added with their question, ``"by_question"``: the
    :func:`macro_summary` over questions."""

    def __init__(self) -> None:
        self._scores: list[TargetScore] = []
        self._groups: list[Mapping[str, str]] = []
        self._questions: list[str | None] = []

    def __len__(self) -> int:
        return len(self._scores)

    def add(
        self,
        score: TargetScore,
        groups: Mapping[str, str | None] | None = None,
        question: str | None = None,
    ) -> None:
        self._scores.append(score)
        self._groups.append({k: v for k, v in (groups or {}).items() if v is not None})
        self._questions.append(question)

    def summary(self) -> dict[str, object]:
        by_group: dict[str, dict[str, list[TargetScore]]] = defaultdict(lambda: defaultdict(list))
        for score, groups in zip(self._scores, self._groups):
            for key, value in groups.items():
                by_group[key][value].append(score)
        result: dict[str, object] = {"overall": summarize(self._scores)}
        by_question: dict[str, list[TargetScore]] = defaultdict(list)
        for score, question in zip(self._scores, self._questions):
            if question is not None:
                by_question[question].append(score)
        if by_question:
            result["by_question"] = macro_summary(list(by_question.values()))
        for key in sorted(by_group):
            result[key] = {
                value: summarize(items) for value, items in sorted(by_group[key].items())
            }
        return result
