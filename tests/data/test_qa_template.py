"""Template QA: implicit questions never name the target; location phrases are true."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medisee.data.qa_template import TemplateEngine
from medisee.data.samples import load_target_mask
from medisee.data.schema import Record, Target


def _forbidden(ontology, label):
    """Independent of Ontology.leaked_term: the label, its category name, synonyms and
    adjectives, as case-insensitive whole words (plural s/es allowed)."""
    terms = {label}
    resolved = ontology.resolve(label)
    if resolved is not None:
        category = resolved.category
        terms |= {category.name, *category.synonyms, *category.adjectives}
    patterns = []
    for term in terms:
        words = [re.escape(w) for w in re.split(r"[\s_\-]+", term.lower()) if w]
        patterns.append(
            re.compile(r"(?<![a-z0-9])" + r"[\s_\-]+".join(words) + r"(?:s|es)?(?![a-z0-9])", re.I)
        )
    return patterns


def test_no_reasoning_question_names_its_target(bundled, ontology):
    checked = 0
    for record in bundled.records:
        for target in record.targets:
            patterns = _forbidden(ontology, target.label)
            for item in target.qa:
                if item.kind != "reasoning":
                    assert target.label in item.question  # referring questions do name it
                    continue
                for pattern in patterns:
                    assert not pattern.search(item.question), (
                        record.id,
                        target.label,
                        item.question,
                    )
                checked += 1
        # Conversation user turns do not name the object the next answer segments.
        turns = record.conversation or []
        for i, turn in enumerate(turns[:-1]):
            if turn.role == "user" and turns[i + 1].target is not None:
                label = record.targets[turns[i + 1].target].label
                assert not any(p.search(turn.text) for p in _forbidden(ontology, label)), turn.text
    assert checked > 800


def test_every_target_gets_both_perspectives_and_lengths(bundled):
    kinds = set()
    for record in bundled.records:
        for target in record.targets:
            for item in target.qa:
                kinds.add((item.kind, item.perspective, item.length))
                assert item.answer and target.label in item.answer
                if item.kind == "reasoning":
                    assert item.explanation
    assert kinds == {
        ("referring", None, "short"),
        ("referring", None, "long"),
        ("reasoning", "attribute", "short"),
        ("reasoning", "attribute", "long"),
        ("reasoning", "location", "short"),
        ("reasoning", "location", "long"),
    }
    counts = bundled.qa_report.counts
    total = sum(len(t.qa) for r in bundled.records for t in r.targets)
    assert sum(counts.values()) < 0.02 * total  # dropped or impossible items are rare


_SIDE = re.compile(r"on the (left|right) side of the image")
_PATIENT = re.compile(r"on the patient's (left|right) side")
_RELATION = re.compile(
    r"(above|below|beneath|to the left of|to the right of) the ([a-z0-9 \-]+?) in the image"
)


def _centroids(record, root):
    return [
        np.argwhere(load_target_mask(record, t, root)).mean(axis=0)[::-1] + 0.5
        for t in record.targets
    ]


def test_location_phrases_are_true(bundled):
    """Parse side and relation phrases back out of the questions and check them on the masks."""
    root = bundled.manifest.parent
    checked = 0
    for record in bundled.records:
        centroids = _centroids(record, root)
        index = {t.label: i for i, t in enumerate(record.targets)}
        for t, target in enumerate(record.targets):
            x, y = centroids[t]
            for item in target.qa:
                if item.perspective != "location":
                    continue
                text = item.question
                for side in _SIDE.findall(text):
                    assert (x < record.width / 2) == (side == "left"), (record.id, text)
                    checked += 1
                for patient in _PATIENT.findall(text):
                    assert record.display == "radiological"
                    image_side = "left" if patient == "right" else "right"
                    assert (x < record.width / 2) == (image_side == "left"), (record.id, text)
                    checked += 1
                for relation, other in _RELATION.findall(text):
                    ox, oy = centroids[index[other]]
                    ok = {
                        "above": y < oy,
                        "below": y > oy,
                        "beneath": y > oy,
                        "to the left of": x < ox,
                        "to the right of": x > ox,
                    }[relation]
                    assert ok, (record.id, target.label, text)
                    checked += 1
    assert checked > 200


def test_conversations_follow_up_on_the_previous_answer(bundled):
    root = bundled.manifest.parent
    with_follow_up = 0
    for record in bundled.records:
        turns = record.conversation
        assert turns, record.id
        assert [t.role for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert turns[1].target is not None
        if len(turns) >= 4:
            a, b = turns[1].target, turns[3].target
            centroids = _centroids(record, root)
            text = turns[2].text
            if "below it" in text:
                assert centroids[b][1] > centroids[a][1]
            elif "above it" in text:
                assert centroids[b][1] < centroids[a][1]
            elif "to its left" in text:
                assert centroids[b][0] < centroids[a][0]
            elif "to its right" in text:
                assert centroids[b][0] > centroids[a][0]
            assert record.targets[b].label in turns[3].text
            with_follow_up += 1
    assert with_follow_up > 20


def _toy_record(masks, labels, display="radiological"):
    from medisee.boxes import mask_to_box

    targets = [
        Target(label, "x.png", mask_to_box(m), int(m.sum())) for label, m in zip(labels, masks)
    ]
    return Record(
        "toy",
        "toy.png",
        "CT",
        "test",
        "toy",
        masks[0].shape[0],
        masks[0].shape[1],
        targets,
        display=display,
    )


ABDOMEN_LABELS = ["liver", "spleen", "left kidney"]


def _toy_abdomen(kidney: tuple[slice, slice]) -> list[np.ndarray]:
    """Masks of :data:`ABDOMEN_LABELS` on a 64 x 96 image: the liver on the image's left
    (the patient's right, radiological), the spleen on its right, the kidney at
    ``kidney`` (rows, columns)."""
    masks = [np.zeros((64, 96), bool) for _ in ABDOMEN_LABELS]
    masks[0][10:40, 5:35] = True
    masks[1][15:30, 70:85] = True
    masks[2][kidney] = True
    return masks


def test_sides_on_a_toy_image(ontology):
    liver, spleen, kidney = _toy_abdomen((slice(45, 60), slice(75, 85)))  # below the spleen
    record = _toy_record([liver, spleen, kidney], ABDOMEN_LABELS)
    result = TemplateEngine(ontology, seed=0).generate(record, [liver, spleen, kidney])
    text = " ".join(
        item.question for items in result.qa for item in items if item.perspective == "location"
    )
    assert "patient's left side, which is the left side" not in text
    kidney_location = [i.question for i in result.qa[2] if i.perspective == "location"]
    assert kidney_location
    attribute = [i.question for i in result.qa[2] if i.perspective == "attribute"]
    assert all("kidney" not in q.lower() and "renal" not in q.lower() for q in attribute)
    # Order and count of other records do not change a record's questions.
    again = TemplateEngine(ontology, seed=0).generate(record, [liver, spleen, kidney])
    assert again.qa == result.qa and again.conversation == result.conversation
    other_seed = TemplateEngine(ontology, seed=1).generate(record, [liver, spleen, kidney])
    assert other_seed.qa != result.qa


def test_a_paired_structure_moved_across_the_middle_keeps_its_own_side(ontology):
    """A view that moves the left kidney into the image's left half (the patient's right
    on a radiological display) says where it lies in the image, never that it lies on
    the patient's right; the other questions are drawn as before."""
    liver, spleen, kidney = _toy_abdomen((slice(45, 60), slice(10, 20)))  # image's left
    record = _toy_record([liver, spleen, kidney], ABDOMEN_LABELS)
    said: set[str] = set()
    for seed in range(12):
        result = TemplateEngine(ontology, seed=seed).generate(record, [liver, spleen, kidney])
        for item in result.qa[2]:
            assert "patient's right" not in item.question
            if "left side of the image" in item.question:
                said.add(item.question)
    assert said  # the image side is still said
    # The liver's questions, whose side agrees with the frame, are unchanged in kind.
    liver_text = " ".join(
        item.question
        for seed in range(12)
        for item in TemplateEngine(ontology, seed=seed)
        .generate(record, [liver, spleen, kidney])
        .qa[0]
    )
    assert "patient's right" in liver_text


