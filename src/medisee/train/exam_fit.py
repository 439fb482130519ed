"""Fit the exam head after training (``medisee.model.exam_head``).

The head learns which kind of exam an image is (``medisee.data.schema.exam_kind``) from
the training images' segmenter embeddings, read from the run's embedding cache where it
holds them (else computed by the frozen encoder). It runs after the joint and refit
steps and touches no other weight, so a run with it trains the same model as one
without, plus the head.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medisee.data.schema import exam_kind
from medisee.model.exam_head import ExamHead, fit_exam_head

logger = logging.getLogger(__name__)


def exams_of(records: Sequence[Any]) -> dict[str, tuple[str, ...]]:
    """Exam kind -> the sorted labels of its images' targets, kinds sorted; kinds whose
    images have no target are left out (they teach no answer)."""
    labels: dict[str, set[str]] = {}
    for record in records:
        labels.setdefault(exam_kind(record), set()).update(t.label for t in record.targets)
    return {kind: tuple(sorted(labels[kind])) for kind in sorted(labels) if labels[kind]}


def choose_images(
    records: Sequence[Any], kinds: Sequence[str], per_kind: int, seed: int
) -> list[tuple[Any, int]]:
    """Up to ``per_kind`` records of each kind in ``kinds`` (a seeded draw, in manifest
    order), with the kind's index."""
    by_kind: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for record in records:
        kind = exam_kind(record)
        if kind in by_kind:
            by_kind[kind].append(record)
    chosen: list[tuple[Any, int]] = []
    for index, kind in enumerate(kinds):
        pool = by_kind[kind]
        if len(pool) > per_kind:
            keep = set(random.Random(f"{seed}-exam-{kind}").sample(range(len(pool)), per_kind))
            pool = [record for i, record in enumerate(pool) if i in keep]
        chosen.extend((record, index) for record in pool)
    return chosen


@torch.no_grad()
def pooled_features(model, paths: Sequence[Path], cache=None, batch_size: int = 8) -> torch.Tensor:
    """``[N, 2C]`` pooled embeddings (``ExamHead.pool``) of ``paths``: from ``cache`` when
    it holds an image, else from the model's frozen encoder."""
    from medisee.data.io import read_image
    from medisee.model.preprocess import SamTransform

    transform = SamTransform(model.config.mask.image_size)
    device = next(model.segmenter.parameters()).device
    features: list[torch.Tensor | None] = [None] * len(paths)
    todo = []
    for i, path in enumerate(paths):
        if cache is not None and path in cache:
            features[i] = ExamHead.pool(cache.load(path, dtype=None)[None])[0]
        else:
            todo.append(i)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        pixels = torch.stack([transform.prepare(read_image(paths[i]).pixels)[0] for i in chunk]).to(
            device
        )
        for i, row in zip(chunk, ExamHead.pool(model.embed_images(pixels))):
            features[i] = row
    return torch.stack([f.cpu() for f in features if f is not None])


def fit_exams(
    model, records: Sequence[Any], root: Path, *, cache=None, per_kind: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Attach an exam head over the kinds of ``records`` (the training split) to ``model``
    and fit it; returns the kinds, the image count and the fit's loss and accuracy.

    Every label of ``records`` must already be in ``model.config.labels``.
    """
    if per_kind < 1:
        raise ValueError(f"per_kind must be >= 1, got {per_kind}")
    exams = exams_of(records)
    if not exams:
        raise ValueError("no training record has a target: nothing to fit an exam head on")
    kinds = list(exams)
    chosen = choose_images(records, kinds, per_kind, seed)
    features = pooled_features(model, [Path(root) / r.image for r, _ in chosen], cache)
    targets = torch.tensor([index for _, index in chosen])
    head = model.attach_exam_head(exams)
    stats = fit_exam_head(head, features, targets)
    logger.info(
        "exam head: %d kinds from %d images, training accuracy %.3f",
        len(kinds),
        len(chosen),
        stats["accuracy"],
    )
    return {"kinds": kinds, "images": len(chosen), **stats}
