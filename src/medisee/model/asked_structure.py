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

A plain request whose object is a general noun rather than one structure's name ("Where
is the tumour?", "Segment the lesion.", "Where is the artery?") asks for a structure of
that sort (:func:`generic_request`): the answer names one of the exam's labels that is one
(:func:`generic_labels`), or the reply says the model was not trained to find one there.
"Where is the tumour?" on a chest CT was answered "Sure, this is the bone." A paired
structure asked for in the plural ("Where are the lungs?") means both sides
(:func:`both_sides`; ``medisee.inference.paired`` asks for each and joins them).

Only a plain request whose whole object is such a name counts: "Which organ filters the
blood?" or "Find the muscular pipe behind the windpipe" name no structure as their object,
and are answered as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from medisee.data.ontology import KIND_NOUNS, SIDES, Category, Ontology, ResolvedLabel

# Ways of asking whether a structure is there, besides "Is there" and "Do you see" (lower
# case; ``medisee.inference.explanation.presence_reply`` reads the same ones):
#: an opening: "Does this scan show ...", "Does the patient have ..."
ASKS_WHETHER_SHOWN = (
    r"does\s+(?:this|the)\s+(?:image|scan|slice|picture|exam|study|mri|ct|x-ray|ultrasound)"
    r"\s+show|does\s+(?:the|this)\s+patient\s+have"
)
#: a condition after the request: "... if there is one", "... if any", "... if present"
IF_THERE_IS_ONE = r"if\s+(?:there\s+is|there\s+are|there's)\s+(?:one|any)|if\s+(?:any|present)"
#: "any sign of ...", "any signs of ..."
ANY_SIGN_OF = r"any\s+signs?\s+of"

# "Where is the X?", "Segment the X in this image.", "Can you show me the X?",
# "Is there a X here?", "Do you see a X?", "Does this scan show a X?": a request, then an
# article, the object, an optional place, an optional condition ("... if there is one").
_REQUEST = re.compile(
    r"^(?:please\s+)?(?:(?:can|could|would)\s+you\s+(?:please\s+)?)?"
    r"(?:where(?:'s|\s+is|\s+are)|segment|find|locate|show(?:\s+me)?|outline|mark|"
    r"point\s+to|highlight|delineate|detect|(?:(?:is|are)\s+there\s+)?" + ANY_SIGN_OF + "|"
    r"is\s+there|are\s+there|(?:do|can)\s+you\s+see|" + ASKS_WHETHER_SHOWN + r")\s+"
    r"(?:an?\s+|the\s+|any\s+)?(?P<term>[a-z][a-z' -]*?)"
    r"(?:\s+(?:here|(?:in|on)\s+(?:this|the)\s+(?:image|scan|slice|picture|study|exam)))?"
    r"(?:[\s,]+(?:" + IF_THERE_IS_ONE + r"))?"
    r"(?:[\s,]+please)?\s*[?.!]*$"
)

#: How an exam kind reads in a sentence ("brain_mri" -> "a brain MRI").
_WORDS = {"ct": "CT", "mri": "MRI", "xray": "X-ray"}


#: British spellings, as the ontology spells them ("tumour" -> "tumor").
_SPELLINGS = (
    ("tumour", "tumor"),
    ("oesophag", "esophag"),
    ("haem", "hem"),
    ("oedema", "edema"),
    ("grey", "gray"),
)


def requested_term(question: str) -> str | None:
    """The object of a plain request ("Where are the kidneys?" -> ``"kidneys"``), lower
    case and in the ontology's spelling; ``None`` when ``question`` is not such a request."""
    match = _REQUEST.match(" ".join(question.lower().split()))
    if match is None:
        return None
    term = match.group("term").strip()
    for british, american in _SPELLINGS:
        term = term.replace(british, american)
    return term


def asked_structure(question: str, ontology: Ontology) -> ResolvedLabel | None:
    """The structure ``question`` plainly asks for, resolved in ``ontology``; ``None`` when
    the question is not such a request or its object is not a structure's name."""
    term = requested_term(question)
    if term is None:
        return None
    for name in (term, *_singulars(term)):
        resolved = ontology.resolve(name)
        if resolved is not None:
            return resolved
    return None


# Nouns for an abnormality of any sort ("Segment the lesion.").
_FINDING_NOUNS = frozenset(
    {
        "lesion",
        "abnormality",
        "anomaly",
        "finding",
        "pathology",
        "anything abnormal",
        "something abnormal",
        "anything unusual",
    }
)
# Nouns for a growth: a label named so ("the tumor" on a brain MRI: the brain tumor), else
# the labels named by another of them ("the mass" -> "lung tumor"), else any abnormality.
_GROWTH_NOUNS = frozenset(
    {"tumor", "mass", "cancer", "growth", "lump", "neoplasm", "malignancy", "carcinoma"}
)
# Nouns for a kind of the ontology ("Where is the organ?", "the blood vessel").
_KIND_WORDS = {**{kind: kind for kind in KIND_NOUNS}, **{noun: k for k, noun in KIND_NOUNS.items()}}


@dataclass(frozen=True)
class GenericRequest:
    """A plain request for a structure by a general noun: ``noun`` singular ("artery",
    "tumor", "blood vessel"), ``side`` the patient's side it names, if any."""

    noun: str
    side: str | None = None


