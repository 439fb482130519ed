"""The medical ontology behind the template QA engine and the label-leak checks.

``assets/ontology.json`` lists categories (organs, vessels, bones, lesions...) with their
function, attributes, typical location, appearance per modality, synonyms and adjectives.
Labels in records are canonical category names, with ``"left "``/``"right "`` prefixed
for paired structures (``"left kidney"``): the side is the **patient's** side.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

KINDS = ("organ", "lesion", "vessel", "bone", "tissue", "structure", "chamber")
SIDES = ("left", "right")

#: The generic noun a question uses for a category's kind ("Which organ ...?").
KIND_NOUNS = {
    "organ": "organ",
    "lesion": "abnormality",
    "vessel": "blood vessel",
    "bone": "bone",
    "tissue": "tissue",
    "structure": "structure",
    "chamber": "heart chamber",
}


def normalize_label(text: str) -> str:
    """Lower-case, ``_``/``-``/runs of spaces -> one space (``"Kidney_Left"`` -> ``"kidney left"``)."""
    return re.sub(r"[\s_\-]+", " ", str(text).strip().lower()).strip()


def term_pattern(term: str) -> re.Pattern[str]:
    """Case-insensitive, word-boundary regex for ``term`` (also matching a plural ``s``/``es``;
    spaces, hyphens and underscores inside the term are interchangeable)."""
    words = [re.escape(word) for word in normalize_label(term).split(" ") if word]
    body = r"[\s_\-]+".join(words)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?:s|es)?(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class Category:
    """One ontology entry (see ``assets/ontology.json`` for the phrase conventions)."""

    name: str
    kind: str
    system: str
    paired: bool
    synonyms: tuple[str, ...]
    adjectives: tuple[str, ...]
    function: str
    attributes: tuple[str, ...]
    location: str
    appearance: Mapping[str, str]
    conditions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"category name must be lower-case and trimmed: {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(
                f"category {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )
        for field_name in ("function", "location"):
            if not getattr(self, field_name).strip():
                raise ValueError(f"category {self.name!r}: {field_name} must not be empty")
        if not self.attributes:
            raise ValueError(f"category {self.name!r}: needs at least one attribute")
        if not self.appearance:
            raise ValueError(
                f"category {self.name!r}: needs an appearance for at least one modality"
            )

    @property
    def noun(self) -> str:
        return KIND_NOUNS[self.kind]

    def appearance_for(self, modality: str) -> str | None:
        return self.appearance.get(modality)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Category:
        try:
            return cls(
                name=data["name"],
                kind=data["kind"],
                system=data["system"],
                paired=bool(data.get("paired", False)),
                synonyms=tuple(data.get("synonyms", ())),
                adjectives=tuple(data.get("adjectives", ())),
                function=data["function"],
                attributes=tuple(data["attributes"]),
                location=data["location"],
                appearance=dict(data["appearance"]),
                conditions=tuple(data.get("conditions", ())),
            )
        except KeyError as error:
            raise ValueError(
                f"ontology category {data.get('name')!r} lacks {error.args[0]!r}"
            ) from None


@dataclass(frozen=True)
class ResolvedLabel:
    """A label mapped onto the ontology: canonical ``label``, its ``category`` and ``side``
    (the patient's side for paired structures, else ``None``)."""

    label: str
    category: Category
    side: str | None


class Ontology:
    """Categories indexed by name and synonym; resolves labels and checks for label leaks."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories: dict[str, Category] = {}
        self._index: dict[str, str] = {}
        for category in categories:
            if category.name in self.categories:
                raise ValueError(f"duplicate ontology category {category.name!r}")
            self.categories[category.name] = category
        for category in self.categories.values():
            for term in (category.name, *category.synonyms):
                key = normalize_label(term)
                owner = self._index.get(key)
                if owner is not None and owner != category.name:
                    raise ValueError(
                        f"ontology term {term!r} names both {owner!r} and {category.name!r}"
                    )
                self._index[key] = category.name

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Ontology:
        """Load ``path`` or, by default, the ontology shipped in ``medisee/assets``."""
        if path is None:
            from importlib import resources

            text = resources.files("medisee").joinpath("assets/ontology.json").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        data = json.loads(text)
        if not isinstance(data, Mapping) or "categories" not in data:
            raise ValueError("ontology file must be an object with a 'categories' list")
        return cls(Category.from_dict(entry) for entry in data["categories"])

    def __len__(self) -> int:
        return len(self.categories)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self.resolve(label) is not None

    def __getitem__(self, name: str) -> Category:
        return self.categories[name]

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    def resolve(self, label: str) -> ResolvedLabel | None:
        """Map a label (any case, ``_``/``-`` separators, synonyms, ``left``/``right`` prefix or
        suffix) to its canonical form, or ``None`` if it is not in the ontology.

        Whole-label matches win, so ``"left ventricle"`` is the heart chamber, not a side.
        """
        key = normalize_label(label)
        name = self._index.get(key)
        if name is not None:
            return ResolvedLabel(name, self.categories[name], None)
        words = key.split(" ")
        side = None
        if len(words) > 1 and words[0] in SIDES:
            side, rest = words[0], words[1:]
        elif len(words) > 1 and words[-1] in SIDES:
            side, rest = words[-1], words[:-1]
        if side is None:
            return None
        name = self._index.get(" ".join(rest))
        if name is None or not self.categories[name].paired:
            return None
        return ResolvedLabel(f"{side} {name}", self.categories[name], side)

    def forbidden_terms(self, label: str) -> list[str]:
        """Terms a reasoning question about ``label`` must not contain: the label itself,
        its category name, synonyms and adjectives (all sides of a paired structure)."""
        terms = [label]
        resolved = self.resolve(label)
        if resolved is not None:
            category = resolved.category
            terms.extend([category.name, *category.synonyms, *category.adjectives])
        seen: set[str] = set()
        unique = []
        for term in terms:
            key = normalize_label(term)
            if key and key not in seen:
                seen.add(key)
                unique.append(term)
        return unique

    @cached_property
    def _patterns(self) -> dict[str, re.Pattern[str]]:
        return {}

    def _pattern(self, term: str) -> re.Pattern[str]:
        cache = self._patterns
        if term not in cache:
            cache[term] = term_pattern(term)
        return cache[term]

    def leaked_term(self, text: str, label: str) -> str | None:
        """The first forbidden term of ``label`` found in ``text`` (word-boundary aware,
        case-insensitive, plural-tolerant), or ``None`` if the text is implicit."""
        for term in self.forbidden_terms(label):
            if self._pattern(term).search(text):
                return term
        return None
