"""The patient's side a question asks about, read from its words.

A small pretrained LM scores "the left lung" and "the right lung" alike whatever side a
question names (``medisee.model.label_knowledge``: SmolLM2-135M's channel gives "... on
the right side" and "... on the left side" the same scores), so the question prior reads
the side itself and, where a question names one, lowers the labels of the other side.

A side counts only where it is the patient's: ``question_side`` returns None for sides of
the picture ("on the right side of the image", "the image's left": which patient side
that is depends on how the image is displayed), for relative places ("to the left of the
heart"), for "right" as an adverb ("right next to") and for both sides named. A side
inside a label's own name ("next to the right ventricle") names a landmark, not the
target's side, and is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

SIDES = ("left", "right")

_SIDE = re.compile(
    r"\b(left|right)\b(?!-?\s*(?:next|beside|above|below|behind|under|over|across|along|"
    r"at|by|in front|on top|up|down|here|there|now|away)\b)",
    re.IGNORECASE,
)
# Sides of the picture or relative places: which patient side they mean is not in the words.
_FRAME = re.compile(
    r"\b(?:left|right)\b(?:\s+(?:side|half|part|edge|border|corner))?\s+of\s+(?:the|this|an?)\s+"
    r"(?:[\w-]+\s+){0,2}(?:image|picture|scan|slice|frame|view|screen|photo)\b"
    r"|\bto\s+the\s+(?:left|right)\s+of\b"
    r"|\b(?:image|picture|screen|viewer)(?:'s)?\s+(?:left|right)\b",
    re.IGNORECASE,
)


def label_side(label: str) -> str | None:
    """``"left lung"`` -> ``"left"``; a label without a side prefix -> None."""
    first = label.split(" ", 1)[0].lower()
    return first if first in SIDES and " " in label else None


def question_side(question: str, labels: Iterable[str] = ()) -> str | None:
    """The patient's side ``question`` names (``"left"``/``"right"``), or None when it
    names none, both, or only sides of the picture. Mentions of ``labels`` that carry a
    side ("the right ventricle") are landmarks and do not count."""
    text = question
    # Each name once (callers pass the allowed labels with all the known ones), longest
    # first: "right lateral ventricle" before "right ventricle".
    sided = sorted({label for label in labels if label_side(label)}, key=lambda n: (-len(n), n))
    for label in sided:
        text = re.sub(rf"\b{re.escape(label)}\b", " ", text, flags=re.IGNORECASE)
    if _FRAME.search(text):
        return None
    found = {match.group(1).lower() for match in _SIDE.finditer(text)}
    return found.pop() if len(found) == 1 else None


def opposite_side_labels(
    question: str, labels: Sequence[str], landmarks: Iterable[str] = ()
) -> list[str]:
    """The labels among ``labels`` on the side opposite the one ``question`` names (empty
    when it names none). ``landmarks``: more label names whose mentions do not count as a
    side (``labels`` never do)."""
    side = question_side(question, [*labels, *landmarks])
    if side is None:
        return []
    return [label for label in labels if label_side(label) not in (None, side)]
