"""Offline QA generation from templates, the ontology and the masks' geometry.

For each target it writes (same :class:`~medisee.data.schema.QAItem` format as the LLM
pipeline):

* referring items that name the label ("Segment the liver."), short and long;
* reasoning items, attribute-oriented (function, attributes, appearance, conditions from
  the ontology) and location-oriented (image side, patient side when ``Record.display``
  is set, above/below/left/right of another target, inside, between, largest/smallest),
  short and long, each with an explanation. Reasoning questions never contain the
  target's label, category name, synonyms or adjectives (checked; offenders are dropped
  and counted), and location phrases are chosen so they single out the target among the
  image's targets.
* one multi-turn conversation per record: an implicit question, then follow-ups that
  refer to the previous answer ("What lies closest to it, below it in the image?",
  "What does it do?", "Which side of the patient is it on?").

Generation is deterministic: each record gets its own random stream from
``(seed, record.id)``, so results do not depend on record order or count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medisee.data.geometry import Layout, patient_side, region_phrase
from medisee.data.ontology import KIND_NOUNS, Category, Ontology
from medisee.data.schema import QAItem, Record, SkipReport, Turn

#: The answer sentence of a reasoning reply (one drawn per item) and of a referring one.
#: ``medisee.model.answer_constraint`` constrains generated answers to these forms.
REASONING_ANSWERS = ("It is the {label}.", "This is the {label}.", "The {label}.")
REFERRING_ANSWER = "Sure, this is the {label}."

MODALITY_NOUNS = {
    "CT": "CT scan",
    "MRI": "MRI scan",
    "X-ray": "radiograph",
    "mammography": "mammogram",
    "ultrasound": "ultrasound image",
    "fundus": "fundus photograph",
    "dermoscopy": "dermoscopic image",
    "endoscopy": "endoscopic image",
    "PET": "PET scan",
    "OCT": "OCT scan",
    "histopathology": "histology slide",
}

_PLURAL_NOUNS = {
    "organ": "organs",
    "abnormality": "abnormalities",
    "blood vessel": "blood vessels",
    "bone": "bones",
    "tissue": "tissues",
    "structure": "structures",
    "heart chamber": "heart chambers",
}


def record_rng(seed: int, record_id: str) -> np.random.Generator:
    """A random stream that depends only on ``seed`` and the record id."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _is_plural_phrase(verb_phrase: str) -> bool:
    """``"supply and drain ..."`` is plural, ``"filters ..."``/``"is ..."`` singular."""
    first = verb_phrase.split(" ", 1)[0]
    return not first.endswith("s")


@dataclass(frozen=True)
class Descriptor:
    """A location phrase about one target: ``vp`` completes "Which organ ...?"; ``matches``
    are the targets the same phrase would also describe (uniqueness test)."""

    vp: str
    matches: frozenset[int]
    kind: str


@dataclass
class TemplateResult:
    """QA items per target (same order as the record's targets), a conversation, and the
    counts of what could not be generated or was dropped."""

    qa: list[list[QAItem]]
    conversation: list[Turn] | None
    report: SkipReport


def attribute_explanation(
    label: str, category: Category, modality: str | None, attribute: str
) -> str:
    """The explanation of an attribute question: "The X <function>; it <attribute>. On
    this CT scan it <appearance>. It is found <location>." (no appearance sentence for a
    modality the ontology does not describe, or ``None``)."""
    pronoun = "they" if _is_plural_phrase(category.function) else "it"
    explanation = f"The {label} {category.function}; {pronoun} {attribute}."
    appearance = category.appearance_for(modality) if modality else None
    if appearance:
        noun = MODALITY_NOUNS.get(modality or "", "image")
        explanation += f" On this {noun} {pronoun} {appearance}."
    return explanation + f" It is found {category.location}."


