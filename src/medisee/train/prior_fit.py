"""Fit the question prior after training (``medisee.model.question_prior``).

The prior learns which trained label a question asks about from the training split's own
questions (the template engine's, with their variants), read by the first layers of a
pretrained LM. Each question's softmax runs over the labels of its image's exam, as at
inference, where the exam head has narrowed them. It runs after the joint and refit
steps and touches no other weight.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medisee.data.schema import exam_kind
from medisee.model.config import QuestionPriorConfig
from medisee.model.question_prior import fit_question_prior

logger = logging.getLogger(__name__)


def training_questions(records: Sequence[Any], count: int, seed: int) -> list[tuple[str, str, str]]:
    """Up to ``count`` distinct ``(question, label, exam kind)`` of ``records``' targets (a
    seeded draw; all of them when there are fewer)."""
    seen: dict[tuple[str, str, str], None] = {}
    for record in records:
        kind = exam_kind(record)
        for target in record.targets:
            for qa in target.qa:
                seen[(" ".join(qa.question.split()), target.label, kind)] = None
    pool = list(seen)
    if len(pool) > count:
        keep = sorted(random.Random(f"{seed}-question-prior").sample(range(len(pool)), count))
        pool = [pool[i] for i in keep]
    return pool


def allowed_labels(
    questions: Sequence[tuple[str, str, str]],
    labels: Sequence[str],
    exams: Mapping[str, Sequence[str]],
) -> torch.Tensor:
    """``[N, L]`` bool over ``labels``: for each ``(question, label, exam kind)``, the
    labels of its kind in ``exams`` (all of them where the kind is not there, or without
    exams), and its own label always."""
    index = {label: i for i, label in enumerate(labels)}
    allowed = torch.zeros(len(questions), len(labels), dtype=torch.bool)
    for row, (_, label, kind) in enumerate(questions):
        allowed[row, [index[name] for name in exams.get(kind, labels)]] = True
        allowed[row, index[label]] = True
    return allowed


def fit_prior(
    model,
    records: Sequence[Any],
    *,
    questions: int = 4000,
    seed: int = 0,
    prior: QuestionPriorConfig | None = None,
) -> dict[str, Any]:
    """Attach a question prior (``prior``, default ``QuestionPriorConfig()``) to ``model``
    and fit it on up to ``questions`` of ``records``' questions (the training split);
    returns the question count and the fit's loss and accuracy.

    Every label of ``records`` must already be in ``model.config.labels``.
    """
    if questions < 1:
        raise ValueError(f"questions must be >= 1, got {questions}")
    drawn = training_questions(records, questions, seed)
    if not drawn:
        raise ValueError("no training question: nothing to fit a question prior on")
    labels = list(model.config.labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for _, label, _ in drawn} - set(index))
    if unknown:
        raise ValueError(f"training labels outside model.config.labels: {unknown}")
    config = prior if prior is not None else QuestionPriorConfig()
    model.attach_question_prior(config)
    encoder = model.question_encoder()  # loaded once; re-attaching below keeps it
    if encoder.width != config.width:  # an encoder of another width than SmolLM2's
        config = dataclasses.replace(config, width=encoder.width)
    module = model.attach_question_prior(config)
    features = encoder.encode([question for question, _, _ in drawn])
    targets = torch.tensor([index[label] for _, label, _ in drawn])
    allowed = allowed_labels(drawn, labels, model.config.exams)
    stats = fit_question_prior(module, features, targets, allowed)
    logger.info(
        "question prior: %d questions, training accuracy %.3f", len(drawn), stats["accuracy"]
    )
    return {"encoder": config.encoder, "layers": config.layers, **stats}
