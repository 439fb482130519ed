"""Evaluate a model on manifest records, generated (headline) and teacher-forced.

* **generated**: the model sees only the question and must itself emit its candidate
  tokens; a reply without them scores an empty mask and no box. These are the answers of
  ``medisee.inference.Predictor``, the code ``predict``, ``chat`` and ``serve`` run: the
  same image reading, prompt, decoding and mapping to the original frame, batched, with
  the image embeddings read from the cache when one is given.
* **teacher-forced**: the reference answer (with candidate tokens) is fed in, as the
  released MediSee code evaluated; reported beside the headline, never instead of it.

Masks are scored in the original image frame, boxes as pixel ``xyxy`` in the original
frame (``medisee.inference.predictor.to_original_frame`` maps both modes' answers).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medisee.data.ontology import Ontology
from medisee.data.schema import exam_kind
from medisee.evaluate.metrics import MetricAccumulator, Summary, score_target
from medisee.evaluate.naming import names_structure
from medisee.evaluate.plausibility import is_plausible, structures_by_exam
from medisee.inference.predictor import (
    GenerationOptions,
    ImageState,
    Predictor,
    PredictRequest,
    stack_embeddings,
    to_original_frame,
)
from medisee.model.preprocess import SamTransform
from medisee.model.prompting import right_pad

GROUP_KEYS = (
    "split",
    "kind",
    "length",
    "perspective",
    "category",
    "modality",
    "provenance",
    "image",
    "real_structure",
)

#: Labels pooled into one structure in the ``real_structure`` group (the lungs of a CT
#: are scored as one figure, as the real-image targets are stated).
POOLED_STRUCTURES = {"left lung": "lungs", "right lung": "lungs"}


@dataclass
class EvalReport:
    """Summaries per mode (``{"generated": {...}, "teacher_forced": {...}}``) and the
    per-example records (question, reply, scores)."""

    summaries: dict[str, dict[str, Any]]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def convert(value: Any) -> Any:
            if isinstance(value, Summary):
                return value.as_dict()
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {"summaries": convert(self.summaries)}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "metrics.json").write_text(json.dumps(self.to_json(), indent=2))
        with open(directory / "predictions.jsonl", "w") as handle:
            for example in self.examples:
                handle.write(json.dumps(example) + "\n")
        (directory / "metrics.md").write_text(markdown_table(self.summaries))


def markdown_table(
    summaries: dict[str, dict[str, Any]],
    groups: Sequence[str] = ("image", "real_structure", "split", "length", "perspective"),
) -> str:
    """Overall and per-group rows for every evaluated method/mode."""
    lines = [
        "| method | group | n | Dice | gIoU | cIoU | box IoU | Acc@0.5 | emitted | named "
        "| plausible |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, summary in summaries.items():
        rows = [("overall", summary["overall"])]
        by_question = summary.get("by_question")
        if by_question is not None and by_question.count < summary["overall"].count:
            # Questions asked of several images: each question weighs the same here.
            rows.append(("by question", by_question))
        for key in groups:
            values = summary.get(key, {})
            # Real scans before phantoms: the real-image figure is the one that counts.
            for value in sorted(values, key=lambda v: (v != "real", v)):
                rows.append((f"{key}={value}", values[value]))
        for name, s in rows:
            named, plausible = (
                "—" if math.isnan(rate) else f"{rate:.2f}"
                for rate in (s.named_rate, s.plausible_rate)
            )
            lines.append(
                f"| {method} | {name} | {s.count} | {s.dice:.3f} | {s.giou:.3f} | {s.ciou:.3f} | "
                f"{s.box_iou:.3f} | {s.acc:.3f} | {s.found_rate:.2f} | {named} | {plausible} |"
            )
    return "\n".join(lines) + "\n"


@dataclass
class EvalItem:
    """One question about one target of one record. ``qa`` is the target's ``QAItem``, or
    any object with the same fields (``question``, ``answer``, ``explanation``, ``kind``,
    ``length``, ``perspective``): hand-written questions are not part of the record."""

    record: Any
    target_index: int
    qa: Any

    @property
    def target(self):
        return self.record.targets[self.target_index]

    def groups(self) -> dict[str, str | None]:
        image = _image_kind(getattr(self.target, "provenance", None))
        label = self.target.label
        return {
            "split": self.record.split,
            "kind": self.qa.kind,
            "length": self.qa.length,
            "perspective": self.qa.perspective,
            "category": label,
            "modality": self.record.modality,
            "provenance": getattr(self.target, "provenance", None),
            # real: a scan (expert or derived masks); phantom: rendered with exact masks
            "image": image,
            # on real scans only: the structure, left and right lungs pooled
            "real_structure": POOLED_STRUCTURES.get(label, label) if image == "real" else None,
        }


#: group names written under another key in the per-example rows
_ROW_KEYS = {"image": "image_kind"}


def _image_kind(provenance: str | None) -> str | None:
    if provenance is None:
        return None
    return "phantom" if provenance == "phantom" else "real"


def evaluation_items(
    records: Sequence[Any], kinds: Sequence[str] = ("reasoning",), max_examples: int | None = None
) -> list[EvalItem]:
    """The questions of ``kinds`` in manifest order (record, target, question).

    With ``max_examples``, a subset spread over images and targets: the records take
    turns, and within a record the targets do (each target's first question, then each
    one's second, ...), so 120 questions of a 15-image split cover all 15 images rather
    than the first few. The subset is returned in manifest order.
    """
    # per record, per target: its questions of ``kinds``
    per_record = [
        [
            [EvalItem(record, t, qa) for qa in target.qa if qa.kind in kinds]
            for t, target in enumerate(record.targets)
        ]
        for record in records
    ]
    items = [item for targets in per_record for questions in targets for item in questions]
    if max_examples is None or max_examples >= len(items):
        return items
    turns = []
    for targets in per_record:
        # Target t starts at its (t mod n)-th question, so the first turns are not all of
        # the same template slot (a target's questions come in a fixed perspective/length
        # order).
        rotated = [q[t % len(q) :] + q[: t % len(q)] for t, q in enumerate(targets) if q]
        depth = max(map(len, rotated), default=0)
        turns.append([q[d] for d in range(depth) for q in rotated if d < len(q)])
    chosen: set[int] = set()
    depth = 0
    while len(chosen) < max_examples:
        for questions in turns:
            if depth < len(questions) and len(chosen) < max_examples:
                chosen.add(id(questions[depth]))
        depth += 1
    return [item for item in items if id(item) in chosen]


class ImageSource:
    """Image embeddings (cached or computed) and original-frame ground truth per record,
    for models without a ``Predictor`` (the segmenter-only baselines)."""

    def __init__(
        self,
        segmenter,
        root: Path,
        cache=None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.segmenter = segmenter
        self.root = Path(root)
        self.cache = cache
        self.device = torch.device(device)
        self.transform = SamTransform(segmenter.config.image_size)

    def inputs(self, records: Sequence[Any]) -> dict[str, torch.Tensor]:
        from medisee.data.io import read_image

        needs_pixels = self.cache is None
        out: dict[str, torch.Tensor] = {}
        if needs_pixels:
            pixels = [
                self.transform.prepare(read_image(self.root / r.image).pixels)[0] for r in records
            ]
            out["pixel_values"] = torch.stack(pixels).to(self.device)
        if self.cache is not None:
            out["image_embeddings"] = torch.stack(
                [self.cache.load(self.root / r.image) for r in records]
            ).to(self.device)
        else:
            out["image_embeddings"] = self.segmenter.embed_images(out["pixel_values"])
        out["image_sizes"] = torch.tensor(
            [[r.height, r.width] for r in records], device=self.device
        )
        return out

    def ground_truth(self, item: EvalItem) -> np.ndarray:
        return ground_truth(item, self.root)


class _States:
    """``ImageState`` per record image: read once, embedding from the cache when it holds
    the image; the last few are kept (questions come grouped by image)."""

    def __init__(self, predictor: Predictor, root: Path, cache=None, keep: int = 16) -> None:
        self.predictor = predictor
        self.root = root
        self.cache = cache
        self.keep = keep
        self._recent: OrderedDict[str, ImageState] = OrderedDict()

    def __call__(self, record: Any) -> ImageState:
        state = self._recent.get(record.image)
        if state is None:
            path = self.root / record.image
            state = self.predictor.prepare(path)
            if self.cache is not None and path in self.cache:
                state.embedding = self.cache.load(path).to(self.predictor.device)
            self._recent[record.image] = state
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
        return state


def ground_truth(item: EvalItem, root: Path) -> np.ndarray:
    """The target's mask in the original frame of its image."""
    from medisee.data.masks import load_mask

    record = item.record
    return load_mask(item.target.mask, root, shape=(record.height, record.width))


def evaluate(
    model,
    records: Sequence[Any],
    root: str | Path,
    *,
    kinds: Sequence[str] = ("reasoning",),
    max_examples: int | None = None,
    **options: Any,
) -> EvalReport:
    """Score ``model`` (on its device) on the QA items of ``kinds`` in ``records`` (a
    subset spread over them with ``max_examples``). ``options`` are ``evaluate_items``'s
    (``modes``, ``cache``, ``batch_size``, ``max_new_tokens``, ``constrain_answer``,
    ``progress``)."""
    return evaluate_items(model, evaluation_items(records, kinds, max_examples), root, **options)


@torch.no_grad()
def evaluate_items(
    model,
    items: Sequence[EvalItem],
    root: str | Path,
    *,
    modes: Sequence[str] = ("generated", "teacher_forced"),
    cache=None,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    constrain_answer: bool = True,
    constrain_to_exam: bool = True,
    question_prior: bool = True,
    ontology: Ontology | None = None,
    shown: dict[str, frozenset[str]] | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score ``model`` (on its device) on ``items``; generated replies are also judged on
    whether they name the target (``ontology``: default the shipped one), and whether
    they name only structures their kind of exam shows (``shown``, from
    ``medisee.evaluate.plausibility.structures_by_exam``; default: from the items'
    records).

    ``cache``: an ``EmbeddingCache`` of the model's segmenter; images it does not hold are
    encoded. ``max_new_tokens`` bounds each generated reply; ``constrain_answer``,
    ``constrain_to_exam`` and ``question_prior``: see ``GenerationOptions`` (every item is a first-turn question
    that asks for a target). A model with an exam head also writes the kind it read off
    each image (``predicted_exam``) into the generated rows.
    """
    unknown = set(modes) - {"generated", "teacher_forced"}
    if unknown:
        raise ValueError(f"unknown evaluation modes {sorted(unknown)}")
    root = Path(root)
    ontology = ontology or Ontology.load()
    if shown is None:
        shown = structures_by_exam({id(i.record): i.record for i in items}.values(), ontology)
    predictor = Predictor(
        model,
        GenerationOptions(
            max_new_tokens=max_new_tokens,
            constrain_answer=constrain_answer,
            constrain_to_exam=constrain_to_exam,
            question_prior=question_prior,
        ),
        batch_size=batch_size,
    )
    states = _States(predictor, root, cache, keep=2 * batch_size)
    accumulators = {mode: MetricAccumulator() for mode in modes}
    examples: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc="evaluating", unit="q", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        requests = [PredictRequest(states(i.record), i.qa.question) for i in chunk]
        truths = [ground_truth(i, root) for i in chunk]
        rows = [
            {
                "image": i.record.image,
                "exam": exam_kind(i.record),
                "label": i.target.label,
                "question": i.qa.question,
                "reference": i.qa.answer,
                # The "image" group (real | phantom) is written as image_kind, so that
                # "image" stays the path the row is about.
                **{_ROW_KEYS.get(k, k): v for k, v in i.groups().items() if v is not None},
            }
            for i in chunk
        ]
        if "generated" in modes:
            for item, truth, prediction, row in zip(chunk, truths, predictor.run(requests), rows):
                mask = prediction.mask if prediction.found_target else None
                score = dataclasses.replace(
                    score_target(mask, truth, prediction.box, item.target.box_xyxy),
                    named=names_structure(prediction.text, item.target.label, ontology),
                    plausible=is_plausible(
                        prediction.text, exam_kind(item.record), shown, ontology
                    ),
                )
                accumulators["generated"].add(score, item.groups(), item.qa.question)
                row.update(
                    reply=prediction.text,
                    box=prediction.box,
                    dice=score.dice,
                    box_iou=score.box_iou,
                    emitted=score.found,
                    named=score.named,
                    plausible=score.plausible,
                )
                if prediction.scores.get("exam") is not None:
                    row["predicted_exam"] = prediction.scores["exam"]
        if "teacher_forced" in modes:
            for item, truth, (mask, box), row in zip(
                chunk, truths, _teacher_forced(predictor, chunk, requests), rows
            ):
                score = score_target(mask, truth, box, item.target.box_xyxy)
                accumulators["teacher_forced"].add(score, item.groups(), item.qa.question)
                row.update(tf_box=box, tf_dice=score.dice, tf_box_iou=score.box_iou)
        examples.extend(rows)
        bar.update(len(chunk))
    bar.close()
    return EvalReport({mode: acc.summary() for mode, acc in accumulators.items()}, examples)


def _teacher_forced(
    predictor: Predictor, chunk: Sequence[EvalItem], requests: Sequence[PredictRequest]
) -> list[tuple[np.ndarray | None, tuple[float, ...] | None]]:
    """Mask and pixel box of each item with its reference answer (through the candidate
    tokens) fed in."""
    model, builder = predictor.model, predictor.builder
    predictor.encode([r.state for r in requests])
    # The reference answer through its candidate tokens: the LM is causal, so their states
    # do not depend on the explanation after them (as in the grounding refit,
    # ``medisee.train.task.through_last_candidate``), which is most of a reply's tokens.
    encoded = [builder.encode([(i.qa.question, builder.answer_text(i.qa.answer))]) for i in chunk]
    device = predictor.device
    ids, attention = right_pad([e.input_ids for e in encoded], model.tokenizer.pad_token_id)
    pixels = None
    if not model.language.uses_segmenter_embedding:
        pixels = torch.stack([r.state.pixel_values for r in requests]).to(device)
    ids = ids.to(device)
    out = model(
        ids,
        attention.to(device),
        torch.tensor([r.state.size for r in requests], device=device),
        pixel_values=pixels,
        image_embeddings=stack_embeddings(r.state for r in requests),
        # No text logits: only the candidate states are read here, and the LM head over
        # every position of every reply (batch x length x vocabulary) was most of the
        # pass's time and memory.
        logits_mask=torch.zeros_like(ids, dtype=torch.bool),
    )
    results: list[tuple[np.ndarray | None, tuple[float, ...] | None]] = []
    for row, request in enumerate(requests):
        mask, box, _ = to_original_frame(request.state.frame, out.mask_logits[row], out.boxes[row])
        results.append((mask, box))
    return results


def teacher_forced_scores(
    model, records, root, *, cache=None, max_examples=64, batch_size=8
) -> Summary:
    """Quick teacher-forced summary (periodic evaluation during training)."""
    report = evaluate(
        model,
        records,
        root,
        modes=("teacher_forced",),
        cache=cache,
        batch_size=batch_size,
        max_examples=max_examples,
        progress=False,
    )
    return report.summaries["teacher_forced"]["overall"]
