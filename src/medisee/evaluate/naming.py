"""Whether a reply names the structure it was asked about.

The answer sentence of a reply ("It is the left kidney.") names the target when it holds
the target's label or one of its category's synonyms, with the right side for a paired
structure. Only that first sentence counts: the explanation may mention neighbours.
"""

from __future__ import annotations

import re

from medisee.data.ontology import Ontology, term_pattern

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def answer_sentence(reply: str) -> str:
    """The reply up to its first sentence end."""
    return _SENTENCE_END.split(reply.strip(), maxsplit=1)[0]


def names_structure(reply: str, label: str, ontology: Ontology) -> bool:
    """Whether ``reply``'s answer sentence names ``label`` (synonyms and sides resolved
    through ``ontology``; a label the ontology does not know must appear verbatim)."""
    sentence = answer_sentence(reply)
    resolved = ontology.resolve(label)
    if resolved is None:
        return bool(term_pattern(label).search(sentence))
    category = resolved.category
    names = [category.name, *category.synonyms]
    if resolved.side is not None:
        other = "right" if resolved.side == "left" else "left"
        # "left kidney" or "kidney, left"; the other side named as well is not an answer.
        if term_pattern(f"{other} {category.name}").search(sentence):
            return False
        names = [f"{resolved.side} {name}" for name in names]
    return any(term_pattern(name).search(sentence) for name in names)
