"""Baselines scored by the same evaluator as MediSee (SPEC §5), all on pretrained LiteMedSAM:

* ``whole_image_box``: SAM prompted with the whole image as the box (no understanding).
* ``label_match``: a non-learned pipeline: the query is matched to a label through the
  ontology (bag-of-words overlap with each category's function, attributes, location,
  appearance and synonyms, plus the location words), then SAM is prompted with that
  label's typical box (the mean normalised box of the label in the training split).
* ``oracle_box``: SAM prompted with the ground-truth box: the segmentation upper bound of a
  box-prompted decoder (the paper's Table 3 reference).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medisee.boxes import denormalize_box, normalize_box
from medisee.evaluate.evaluator import EvalItem, ImageSource, evaluation_items
from medisee.evaluate.metrics import MetricAccumulator, score_target

BASELINES = ("whole_image_box", "label_match", "oracle_box")
_WORD = re.compile(r"[a-z]+")
_STOP = frozenset(
    "the a an of in on to and or is are this that which what where it its with for by as at be from "
    "image scan here there these those structure one part does do can shows seen".split()
)


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2]


class LabelMatcher:
    """Query -> label among ``labels`` by idf-weighted word overlap with ontology text."""

    def __init__(self, labels: Sequence[str], ontology: Any | None = None) -> None:
        self.labels = sorted(set(labels))
        documents: dict[str, Counter[str]] = {}
        for label in self.labels:
            text = [label]
            # resolve() maps synonyms and sides ("left clavicle" -> clavicle).
            resolved = ontology.resolve(label) if ontology is not None else None
            category = resolved.category if resolved is not None else None
            if category is not None:
                text += [
                    category.function,
                    category.location,
                    *category.attributes,
                    *category.synonyms,
                ]
                text += list(category.appearance.values())
            documents[label] = Counter(_words(" ".join(text)))
        frequency = Counter(word for doc in documents.values() for word in doc)
        count = max(1, len(documents))
        self.idf = {w: math.log((1 + count) / (1 + f)) + 1 for w, f in frequency.items()}
        self.documents = documents

    def scores(self, query: str) -> dict[str, float]:
        """Each label's summed idf over the query's distinct words that its text holds.

        ``math.fsum`` is exact, so a score does not depend on the order a set of words
        is walked in, which Python's string hashing changes from one process to the next
        (a plain ``sum`` moved near-ties, and the baseline's masks, between runs)."""
        words = set(_words(query))
        return {
            label: math.fsum(self.idf[w] for w in words if w in doc)
            for label, doc in self.documents.items()
        }

    def match(self, query: str) -> str:
        """The best-scoring label; a tie goes to the label that sorts last."""
        scores = self.scores(query)
        return max(self.labels, key=lambda label: (scores[label], label))


def label_box_priors(records: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Mean normalised ``cxcywh`` box of each label (its typical location and size)."""
    boxes: dict[str, list[torch.Tensor]] = defaultdict(list)
    for record in records:
        for target in record.targets:
            box = torch.tensor(target.box_xyxy, dtype=torch.float32)
            boxes[target.label].append(normalize_box(box, (record.height, record.width)))
    return {label: torch.stack(items).mean(0) for label, items in boxes.items()}


def _baseline_boxes(
    item: Any, which: Sequence[str], priors: dict[str, torch.Tensor], matcher: LabelMatcher
) -> dict[str, tuple[float, ...]]:
    """Each baseline's box prompt for one question: ``xyxy`` pixels of the original image."""
    height, width = item.record.height, item.record.width
    boxes: dict[str, tuple[float, ...]] = {}
    if "whole_image_box" in which:
        boxes["whole_image_box"] = (0.0, 0.0, float(width), float(height))
    if "label_match" in which:
        prior = priors[matcher.match(item.qa.question)]
        boxes["label_match"] = tuple(denormalize_box(prior, (height, width)).tolist())
    if "oracle_box" in which:
        boxes["oracle_box"] = tuple(float(v) for v in item.target.box_xyxy)
    return {name: boxes[name] for name in which}


@torch.no_grad()
def run_baselines(
    segmenter,
    records: Sequence[Any],
    root: str | Path,
    *,
    prior_records: Sequence[Any],
    ontology: Any | None = None,
    which: Sequence[str] = BASELINES,
    kinds: Sequence[str] = ("reasoning",),
    cache=None,
    batch_size: int = 8,
    max_examples: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    items: Sequence[EvalItem] | None = None,
) -> dict[str, dict[str, Any]]:
    """Summaries per baseline, grouped like ``evaluate``'s.

    ``segmenter`` is a ``PromptableSegmenter`` with pretrained LiteMedSAM/MedSAM weights
    (``build_segmenter(mask_config)``); ``prior_records`` (the training split) give the
    label matcher its candidate labels and typical boxes. ``items``: these questions
    instead of the ``kinds`` of ``records`` (e.g. hand-written ones).
    """
    unknown = set(which) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {BASELINES}")
    segmenter = segmenter.eval()
    source = ImageSource(segmenter, Path(root), cache, device)
    priors = label_box_priors(prior_records)
    matcher = LabelMatcher(list(priors), ontology)
    if items is None:
        items = evaluation_items(records, kinds, max_examples)
    accumulators = {name: MetricAccumulator() for name in which}
    scale_of = segmenter.config.image_size
    # A baseline's mask depends only on (image, box prompt): the whole-image box is the
    # same for every question about an image, the oracle box for every question about a
    # target, and label matching repeats across questions that match the same label. So
    # each distinct prompt is decoded once (an image's prompts in one batch) and its
    # original-frame mask reused.
    masks: dict[tuple[str, tuple[float, ...]], np.ndarray] = {}
    bar = tqdm(total=len(items), desc="baselines", unit="q", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        boxes = [_baseline_boxes(item, which, priors, matcher) for item in chunk]
        pending: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for item, by_name in zip(chunk, boxes):
            for box in by_name.values():
                key = (item.record.id, box)
                if key not in masks and box not in pending[item.record.id]:
                    pending[item.record.id].append(box)
        chunk_records = {item.record.id: item.record for item in chunk}
        for record_id, prompts in pending.items():
            record = chunk_records[record_id]
            embedding = source.inputs([record])["image_embeddings"]
            scale = scale_of / max(record.height, record.width)
            pixel_boxes = torch.tensor(prompts, dtype=torch.float32) * scale
            out = segmenter.decode(
                embedding.expand(len(prompts), -1, -1, -1), boxes=pixel_boxes.to(source.device)
            )
            frame = source.transform.frame((record.height, record.width))
            original = frame.mask_logits_to_original(out.mask_logits[:, :1].float().cpu())
            for box, logits in zip(prompts, original):
                masks[(record_id, box)] = (logits[0] > 0).numpy()
        for item, by_name in zip(chunk, boxes):
            truth = source.ground_truth(item)
            for name, box in by_name.items():
                mask = masks[(item.record.id, box)]
                score = score_target(mask, truth, box, item.target.box_xyxy)
                accumulators[name].add(score, item.groups(), item.qa.question)
        bar.update(len(chunk))
    bar.close()
    return {name: acc.summary() for name, acc in accumulators.items()}
