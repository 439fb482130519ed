"""Whether a reply names only structures that the image's kind of exam can show.

A brain MRI cannot show a lung or the psoas muscle; a reply that names one has not read
the image, whatever its mask. The kind of exam is the record's ``meta["kind"]`` where
the source gives one (``brain_mri``, ``chest_ct``, ``abdominal_ct``, ``mammography``...:
modality and body region), else its modality. What a kind can show is read off the data:
the structures labelled on any image of that kind in the manifest (all splits), resolved
to their ontology category, so "left lung" and "lungs" both count as "lung".

A reply is judged on its answer sentence (``medisee.evaluate.naming``), like the
``named`` score: the explanation may mention neighbours of other regions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from medisee.data.ontology import Ontology, term_pattern
from medisee.data.schema import exam_kind
from medisee.evaluate.naming import answer_sentence


def _category(label: str, ontology: Ontology) -> str:
    resolved = ontology.resolve(label)
    return resolved.category.name if resolved is not None else label.strip().lower()


def structures_by_exam(records: Iterable[Any], ontology: Ontology) -> dict[str, frozenset[str]]:
    """Exam kind -> the ontology categories labelled on its images in ``records``."""
    shown: dict[str, set[str]] = {}
    for record in records:
        categories = shown.setdefault(exam_kind(record), set())
        categories.update(_category(target.label, ontology) for target in record.targets)
    return {kind: frozenset(categories) for kind, categories in shown.items()}


@lru_cache(maxsize=4)
def _terms(ontology: Ontology) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Every category name and synonym with its category, longest first, so that "lung
    tumor" is read as one structure and not as "lung" as well."""
    terms = [
        (term, category.name)
        for category in ontology.categories.values()
        for term in (category.name, *category.synonyms)
    ]
    terms.sort(key=lambda pair: -len(pair[0]))
    return tuple((term_pattern(term), name) for term, name in terms)


def named_structures(reply: str, ontology: Ontology) -> set[str]:
    """The ontology categories that ``reply``'s answer sentence names."""
    sentence = answer_sentence(reply)
    found: set[str] = set()
    for pattern, name in _terms(ontology):
        if pattern.search(sentence):
            found.add(name)
            # Blank the match out, so that a shorter term inside it is not read again.
            sentence = pattern.sub(" ", sentence)
    return found


def is_plausible(
    reply: str, kind: str, shown: dict[str, frozenset[str]], ontology: Ontology
) -> bool | None:
    """Whether every structure the answer sentence names is one that images of ``kind``
    show (``shown``, from ``structures_by_exam``). ``None`` (not judged): the sentence
    names no structure the ontology knows, or ``kind`` is not in ``shown``."""
    named = named_structures(reply, ontology)
    if not named or kind not in shown:
        return None
    return named <= shown[kind]