class TemplateEngine:
    """The offline QA generator (see the module docstring)."""

    def __init__(
        self, ontology: Ontology | None = None, *, seed: int = 0, conversation: bool = True
    ) -> None:
        self.ontology = ontology if ontology is not None else Ontology.load()
        self.seed = seed
        self.with_conversation = conversation

    # ----------------------------------------------------------------- helpers
    def _category(self, label: str) -> Category | None:
        resolved = self.ontology.resolve(label)
        return resolved.category if resolved else None

    def _noun(self, label: str) -> str:
        category = self._category(label)
        return category.noun if category else "structure"

    def _side_vp(
        self,
        side: str,
        display: str | None,
        rng: np.random.Generator,
        own_side: str | None = None,
    ) -> str:
        """Verb phrase for an image side, with the patient's side when the display says it.
        ``own_side``: the target's own patient side (a paired structure's); where the image
        side says otherwise (a view that moved the anatomy across the frame's middle), only
        the image side is said."""
        patient = patient_side(side, display)
        options = [f"lies on the {side} side of the image"]
        if patient:
            options += [
                f"lies on the patient's {patient} side",
                f"lies on the patient's {patient} side, which is the {side} side of the image",
            ]
        chosen = str(rng.choice(options))
        if own_side is not None and patient not in (None, own_side):
            return options[0]  # drawn all the same: the draws after it do not move
        return chosen

    def _descriptors(
        self, t: int, layout: Layout, record: Record, peers: Sequence[int], rng: np.random.Generator
    ) -> list[Descriptor]:
        """Every true location phrase about target ``t`` with the peers it also fits."""
        labels = [s.label for s in layout.shapes]
        out: list[Descriptor] = []
        side = layout.half(t)
        if side != "centre":
            same = frozenset(i for i in peers if layout.half(i) == side)
            resolved = self.ontology.resolve(labels[t])
            own = resolved.side if resolved is not None else None
            vp = self._side_vp(side, record.display, rng, own)
            out.append(Descriptor(vp, same, "side"))
        vertical = layout.vertical(t)
        if vertical != "middle":
            same = frozenset(i for i in peers if layout.vertical(i) == vertical)
            out.append(Descriptor(f"lies in the {vertical} part of the image", same, "vertical"))
        # A reference whose name gives the target away ("right kidney" for the left one)
        # cannot be used.
        usable = [
            b
            for b in range(len(layout))
            if b != t
            and labels[b] != labels[t]
            and self.ontology.leaked_term(labels[b], labels[t]) is None
        ]
        for b in usable:
            if layout.contains(t, b):
                same = frozenset(i for i in peers if layout.contains(i, b))
                verb = str(rng.choice(["contains", "surrounds", "encloses"]))
                out.append(Descriptor(f"{verb} the {labels[b]}", same, "contains"))
            if layout.contains(b, t):
                same = frozenset(i for i in peers if layout.contains(b, i))
                verb = str(rng.choice(["lies inside", "is found within", "sits within"]))
                out.append(Descriptor(f"{verb} the {labels[b]}", same, "inside"))
                continue
            direction = layout.direction(t, b)
            if direction is not None:
                same = frozenset(i for i in peers if i != b and layout.direction(i, b) == direction)
                phrase = {
                    "above": str(rng.choice(["lies above", "lies directly above", "sits above"])),
                    "below": str(rng.choice(["lies below", "lies just below", "sits beneath"])),
                    "left": "lies to the left of",
                    "right": "lies to the right of",
                }[direction]
                out.append(Descriptor(f"{phrase} the {labels[b]} in the image", same, "direction"))
            if layout.adjacent(t, b):
                same = frozenset(i for i in peers if i != b and layout.adjacent(i, b))
                out.append(Descriptor(f"lies right next to the {labels[b]}", same, "adjacent"))
        for bi, b in enumerate(usable):
            for c in usable[bi + 1 :]:
                axis = layout.between(t, b, c)
                if axis is not None:
                    same = frozenset(
                        i for i in peers if i not in (b, c) and layout.between(i, b, c) == axis
                    )
                    out.append(
                        Descriptor(
                            f"lies between the {labels[b]} and the {labels[c]}", same, "between"
                        )
                    )
        if len(peers) >= 2:
            ranked = layout.rank_by_area(peers)
            noun = self._noun(labels[t])
            if (
                ranked[0] == t
                and layout.shapes[ranked[0]].area > 1.2 * layout.shapes[ranked[1]].area
            ):
                out.append(
                    Descriptor(
                        f"is the largest of the {_PLURAL_NOUNS[noun]} shown", frozenset({t}), "size"
                    )
                )
            if (
                ranked[-1] == t
                and layout.shapes[ranked[-1]].area * 1.2 < layout.shapes[ranked[-2]].area
            ):
                out.append(
                    Descriptor(
                        f"is the smallest of the {_PLURAL_NOUNS[noun]} shown",
                        frozenset({t}),
                        "size",
                    )
                )
        return out

    def _pick_location(
        self, t: int, descriptors: list[Descriptor], rng: np.random.Generator
    ) -> tuple[list[Descriptor], list[Descriptor]] | None:
        """(short, long) descriptor lists that single out ``t``; ``None`` if impossible."""
        unique = [d for d in descriptors if d.matches == frozenset({t})]
        if unique:
            order = rng.permutation(len(unique))
            short = [unique[int(order[0])]]
            rest = [d for d in descriptors if d is not short[0] and d.kind != short[0].kind]
            if len(order) > 1:
                long_first = unique[int(order[1])]
            else:
                long_first = short[0]
            extras = [d for d in rest if d is not long_first and d.kind != long_first.kind]
            long = [long_first] + ([extras[int(rng.integers(len(extras)))]] if extras else [])
            return short, long
        for i, d1 in enumerate(descriptors):
            for d2 in descriptors[i + 1 :]:
                if d1.kind != d2.kind and (d1.matches & d2.matches) == frozenset({t}):
                    return [d1, d2], [d1, d2]
        return None

    # ----------------------------------------------------------------- items
    def _referring(
        self, label: str, mod: str, region_vp: str, rng: np.random.Generator
    ) -> list[QAItem]:
        short_q = str(
            rng.choice(
                [
                    f"Segment the {label}.",
                    f"Where is the {label}?",
                    f"Please locate the {label}.",
                    f"Show me the {label}.",
                ]
            )
        )
        long_q = str(
            rng.choice(
                [
                    f"Please segment the {label} in this {mod} and give its bounding box.",
                    f"In this {mod}, can you outline the {label} for me?",
                    f"Could you find and segment the {label} shown in this {mod}?",
                ]
            )
        )
        answer = REFERRING_ANSWER.format(label=label)
        explanation = f"The {label} {region_vp}."
        return [
            QAItem("referring", None, "short", short_q, answer, explanation),
            QAItem("referring", None, "long", long_q, answer, explanation),
        ]

    def _answer(self, label: str, rng: np.random.Generator) -> str:
        return str(rng.choice(REASONING_ANSWERS)).format(label=label)

    def _attribute_items(
        self,
        label: str,
        category: Category,
        modality: str,
        disambiguation: str | None,
        rng: np.random.Generator,
    ) -> list[QAItem]:
        mod = MODALITY_NOUNS.get(modality, "image")
        plural = _is_plural_phrase(category.function)
        noun = _PLURAL_NOUNS[category.noun] if plural else category.noun
        pronoun = "they" if plural else "it"
        suffix = f", the one that {disambiguation}" if disambiguation else ""
        attributes = list(category.attributes)
        first_attr = attributes[int(rng.integers(len(attributes)))]
        other_attrs = [a for a in attributes if a != first_attr] or attributes
        second_attr = other_attrs[int(rng.integers(len(other_attrs)))]
        appearance = category.appearance_for(modality)
        answer = self._answer(label, rng)
        explanation = attribute_explanation(label, category, modality, first_attr)

        short_options = [
            f"Which {noun} in this image {category.function}{suffix}?",
            f"Which {noun} here {first_attr}{suffix}?",
        ]
        if category.conditions:
            condition = category.conditions[int(rng.integers(len(category.conditions)))]
            verb = "are" if plural else "is"
            if category.kind == "lesion":
                short_options.append(
                    f"Which {noun} in this {mod} {verb} associated with {condition}{suffix}?"
                )
            else:
                short_options.append(
                    f"Which {noun} in this {mod} can be damaged by {condition}{suffix}?"
                )
        short_q = str(rng.choice(short_options))
        long_q = f"In this {mod}, which {noun} {category.function} and {second_attr}{suffix}?"
        if appearance:
            long_q += f" On this kind of image {pronoun} {appearance}. Please segment {'them' if plural else 'it'}."
        else:
            long_q += f" Please segment {'them' if plural else 'it'}."
        return [
            QAItem("reasoning", "attribute", "short", short_q, answer, explanation),
            QAItem("reasoning", "attribute", "long", long_q, answer, explanation),
        ]

    def _location_items(
        self,
        label: str,
        category: Category | None,
        noun: str,
        modality: str,
        picked: tuple[list[Descriptor], list[Descriptor]],
        rng: np.random.Generator,
    ) -> list[QAItem]:
        mod = MODALITY_NOUNS.get(modality, "image")
        short, long = picked
        answer = self._answer(label, rng)
        anatomy = f" Anatomically it is found {category.location}." if category else ""

        def joined(descs: list[Descriptor]) -> str:
            return " and ".join(d.vp for d in descs)

        short_q = str(
            rng.choice(
                [
                    f"Which {noun} {joined(short)}?",
                    f"In this image, which {noun} {joined(short)}?",
                ]
            )
        )
        long_q = str(
            rng.choice(
                [
                    f"Looking at this {mod}, which {noun} {joined(long)}? Please segment it.",
                    f"In this {mod}, find the {noun} that {joined(long)}, and outline it.",
                ]
            )
        )
        return [
            QAItem(
                "reasoning",
                "location",
                "short",
                short_q,
                answer,
                f"The {label} {joined(short)}.{anatomy}",
            ),
            QAItem(
                "reasoning",
                "location",
                "long",
                long_q,
                answer,
                f"The {label} {joined(long)}.{anatomy}",
            ),
        ]

    # ----------------------------------------------------------------- main
    def generate(
        self,
        record: Record,
        masks: Sequence[np.ndarray],
        variant: int = 0,
        layout: Layout | None = None,
    ) -> TemplateResult:
        """QA for every target of ``record`` given its ``H x W`` bool ``masks`` (same order).

        ``variant`` > 0 draws another set of choices (facts, descriptors, wording) for the
        same record: extra training questions (``BuildOptions(train_qa_variants=...)``).
        ``layout``: the :class:`Layout` of ``masks`` when the caller has one; the variants
        of one image can share it, since it caches the relations it has computed (the
        distance maps and pieces were most of a build's time when every draw rebuilt
        them)."""
        report = SkipReport()
        if len(masks) != len(record.targets):
            raise ValueError(
                f"record {record.id}: {len(masks)} masks for {len(record.targets)} targets"
            )
        if not record.targets:
            return TemplateResult([], None, report)
        rng = record_rng(self.seed, record.id if not variant else f"{record.id}#{variant}")
        labels = [target.label for target in record.targets]
        if layout is None:
            layout = Layout(labels, masks)
        elif [shape.label for shape in layout.shapes] != labels:
            raise ValueError(
                f"record {record.id}: the layout is of {[s.label for s in layout.shapes]}, "
                f"not of its targets {labels}"
            )
        mod = MODALITY_NOUNS.get(record.modality, "image")
        nouns = [self._noun(label) for label in labels]
        categories = [self._category(label) for label in labels]
        all_items: list[list[QAItem]] = []
        location_descriptors: list[list[Descriptor]] = []
        for t, label in enumerate(labels):
            items: list[QAItem] = []
            category = categories[t]
            peers = [i for i in range(len(labels)) if nouns[i] == nouns[t]]
            descriptors = self._descriptors(t, layout, record, peers, rng)
            location_descriptors.append(descriptors)
            where = region_phrase(layout.vertical(t), layout.horizontal(t))
            region = f"lies in the {where} part of the image"
            items += self._referring(label, mod, region, rng)

            if category is None:
                report.add(
                    "no ontology entry", f"{record.id}/{label}", "attribute questions skipped"
                )
            else:
                same_category = [
                    i
                    for i, c in enumerate(categories)
                    if c is not None and c.name == category.name and i != t
                ]
                disambiguation = None
                if same_category:
                    group = frozenset([*same_category, t])
                    unique = [d for d in descriptors if d.matches & group == frozenset({t})]
                    resolved = self.ontology.resolve(label)
                    if resolved is not None and resolved.side and record.display:
                        disambiguation = f"lies on the patient's {resolved.side} side"
                    elif unique:
                        disambiguation = unique[0].vp
                if same_category and disambiguation is None:
                    report.add(
                        "ambiguous attribute",
                        f"{record.id}/{label}",
                        "same category twice, no unique location",
                    )
                else:
                    items += self._attribute_items(
                        label, category, record.modality, disambiguation, rng
                    )

            picked = self._pick_location(t, descriptors, rng)
            if picked is None:
                report.add("no unique location", f"{record.id}/{label}")
            else:
                items += self._location_items(
                    label, category, nouns[t], record.modality, picked, rng
                )

            kept = []
            for item in items:
                if item.kind == "reasoning":
                    leaked = self.ontology.leaked_term(item.question, label)
                    if leaked is not None:
                        report.add(
                            "label leaked",
                            f"{record.id}/{label}",
                            f"{leaked!r} in {item.question!r}",
                        )
                        continue
                kept.append(item)
            all_items.append(kept)

        conversation = (
            self._conversation(record, layout, categories, all_items, rng, report)
            if self.with_conversation
            else None
        )
        return TemplateResult(all_items, conversation, report)

    def _conversation(
        self,
        record: Record,
        layout: Layout,
        categories: list[Category | None],
        items: list[list[QAItem]],
        rng: np.random.Generator,
        report: SkipReport,
    ) -> list[Turn] | None:
        """MedSeg-style dialogue: an implicit question, then follow-ups about "it"."""
        labels = [s.label for s in layout.shapes]
        starters = [
            (t, item)
            for t in range(len(labels))
            for item in items[t]
            if item.kind == "reasoning"
            and item.perspective == "attribute"
            and item.length == "short"
        ]
        if not starters:
            return None
        a, first = starters[int(rng.integers(len(starters)))]
        turns = [Turn("user", first.question), Turn("assistant", first.answer, target=a)]

        # Follow-up: the closest other target in one clear direction from the answer.
        options = []
        for direction in ("above", "below", "left", "right"):
            candidates = [
                b
                for b in range(len(labels))
                if labels[b] != labels[a] and layout.direction(b, a) == direction
            ]
            if candidates:
                ax, ay = layout.shapes[a].centroid
                nearest = min(
                    candidates,
                    key=lambda b: (
                        (layout.shapes[b].centroid[0] - ax) ** 2
                        + (layout.shapes[b].centroid[1] - ay) ** 2
                    ),
                )
                options.append((direction, nearest))
        if not options:
            return self._check_conversation(record, labels, turns, report)
        direction, b = options[int(rng.integers(len(options)))]
        where = {
            "above": "above it in the image",
            "below": "below it in the image",
            "left": "to its left in the image",
            "right": "to its right in the image",
        }[direction]
        question = str(
            rng.choice(
                [
                    f"And which structure lies closest to it, {where}?",
                    f"What is the nearest structure {where}? Segment that one too.",
                ]
            )
        )
        category = categories[b]
        plural_b = category is not None and _is_plural_phrase(category.function)
        verb = "Those are" if plural_b else "That is"
        turns += [Turn("user", question), Turn("assistant", f"{verb} the {labels[b]}.", target=b)]
        if category is not None:
            plural = _is_plural_phrase(category.function)
            turns += [
                Turn(
                    "user",
                    str(
                        rng.choice(
                            ["What does it do?", "What is its role?", "What is that structure for?"]
                        )
                    ),
                ),
                Turn("assistant", f"The {labels[b]} {category.function}."),
            ]
            if plural:
                return self._check_conversation(record, labels, turns, report)
        side = layout.half(b)
        patient = patient_side(side, record.display) if side != "centre" else None
        if patient is not None:
            turns += [
                Turn("user", "Is it on the patient's left or right side?"),
                Turn(
                    "assistant",
                    f"It is on the patient's {patient} side, which this {record.display} view shows on the {side} of the image.",
                ),
            ]
        return self._check_conversation(record, labels, turns, report)

    def _check_conversation(
        self, record: Record, labels: list[str], turns: list[Turn], report: SkipReport
    ) -> list[Turn] | None:
        """Drop the conversation if a user turn names the object it asks about (the target
        of the next assistant turn, or the current topic for text-only answers)."""
        topic = None
        for i, turn in enumerate(turns):
            if turn.role != "user":
                topic = turn.target if turn.target is not None else topic
                continue
            reply = turns[i + 1] if i + 1 < len(turns) else None
            about = reply.target if reply is not None and reply.target is not None else topic
            if about is not None and self.ontology.leaked_term(turn.text, labels[about]):
                report.add("label leaked", f"{record.id}/conversation", turn.text)
                return None
        return turns


def kind_noun(kind: str) -> str:
    """The question noun for an ontology kind (re-exported for other engines)."""
    return KIND_NOUNS[kind]