def test_a_shared_layout_draws_the_same_questions(ontology):
    from medisee.data.geometry import Layout

    # The kidney right next to the liver, so the layout computes a distance map.
    masks, labels = _toy_abdomen((slice(30, 45), slice(36, 46))), ABDOMEN_LABELS
    record = _toy_record(masks, labels)
    engine = TemplateEngine(ontology, seed=0)
    layout = Layout(labels, masks)
    for variant in range(3):
        fresh = engine.generate(record, masks, variant=variant)
        shared = engine.generate(record, masks, variant=variant, layout=layout)
        assert shared.qa == fresh.qa and shared.conversation == fresh.conversation
    # The shared layout kept what it computed for the later draws.
    assert layout._distance
    with pytest.raises(ValueError, match="layout"):
        engine.generate(record, masks, layout=Layout(labels[::-1], masks[::-1]))


def test_unknown_label_gets_referring_and_location_only(ontology):
    h, w = 40, 40
    a = np.zeros((h, w), bool)
    a[5:15, 2:12] = True
    b = np.zeros((h, w), bool)
    b[20:35, 25:38] = True
    record = _toy_record([a, b], ["flux capacitor", "liver"], display=None)
    result = TemplateEngine(ontology, seed=0).generate(record, [a, b])
    perspectives = {item.perspective for item in result.qa[0]}
    assert "attribute" not in perspectives and "location" in perspectives
    assert result.report.counts["no ontology entry"] == 1
    assert not any(
        "patient" in item.question for items in result.qa for item in items
    )  # no display convention


def test_mask_count_must_match(ontology):
    record = _toy_record([np.ones((4, 4), bool)], ["liver"])
    with pytest.raises(ValueError, match="masks"):
        TemplateEngine(ontology).generate(record, [])


@pytest.mark.parametrize(
    ("vertical", "horizontal", "phrase"),
    [
        ("upper", "left", "upper left"),
        ("middle", "right", "middle right"),
        ("middle", "centre", "central"),
        ("lower", "centre", "lower central"),
    ],
)
def test_region_phrase(vertical, horizontal, phrase):
    from medisee.data.geometry import region_phrase

    assert region_phrase(vertical, horizontal) == phrase


def test_mask_region_reads_the_centroids_third_of_the_image():
    from medisee.data.geometry import mask_region

    mask = np.zeros((100, 200), dtype=bool)
    assert mask_region(mask) is None
    mask[5:15, 150:190] = True  # centroid (170.5, 10.5): right third, top third
    assert mask_region(mask) == "upper right"
    mask[:] = False
    mask[45:55, 95:105] = True  # the middle of both
    assert mask_region(mask) == "central"
    mask[:] = False
    mask[70:90, 10:30] = True  # x 20.5 / 200 is left; y 80.5 / 100 is lower
    assert mask_region(mask) == "lower left"