def generic_request(question: str, ontology: Ontology) -> GenericRequest | None:
    """The general noun ``question`` plainly asks for ("Where is the tumour?", "Where are
    the carotid arteries?", "Segment the left vein."), or ``None``: not a plain request,
    its object a structure's own name (:func:`asked_structure`), or a noun that names no
    sort of structure in ``ontology`` ("Where is the glass?")."""
    term = requested_term(question)
    if term is None or asked_structure(question, ontology) is not None:
        return None
    words = term.split(" ")
    side = words[0] if len(words) > 1 and words[0] in SIDES else None
    asked = " ".join(words[1:] if side else words)
    for noun in (*_singulars(asked), asked):  # "ventricles": the singular names the sort
        request = GenericRequest(noun, side)
        if _is_sort_noun(noun) or _named_by(request, ontology.categories.values()):
            return request
    return None


def generic_labels(request: GenericRequest, labels: Iterable[str], ontology: Ontology) -> list[str]:
    """The labels among ``labels`` that are of the sort ``request`` asks for: for an
    abnormality ("lesion"), every lesion; else the first of: those whose name or a synonym
    ends in its noun ("artery" -> "left common carotid artery"); for a growth, those named
    by another growth noun ("cancer" -> "lung nodule", a "lung mass"), else every lesion;
    for a kind's noun, every label of that kind ("bone" -> "vertebra"). Asked with a side,
    that side's only."""
    categories = {
        label: found.category
        for label in labels
        if (found := ontology.resolve(label)) is not None
        and (request.side is None or found.side == request.side)
    }

    def where(keep: Callable[[Category], bool]) -> list[str]:
        return [label for label, category in categories.items() if keep(category)]

    def is_lesion(category: Category) -> bool:
        return category.kind == "lesion"

    if request.noun in _FINDING_NOUNS:
        return where(is_lesion)
    named = where(lambda category: bool(_named_by(request, [category])))
    if named or request.noun not in _GROWTH_NOUNS:
        kind = _KIND_WORDS.get(request.noun)
        return named or where(lambda category: category.kind == kind)
    grown = where(
        lambda category: any(_named_by(GenericRequest(noun), [category]) for noun in _GROWTH_NOUNS)
    )
    return grown or where(is_lesion)


def kind_labels(asked: ResolvedLabel, labels: Iterable[str], ontology: Ontology) -> list[str]:
    """When ``asked`` is itself the name of a kind ("bone"), the labels among ``labels`` of
    that kind: "Where is the bone?" on an abdominal CT, whose labels do not include the
    whole skeleton, asks for its vertebra. Otherwise none."""
    kind = _KIND_WORDS.get(asked.category.name)
    if kind is None:
        return []
    found = ((label, ontology.resolve(label)) for label in labels)
    return [label for label, resolved in found if resolved and resolved.category.kind == kind]


def _is_sort_noun(noun: str) -> bool:
    return noun in _FINDING_NOUNS or noun in _GROWTH_NOUNS or noun in _KIND_WORDS


def _named_by(request: GenericRequest, categories: Iterable[Category]) -> list[Category]:
    """The categories whose name or a synonym ends in ``request.noun`` (either number)."""
    noun = request.noun.split(" ")

    def ends_in_noun(term: str) -> bool:
        words = term.lower().split(" ")
        if len(words) <= len(noun):
            return False  # the noun is the whole name: a structure's own name, not a sort
        tail = " ".join(words[-len(noun) :])
        return tail == request.noun or request.noun in _singulars(tail)

    return [
        category
        for category in categories
        if any(ends_in_noun(term) for term in (category.name, *category.synonyms))
    ]


@dataclass(frozen=True)
class BothSides:
    """A plain request for both sides of a paired structure: ``plural`` as asked ("lungs",
    "lateral ventricles"), ``labels`` the left and the right label."""

    plural: str
    labels: tuple[str, str]


def both_sides(question: str, ontology: Ontology) -> BothSides | None:
    """``question`` plainly asks for a paired structure in the plural with no side ("Where
    are the lungs?", "Segment the kidneys."): both sides are meant, not one. ``None`` for
    any other question, a singular ("Where is the kidney?") included."""
    term = requested_term(question)
    if term is None or ontology.resolve(term) is not None:  # a name as written: not a plural
        return None
    asked = asked_structure(question, ontology)
    if asked is None or asked.side is not None or not asked.category.paired:
        return None
    name = asked.category.name
    return BothSides(term, (f"{SIDES[0]} {name}", f"{SIDES[1]} {name}"))


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
    exam does not show it), ``"not_trained"`` (no label of the model is that structure) or
    ``"none_of_sort"`` (asked by a general noun, ``label``: no label the exam shows is
    one). ``label`` is the structure as the reply names it: a label, the general noun,
    or a paired structure's plural ("lungs") when both sides were asked for."""

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


def absence(asked: ResolvedLabel, trained: Iterable[str], ontology: Ontology) -> Absence:
    """Why an asked structure that no label the image's exam shows is (:func:`labels_for`)
    gets no answer: the exam does not show it, or no label of ``trained`` is it."""
    reason = "not_shown" if labels_for(asked, trained, ontology) else "not_trained"
    return Absence(asked.label, reason)


def absent_reply(absent: Absence, exam: str | None, allowed: Sequence[str]) -> str:
    """The reply to a question about a structure the model will not find in this image:
    why, then what it can find there (``allowed``; ``exam`` the most likely kind)."""
    if absent.reason == "none_of_sort":
        article = "an" if absent.label[0] in "aeiou" else "a"
        on = exam_phrase(exam) if exam is not None else "this kind of image"
        first = (
            f"I was not trained to find {article} {absent.label} on {on}, so I cannot segment one."
        )
    elif absent.reason == "not_trained":
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
