"""An explanation about another structure than the answer's, replaced by the ontology's.

The ``lite`` LM learnt its explanations from sentences built from the ontology
(``medisee.data.qa_template``): "The X <function>; it <attribute>. On this CT scan it
<appearance>. It is found <location>." On a question unlike its training questions it can
splice another structure's facts into the answer's: "This is the left kidney. The left
kidney carries oxygenated blood to the head and brain; ..." (the common carotid artery's
function), or "This is the skull. The right femoral head is ...". The answer sentence
names the structure that was found and masked; such an explanation contradicts it.

:func:`foreign_structure` finds an explanation that holds a sentence of another
structure's ontology entry (its function, an attribute, its location or appearance),
whose first sentence is about another structure, or in which the answer does what only
another structure does ("The heart conducts air", the opening of the trachea's
function); :func:`checked_reply` then puts the answer's own ontology explanation in its
place (the attribute explanation of the templates, with the image's modality). Only the explanation changes: the answer
sentence, and with it what the evaluation scores, stays.

The LM also says where its answer lies ("The spleen lies in the middle left part of the
image."), a phrase it learnt from the training masks' positions; on the test split's
referring questions half of these named another third of the image than the mask the
model drew. :func:`grounded_position` says it from the predicted mask instead, with the
templates' rule (``medisee.data.geometry.mask_region``).

Asked whether a structure is there ("Is there a lung tumor here?"), the model answers
"Sure, this is the lung tumor." and outlines the likeliest region, whether or not one is
there: it cannot tell (its grounding map's peak did not separate slices with and without
the tumour). :func:`presence_reply` says so in place of the answer sentence.
"""

from __future__ import annotations

import re

import numpy as np

from medisee.data.geometry import mask_region
from medisee.data.ontology import Category, Ontology
from medisee.data.qa_template import MODALITY_NOUNS, attribute_explanation
from medisee.inference.knowledge import ANSWER_SENTENCE
from medisee.model.asked_structure import ANY_SIGN_OF, ASKS_WHETHER_SHOWN, IF_THERE_IS_ONE

# "The right femoral head is ...": the words before the first verb of a template sentence.
_SUBJECT = re.compile(
    r"^the\s+(?P<subject>(?:[a-z-]+\s+){0,4}?[a-z-]+)\s+(?:is|are|lies|lie|sits|has|have|"
    r"holds|hold|contains|gives|controls|produces|pumps|carries|filters|appears|runs|forms|"
    r"protects|stores|drains|connects|separates|covers|supports|receives|returns|flexes|"
    r"secretes|conducts|exchanges|anchors|provides|encloses|contracts|stabilises|collects|"
    r"transmits)\b"
)
#: The modality of an exam kind that names none of :data:`MODALITY_NOUNS` itself.
_EXAM_MODALITY = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "ultrasound": "ultrasound",
    "echocardiography": "ultrasound",
    "colonoscopy": "endoscopy",
}
# "lies in the upper left part of the image", "lies in the central part of the image",
# "lies in the lower part of the image" (the templates' phrases, medisee.data.qa_template).
_POSITION = re.compile(
    r"\blies in the (?P<vertical>(?:upper|middle|lower) )?(?P<horizontal>(?:left|right|centre|"
    r"central) )?part of the image\b"
)
#: Ontology sentences shorter than this are too generic to tell structures apart.
_MIN_FACT_CHARS = 16


def _facts(category: Category) -> list[str]:
    facts = [category.function, *category.attributes, category.location]
    facts += list(category.appearance.values())
    return [fact for fact in facts if len(fact) >= _MIN_FACT_CHARS]


# The verbs of the templates' geometry phrases ("contains the", "lies right next to"): a
# function that opens with one says nothing a position does not say too.
_GEOMETRY_VERBS = frozenset({"contains", "surrounds", "encloses", "lies", "sits", "is"})


def _function_openings(ontology: Ontology) -> dict[str, str]:
    """The first two words of a category's function ("conducts air") -> that category, for
    the openings no other category's function shares and no geometry phrase starts."""
    owners: dict[str, set[str]] = {}
    for category in ontology.categories.values():
        opening = " ".join(category.function.lower().split()[:2])
        owners.setdefault(opening, set()).add(category.name)
    return {
        opening: next(iter(names))
        for opening, names in owners.items()
        if len(names) == 1 and opening.split(" ")[0] not in _GEOMETRY_VERBS
    }


