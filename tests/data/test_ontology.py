"""The shipped ontology: size, completeness, consistency with the phantoms."""

from __future__ import annotations

import pytest

from medisee.data.ontology import KINDS, Category, Ontology


def test_ontology_size_and_fields(ontology):
    assert len(ontology) >= 100
    modalities = set()
    for category in ontology.categories.values():
        assert category.kind in KINDS
        assert (
            category.function and category.location and category.attributes and category.appearance
        )
        modalities |= set(category.appearance)
        # Phrases feed implicit questions: none may name its own category.
        for text in (
            category.function,
            *category.attributes,
            category.location,
            *category.appearance.values(),
            *category.conditions,
        ):
            assert ontology.leaked_term(text, category.name) is None, (category.name, text)
    assert {
        "CT",
        "MRI",
        "X-ray",
        "ultrasound",
        "fundus",
        "endoscopy",
        "dermoscopy",
        "mammography",
    } <= modalities


def test_label_resolution(ontology):
    assert ontology.resolve("Kidney_Left").label == "left kidney"
    assert ontology.resolve("right lung").side == "right"
    assert ontology.resolve("left ventricle").side is None  # a chamber, not a side
    assert ontology.resolve("hepar").label == "liver"
    assert ontology.resolve("left liver") is None  # the liver is not paired
    assert ontology.resolve("flux capacitor") is None
    assert ontology.leaked_term("Which organs filter the blood?", "left kidney") is None
    assert ontology.leaked_term("Both KIDNEYS are visible", "left kidney") == "kidney"
    assert ontology.leaked_term("the renal-cortex", "left kidney") == "renal"
    assert ontology.leaked_term("a kidneyshaped thing", "left kidney") is None  # word boundaries


def test_duplicate_terms_are_rejected():
    def category(name, synonyms):
        return Category(
            name,
            "organ",
            "x",
            False,
            tuple(synonyms),
            (),
            "does x",
            ("is y",),
            "in z",
            {"CT": "looks w"},
            (),
        )

    with pytest.raises(ValueError, match="names both"):
        Ontology([category("a", ["shared"]), category("b", ["shared"])])
