"""Questions written by hand, outside the template engine: a test of generalisation.

The file is JSONL, one ``{"label": ..., "question": ...}`` per line. Each question is
paired with every image of the evaluated split that has a target of that label, and
scored like any other question (kind ``handwritten``). medisee ships one such set
(``medisee/assets/eval/handwritten_questions.jsonl``, 64 questions in plain language);
it is for evaluation only: nothing trains on it or on paraphrases of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medisee.data.jsonl import iter_jsonl
from medisee.evaluate.evaluator import EvalItem

HANDWRITTEN_KIND = "handwritten"


@dataclass(frozen=True)
class HandwrittenQuestion:
    label: str
    question: str


@dataclass(frozen=True)
class HandwrittenQA:
    """A hand-written question as an evaluation item's question (the reference answer
    only names the label: the set has no reference explanations)."""

    question: str
    answer: str
    explanation: str = ""
    kind: str = HANDWRITTEN_KIND
    perspective: str | None = None
    length: str | None = None


def shipped_questions_path() -> Path:
    """The hand-written set that ships with medisee."""
    return Path(str(resources.files("medisee") / "assets" / "eval" / "handwritten_questions.jsonl"))


def load_questions(path: str | os.PathLike[str] | None = None) -> list[HandwrittenQuestion]:
    """Read a questions file (default: the shipped set); a malformed line raises a
    ``ValueError`` naming the file and line."""
    source = Path(path) if path is not None else shipped_questions_path()
    questions = []
    for number, row in iter_jsonl(source):
        fields = row if isinstance(row, dict) else {}
        label, question = fields.get("label"), fields.get("question")
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{source}:{number}: needs a non-empty string 'label'")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{source}:{number}: needs a non-empty string 'question'")
        questions.append(HandwrittenQuestion(label.strip(), question.strip()))
    if not questions:
        raise ValueError(f"{source}: no questions")
    return questions


def handwritten_items(
    records: Sequence[Any], questions: Sequence[HandwrittenQuestion]
) -> list[EvalItem]:
    """Each question with every target of its label in ``records`` (records in order,
    then questions in file order). Labels match exactly (``"left kidney"`` is not
    ``"kidney"``)."""
    items = []
    for record in records:
        for index, target in enumerate(record.targets):
            for question in questions:
                if question.label == target.label:
                    qa = HandwrittenQA(question.question, f"It is the {target.label}.")
                    items.append(EvalItem(record, index, qa))
    return items
