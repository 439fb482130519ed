"""A question that names the structure it asks for, and a structure the image cannot show.

A constrained answer names one of the labels that the image's kind of exam shows
(``medisee.model.exam_head``). Asked "Where is the liver?" about a brain MRI, it used to
name the nearest such label ("Sure, this is the gray matter.") and paint a mask: a
confident answer to another question. Here a question that plainly asks for one named
structure ("Where is the liver?", "Segment the left kidney.", "Is there a lung tumor
here?", "Where are the lateral ventricles?") is read for that name
(:func:`asked_structure`), and when the image's exam does not show it, or the model was
never trained on it, the reply says so and names what it can find instead (:func:`absent_reply`), with no mask. When the exam does show it, the
answer names it (:func:`labels_for`): the user said which structure; the model's work is
to find it ("Where is the white matter?" on the MNI template was answered "Sure, this is
the gray matter.").

Only a plain request whose whole object is a structure's name or synonym in the
ontology counts: "Which organ filters the blood?" or "Find the muscular pipe behind the
windpipe" name no structure as their object, and are answered as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medisee.data.ontology import Ontology, ResolvedLabel

# "Where is the X?", "Segment the X in this image.", "Can you show me the X?",
# "Is there a X here?": a request, then an article, the object, an optional place.
_REQUEST = re.compile(
    r"^(?:please\s+)?(?:(?:can|could|would)\s+you\s+(?:please\s+)?)?"
    r"(?:where(?:'s|\s+is|\s+are)|segment|find|locate|show(?:\s+me)?|outline|mark|"
    r"point\s+to|highlight|delineate|detect|is\s+there|are\s+there)\s+"
    r"(?:an?\s+|the\s+|any\s+)?(?P<term>[a-z][a-z' -]*?)"
    r"(?:\s+(?:here|(?:in|on)\s+(?:this|the)\s+(?:image|scan|slice|picture|study|exam)))?"
    r"(?:[\s,]+please)?\s*[?.!]*$"
)

#: How an exam kind reads in a sentence ("brain_mri" -> "a brain MRI").
_WORDS = {"ct": "CT", "mri": "MRI", "xray": "X-ray"}


def asked_structure(question: str, ontology: Ontology) -> ResolvedLabel | None:
    """The structure ``question`` plainly asks for, resolved in ``ontology``; ``None`` when
    the question is not such a request or its object is not a structure's name."""
    text = " ".join(question.lower().split())
    match = _REQUEST.match(text)
    if match is None:
        return None
    term = match.group("term").strip()
    for name in (term, *_singulars(term)):
        resolved = ontology.resolve(name)
        if resolved is not None:
            return resolved
    return None


def _singulars(term: str) -> list[str]:
    """The singular forms ``term`` may be the plural of, its last word changed ("lateral
    ventricles", "common carotid arteries", "vertebrae"): the ontology names one of each."""
    head, _, last = term.rpartition(" ")
    prefix = f"{head} " if head else ""
    forms = []
    if last.endswith("ies"):
        forms.append(last[:-3] + "y")
    if last.endswith("ae"):
        forms.append(last[:-1])
    if last.endswith("s") and not last.endswith("ss"):
        forms.append(last[:-1])
    return [prefix + form for form in forms]


def exam_phrase(kind: str) -> str:
    """``"brain_mri"`` -> ``"a brain MRI"``, ``"fundus"`` -> ``"a fundus image"``."""
    words = [_WORDS.get(word, word) for word in kind.split("_")]
    if len(words) == 1 and words[0] not in _WORDS.values():
        words.append("image")
    phrase = " ".join(words)
    article = "an" if phrase[0].lower() in "aeio" or phrase.startswith(("MRI", "X-ray")) else "a"
    return f"{article} {phrase}"


@dataclass(frozen=True)
class Absence:
    """Why an asked structure has no answer: ``reason`` is ``"not_shown"`` (the image's
    exam does not show it) or ``"not_trained"`` (no label of the model is that structure)."""

    label: str
    reason: str


def labels_for(asked: ResolvedLabel, labels: Iterable[str], ontology: Ontology) -> list[str]:
    """The labels among ``labels`` that are the asked structure: the same label, or, asked
    without a side, either side's ("Where is the kidney?" -> left and right kidney)."""

    def matches(label: str) -> bool:
        resolved = ontology.resolve(label)
        if resolved is None or resolved.category.name != asked.category.name:
            return False
        return asked.side is None or resolved.side == asked.side

    return [label for label in labels if matches(label)]


def absence(
    asked: ResolvedLabel,
    allowed: Iterable[str],
    trained: Iterable[str],
    ontology: Ontology,
) -> Absence | None:
    """``None`` when one of ``allowed`` (the labels the image's exam shows) is the asked
    structure (:func:`labels_for`). Otherwise why not."""
    if labels_for(asked, allowed, ontology):
        return None
    reason = "not_shown" if labels_for(asked, trained, ontology) else "not_trained"
    return Absence(asked.label, reason)


def absent_reply(absent: Absence, exam: str | None, allowed: Sequence[str]) -> str:
    """The reply to a question about a structure the model will not find in this image:
    why, then what it can find there (``allowed``; ``exam`` the most likely kind)."""
    if absent.reason == "not_trained":
        first = f"I was not trained to find the {absent.label}, so I cannot segment it."
    elif exam is not None:
        first = (
            f"This looks like {exam_phrase(exam)}, which does not show the {absent.label}, "
            "so there is nothing to segment."
        )
    else:
        first = f"The {absent.label} is not shown on this kind of image."
    return _sentences(first, _what_can_be_found(exam, allowed))


# "What is this image?", "What kind of scan is this?", "What am I looking at?", "What
# does this image show?": a question about the image, not for one of its structures.
_ABOUT_IMAGE = re.compile(
    r"^(?:(?:what|which)\s+(?:kind|type|sort)\s+of\s+(?:image|scan|exam|study|picture)\s+"
    r"is\s+(?:this|it)|what(?:'s|\s+is)\s+(?:this|that)(?:\s+(?:image|scan|picture))?|"
    r"what\s+am\s+i\s+(?:looking\s+at|seeing)(?:\s+here)?|"
    r"what\s+does\s+(?:this|the)\s+(?:image|scan|picture)\s+show)\s*[?.!]*$"
)


def asks_about_image(question: str) -> bool:
    """Whether ``question`` asks what the image is rather than for a structure in it."""
    return bool(_ABOUT_IMAGE.match(" ".join(question.lower().split())))


def image_reply(exam: str, allowed: Sequence[str]) -> str:
    """The reply to :func:`asks_about_image`: the exam kind the image looks like and what
    can be found on it (``allowed``), with no structure picked and so no mask."""
    return _sentences(
        f"This looks like {exam_phrase(exam)}.",
        _what_can_be_found(exam, allowed),
        "Ask for one of them by name or by what it does to see it outlined.",
    )


def _sentences(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _what_can_be_found(exam: str | None, allowed: Sequence[str]) -> str:
    """ "On a brain MRI I can find the brain and the skull.", or "" without ``allowed``."""
    if not allowed:
        return ""
    names = [f"the {label}" for label in sorted(allowed)]
    found = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    where = f"On {exam_phrase(exam)}" if exam is not None else "Here"
    return f"{where} I can find {found}."