def foreign_structure(label: str, explanation: str, ontology: Ontology) -> str | None:
    """The other structure whose facts ``explanation`` holds, whose function's opening it
    gives ``label`` ("The heart conducts air"), or that its first sentence is about;
    ``None`` when it is about ``label`` (or ``label`` is not in ``ontology``)."""
    answer = ontology.resolve(label)
    if answer is None or not explanation:
        return None
    own = set(_facts(answer.category))
    for category in ontology.categories.values():
        if category.name == answer.category.name:
            continue
        for fact in _facts(category):
            if fact not in own and fact in explanation:
                return category.name
    # "The heart conducts air ...": the answer doing what only another structure does (the
    # opening of the trachea's function), the rest of that sentence garbled.
    openings = _function_openings(ontology)
    said = re.finditer(rf"\bthe\s+{re.escape(label.lower())}\s+(\w+\s+\w+)", explanation.lower())
    for opening in (match.group(1) for match in said):
        owner = openings.get(opening)
        if owner is not None and owner != answer.category.name:
            return owner
    match = _SUBJECT.match(explanation.lower())
    if match is None:
        return None
    words = match.group("subject").split()
    for start in range(len(words)):  # "right femoral head", then "femoral head", ...
        subject = ontology.resolve(" ".join(words[start:]))
        if subject is not None:
            if subject.category.name != answer.category.name:
                return subject.label
            return None
    return None


def exam_modality(exam: str | None) -> str | None:
    """``"brain_mri"`` -> ``"MRI"``, ``"fundus"`` -> ``"fundus"``; ``None`` when unknown."""
    if not exam:
        return None
    if exam in MODALITY_NOUNS:
        return exam
    return _EXAM_MODALITY.get(exam.rsplit("_", 1)[-1].lower())


def checked_reply(reply: str, modality: str | None, ontology: Ontology) -> tuple[str, bool]:
    """``(reply, replaced)``: ``reply`` with its explanation replaced by the ontology's for
    the structure its answer sentence names, when the explanation is about another one
    (:func:`foreign_structure`); else as it is."""
    match = ANSWER_SENTENCE.match(reply)
    if match is None:
        return reply, False
    label = match.group("subject").strip()
    sentence = reply[: match.end()].strip()
    explanation = reply[match.end() :].strip()
    if foreign_structure(label, explanation, ontology) is None:
        return reply, False
    resolved = ontology.resolve(label)
    if resolved is None or not resolved.category.attributes:
        return reply, False
    known = modality if modality in MODALITY_NOUNS else None
    own = attribute_explanation(label, resolved.category, known, resolved.category.attributes[0])
    return f"{sentence} {own}", True


def grounded_position(reply: str, mask: np.ndarray) -> tuple[str, bool]:
    """``(reply, changed)``: every "lies in the ... part of the image" of ``reply`` said
    from ``mask`` (``H x W`` bool, the predicted mask in the image's frame); unchanged for
    an empty mask or a reply without the phrase."""
    region = mask_region(mask)
    if region is None:
        return reply, False
    vertical = region.split()[0]

    def said(match: re.Match[str]) -> str:
        # A phrase that gave only the third from top to bottom ("lies in the upper part")
        # keeps that form where the mask is not in the middle third.
        if match["horizontal"] is None and vertical in ("upper", "lower"):
            return f"lies in the {vertical} part of the image"
        return f"lies in the {region} part of the image"

    grounded = _POSITION.sub(said, reply)
    return grounded, grounded != reply


# "Is there a lung tumor here?", "Are there lung nodules?", "Do you see a tumour?": a
# question whether one is there.
_PRESENCE = re.compile(
    # asked outright: "Is there ...", "Do you see ...", "Does this scan show ...", "Does the
    # patient have ..."
    r"^\s*(?:please\s+)?(?:(?:is|are)\s+there|(?:do|can|could)\s+you\s+see|"
    + ASKS_WHETHER_SHOWN
    + r")\b"
    # or on a condition: "Show me the tumour if there is one", "... if any", "any sign of"
    + r"|\b(?:"
    + IF_THERE_IS_ONE
    + r")\b|\b"
    + ANY_SIGN_OF
    + r"\b",
    re.IGNORECASE,
)


def presence_reply(question: str, reply: str) -> tuple[str, str | None]:
    """``(reply, subject)``: for a question whether a structure is there, the answer
    sentence ("Sure, this is the lung tumor.") replaced by what the model can say ("I
    cannot tell from the image whether there is a lung tumor; the region most like one is
    outlined."), and the structure it names; ``(reply, None)`` for any other question or
    a reply without an answer sentence."""
    match = ANSWER_SENTENCE.match(reply) if _PRESENCE.search(question) else None
    if match is None:
        return reply, None
    subject = match["subject"].strip()
    article = "an" if subject[:1].lower() in "aeiou" else "a"
    said = (
        f"I cannot tell from the image whether there is {article} {subject}; the region most "
        "like one is outlined."
    )
    rest = reply[match.end() :].strip()
    return f"{said} {rest}".strip(), subject
