import pytest

from medisee.model.laterality import label_side, opposite_side_labels, question_side

LABELS = ["left lung", "right lung", "right ventricle", "left ventricle", "liver", "heart"]


@pytest.mark.parametrize(
    ("question", "side"),
    [
        ("Which organ on the patient's left side fills with air?", "left"),
        ("Which round bone end fits into the right hip socket of this patient?", "right"),
        ("Find the fluid-filled space inside the LEFT half of the brain.", "left"),
        ("Which muscle runs along the right-side of the lower backbone?", "right"),
        # Sides of the picture: which patient side depends on the display convention.
        ("Which structure lies on the right side of the image?", None),
        ("Which organ lies in the left part of this CT image?", None),
        ("Which structure is on the image's left?", None),
        # Relative places and the adverb are no side of the patient.
        ("Which organ lies to the right of the heart?", None),
        ("Which organ lies right next to the esophagus?", None),
        # A side inside a label's name is a landmark.
        ("Which heart chamber lies right next to the right ventricle?", None),
        ("Which chamber lies beside the right ventricle, on the patient's left?", "left"),
        # Both sides, or none.
        ("Which kidney is larger here, the left or the right?", None),
        ("Which organ filters the blood?", None),
    ],
)
def test_question_side(question, side):
    assert question_side(question, LABELS) == side


def test_a_landmark_counts_as_a_side_only_when_not_named_as_a_label():
    question = "Which chamber lies next to the right ventricle?"
    assert question_side(question) == "right"  # no labels known: just a word
    assert question_side(question, ["right ventricle"]) is None


def test_label_side_and_the_opposite_labels():
    assert label_side("left lung") == "left"
    assert label_side("right lateral ventricle") == "right"
    assert label_side("liver") is None
    assert label_side("right") is None  # a bare side is no sided label
    question = "Where is the breathing organ on the right side of this patient's chest?"
    assert opposite_side_labels(question, LABELS) == ["left lung", "left ventricle"]
    assert opposite_side_labels("Where is the liver?", LABELS) == []
    # Landmarks beyond the allowed labels are known too.
    asked = "Which organ lies next to the left psoas muscle?"
    assert opposite_side_labels(asked, ["left kidney", "right kidney"]) == ["right kidney"]
    assert opposite_side_labels(asked, ["left kidney", "right kidney"], ["left psoas muscle"]) == []
