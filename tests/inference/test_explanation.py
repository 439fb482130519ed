"""Explanations about another structure than the answer's (``medisee.inference.explanation``)."""

from __future__ import annotations

import pytest

from medisee.data.ontology import Ontology
from medisee.data.qa_template import attribute_explanation
from medisee.inference.explanation import (
    checked_reply,
    exam_modality,
    foreign_structure,
    presence_reply,
)


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return Ontology.load()


def test_foreign_structure_finds_another_structures_facts_or_subject(ontology) -> None:
    carotid = ontology.categories["common carotid artery"]
    kidney = ontology.categories["kidney"]
    # Another structure's function, told of the answer: the carotid's.
    spliced = f"The left kidney {carotid.function}; it is a thick-shaped and forms a thin wall."
    assert foreign_structure("left kidney", spliced, ontology) == "common carotid artery"
    # A first sentence about another structure (sides and all).
    assert foreign_structure("skull", "The right femoral head is a growth.", ontology) == (
        "right femoral head"
    )
    # The answer doing what only another structure does: the opening of its function.
    garbled = "The heart conducts air in the lower part of the image."
    assert foreign_structure("heart", garbled, ontology) == "trachea"
    # A geometry phrase opens some functions too ("contains the"): not another's deed.
    inside = "The brain contains the left lateral ventricle."
    assert foreign_structure("brain", inside, ontology) is None
    # The answer's own facts, a neighbour named later, or nothing: about the answer.
    own = f"The left kidney {kidney.function}; it {kidney.attributes[0]}."
    assert foreign_structure("left kidney", own, ontology) is None
    neighbour = "The pectoral muscle lies to the right of the breast mass in the image."
    assert foreign_structure("pectoral muscle", neighbour, ontology) is None
    assert foreign_structure("left kidney", "", ontology) is None
    assert foreign_structure("no such structure", spliced, ontology) is None


def test_checked_reply_puts_the_answers_own_explanation_in_place(ontology) -> None:
    carotid = ontology.categories["common carotid artery"]
    kidney = ontology.categories["kidney"]
    reply = f"This is the left kidney. The left kidney {carotid.function}; it is round."
    checked, replaced = checked_reply(reply, "CT", ontology)
    assert replaced
    expected = (
        f"This is the left kidney. The left kidney {kidney.function}; it "
        f"{kidney.attributes[0]}. On this CT scan it {kidney.appearance['CT']}. It is found "
        f"{kidney.location}."
    )
    assert checked == expected
    # No modality the ontology describes: no appearance sentence.
    bare, _ = checked_reply(reply, None, ontology)
    assert bare == expected.replace(f" On this CT scan it {kidney.appearance['CT']}.", "")
    # A reply about its own answer, or with no answer sentence, is left as it is.
    fine = f"Sure, this is the left kidney. The left kidney {kidney.function}."
    assert checked_reply(fine, "CT", ontology) == (fine, False)
    assert checked_reply("I was not trained to find it.", "CT", ontology)[1] is False


def test_the_templates_attribute_explanation_reads_as_before(ontology) -> None:
    liver = ontology.categories["liver"]
    text = attribute_explanation("liver", liver, "MRI", liver.attributes[1])
    assert text == (
        f"The liver {liver.function}; it {liver.attributes[1]}. On this MRI scan it "
        f"{liver.appearance['MRI']}. It is found {liver.location}."
    )


@pytest.mark.parametrize(
    ("exam", "modality"),
    [
        ("brain_mri", "MRI"),
        ("chest_ct", "CT"),
        ("CT", "CT"),
        ("chest_xray", "X-ray"),
        ("thyroid_ultrasound", "ultrasound"),
        ("colonoscopy", "endoscopy"),
        ("fundus", "fundus"),
        ("mammography", "mammography"),
        ("tarot_card", None),
        (None, None),
    ],
)
def test_exam_modality(exam, modality) -> None:
    assert exam_modality(exam) == modality


def test_grounded_position_says_where_the_mask_is() -> None:
    import numpy as np

    from medisee.inference.explanation import grounded_position

    mask = np.zeros((90, 90), dtype=bool)
    mask[60:80, 5:20] = True  # lower left third
    reply = "Sure, this is the spleen. The spleen lies in the middle right part of the image."
    assert grounded_position(reply, mask) == (
        "Sure, this is the spleen. The spleen lies in the lower left part of the image.",
        True,
    )
    # Already right, a vertical-only phrase, no phrase, no mask.
    right = "Sure, this is the spleen. The spleen lies in the lower left part of the image."
    assert grounded_position(right, mask) == (right, False)
    # A phrase that named only the vertical third keeps that form.
    assert grounded_position("It lies in the upper part of the image.", mask)[0] == (
        "It lies in the lower part of the image."
    )
    assert grounded_position("It lies in the lower part of the image.", mask)[1] is False
    middle = np.zeros_like(mask)
    middle[40:50, 70:85] = True  # middle right: "middle part" is not a template phrase
    assert grounded_position("It lies in the upper part of the image.", middle)[0] == (
        "It lies in the middle right part of the image."
    )
    assert grounded_position("It is the spleen.", mask) == ("It is the spleen.", False)
    assert grounded_position(reply, np.zeros_like(mask)) == (reply, False)


def test_a_question_whether_a_structure_is_there_gets_what_the_model_can_say() -> None:
    reply = "Sure, this is the lung tumor. The lung tumor lies in the middle right part."
    said, subject = presence_reply("Is there a lung tumor here?", reply)
    assert subject == "lung tumor"
    assert said == (
        "I cannot tell from the image whether there is a lung tumor; the region most like "
        "one is outlined. The lung tumor lies in the middle right part."
    )
    assert presence_reply("Are there any abnormalities?", "It is the aorta.")[0].startswith(
        "I cannot tell from the image whether there is an aorta;"
    )
    assert presence_reply("Do you see a tumour?", reply)[1] == "lung tumor"
    for asked in (
        "Does this scan show a tumour?",
        "Does the patient have a lung tumor?",
        "Show me the tumour if there is one.",
        "Segment any nodules, if present.",
        "Any sign of a mass in the lungs?",
    ):
        assert presence_reply(asked, reply)[1] == "lung tumor", asked
    # Other questions, and replies without an answer sentence, are left alone.
    for other in ("Where is the lung tumor?", "What does this scan show?", "If so, where?"):
        assert presence_reply(other, reply) == (reply, None), other
    assert presence_reply("Is there a tumor?", "The region is dark.") == (
        "The region is dark.",
        None,
    )
