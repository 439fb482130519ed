"""Questions that name the structure they ask for (``medisee.model.asked_structure``),
and the reply when the image's exam cannot show it."""

from __future__ import annotations

import pytest

from medisee.data.ontology import Ontology
from medisee.model.asked_structure import (
    Absence,
    BothSides,
    absence,
    absent_reply,
    asked_structure,
    asks_about_image,
    both_sides,
    exam_phrase,
    generic_labels,
    generic_request,
    kind_labels,
    labels_for,
)


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return Ontology.load()


@pytest.mark.parametrize(
    ("question", "label"),
    [
        ("Where is the liver?", "liver"),
        ("Where's the liver", "liver"),
        ("Segment the liver in this image.", "liver"),
        ("Please segment the liver", "liver"),
        ("Can you show me the left kidney?", "left kidney"),
        ("Is there a lung tumour here?", "lung tumor"),  # a synonym, resolved
        ("Point to the gallbladder, please.", "gallbladder"),
        ("Find the spinal cord on this scan.", "spinal cord"),
        ("Where is the kidney?", "kidney"),
        # Plurals, read as their singular (the ontology names one of each).
        ("Where are the lateral ventricles?", "lateral ventricle"),
        ("Segment the kidneys.", "kidney"),
        ("Where are the common carotid arteries?", "common carotid artery"),
        ("Where are the vertebrae?", "vertebra"),
        ("Do you see a liver tumor here?", "liver tumor"),
        # Whether it is there, asked outright or on a condition (presence_reply's forms).
        ("Does this scan show a liver tumor?", "liver tumor"),
        ("Does the patient have a lung tumour?", "lung tumor"),
        ("Show me the lung nodules if there are any.", "lung nodule"),
        ("Segment the pleural effusion, if present.", "pleural effusion"),
        ("Is there any sign of a brain tumor?", "brain tumor"),
    ],
)
def test_a_plain_request_names_its_structure(ontology, question, label) -> None:
    asked = asked_structure(question, ontology)
    assert asked is not None and asked.label == label


@pytest.mark.parametrize(
    "question",
    [
        "Which organ filters the blood?",  # implicit: the reasoning task itself
        "Find the bone of the backbone",  # the object is a description, not a name
        "Show me the windpipe that carries air down to the lungs.",
        "Where does the food I swallow travel on its way down to my stomach?",
        "Where is the tumour?",  # not one structure's name (a sort: generic_request)
        "What does the liver do?",  # not a request for a region
        "Where is the glass?",  # no singular of a structure either
    ],
)
def test_other_questions_name_no_structure(ontology, question) -> None:
    assert asked_structure(question, ontology) is None


def test_absence_by_exam_side_and_training(ontology) -> None:
    trained = ("brain", "left kidney", "right kidney", "liver")
    abdomen = ("left kidney", "liver", "right kidney")
    ask = lambda q: asked_structure(q, ontology)  # noqa: E731
    # A brain MRI does not show the liver; no label of the model is the spleen.
    brain = ("brain",)
    assert not labels_for(ask("Where is the liver?"), brain, ontology)
    assert absence(ask("Where is the liver?"), trained, ontology) == Absence("liver", "not_shown")
    assert not labels_for(ask("Where is the spleen?"), abdomen, ontology)
    assert absence(ask("Where is the spleen?"), trained, ontology) == Absence(
        "spleen", "not_trained"
    )
    # Asked for one side where only the other is shown.
    left_only = ("left kidney",)
    assert not labels_for(ask("Where is the right kidney?"), left_only, ontology)
    assert absence(ask("Where is the right kidney?"), trained, ontology) == Absence(
        "right kidney", "not_shown"
    )


def test_labels_for_keeps_the_asked_structure_and_its_sides(ontology) -> None:
    labels = ("brain", "left kidney", "right kidney", "liver")
    ask = lambda q: asked_structure(q, ontology)  # noqa: E731
    assert labels_for(ask("Where is the liver?"), labels, ontology) == ["liver"]
    assert labels_for(ask("Where is the kidney?"), labels, ontology) == [
        "left kidney", "right kidney",
    ]  # fmt: skip
    assert labels_for(ask("Segment the right kidney."), labels, ontology) == ["right kidney"]
    assert labels_for(ask("Where is the spleen?"), labels, ontology) == []


@pytest.mark.parametrize(
    ("question", "about_image"),
    [
        ("What is this image?", True),
        ("What kind of scan is this?", True),
        ("What am I looking at?", True),
        ("What does this image show?", True),
        ("what's this", True),
        ("What is this organ?", False),  # a structure of the image
        ("What is shown here?", False),
        ("What is the liver?", False),
    ],
)
def test_asks_about_image(question, about_image) -> None:
    assert asks_about_image(question) is about_image


def test_the_reply_says_why_and_what_can_be_found() -> None:
    allowed = ("white matter", "brain", "skull")
    assert absent_reply(Absence("liver", "not_shown"), "brain_mri", allowed) == (
        "This looks like a brain MRI, which does not show the liver, so there is nothing "
        "to segment. On a brain MRI I can find the brain, the skull and the white matter."
    )
    assert absent_reply(Absence("spleen", "not_trained"), "fundus", ("macula",)) == (
        "I was not trained to find the spleen, so I cannot segment it. "
        "On a fundus image I can find the macula."
    )
    assert absent_reply(Absence("liver", "not_shown"), None, ()) == (
        "The liver is not shown on this kind of image."
    )


def test_exam_phrases_read_as_english() -> None:
    assert exam_phrase("brain_mri") == "a brain MRI"
    assert exam_phrase("chest_xray") == "a chest X-ray"
    assert exam_phrase("abdominal_ct") == "an abdominal CT"
    assert exam_phrase("echocardiography") == "an echocardiography image"
    assert exam_phrase("CT") == "a CT"


# The labels of three exams of the demo's model (``config.json``'s ``exams``).
CHEST_CT = (
    "aorta", "body", "bone", "esophagus", "heart", "left lung", "lung nodule", "lung tumor",
    "pleural effusion", "right lung", "spinal canal", "sternum", "trachea", "vertebra",
)  # fmt: skip
BRAIN_MRI = (
    "brain", "brain tumor", "gray matter", "ischemic stroke lesion", "left lateral ventricle",
    "multiple sclerosis lesion", "peritumoral edema", "right lateral ventricle", "skull",
    "third ventricle", "white matter",
)  # fmt: skip
NECK_US = (
    "esophagus", "left common carotid artery", "left internal jugular vein",
    "right common carotid artery", "right internal jugular vein", "thyroid gland", "trachea",
)  # fmt: skip


@pytest.mark.parametrize(
    ("question", "labels", "expected"),
    [
        # A growth: the labels named so, in either spelling.
        ("Where is the tumour?", CHEST_CT, ["lung tumor"]),
        ("Where is the tumor?", BRAIN_MRI, ["brain tumor"]),
        ("Find the cancer.", CHEST_CT, ["lung tumor"]),  # "lung cancer", a synonym
        # An abnormality: every lesion the exam shows.
        ("Segment the lesion.", CHEST_CT, ["lung nodule", "lung tumor", "pleural effusion"]),
        (
            "Is there an abnormality?",
            BRAIN_MRI,
            [
                "brain tumor",
                "ischemic stroke lesion",
                "multiple sclerosis lesion",
                "peritumoral edema",
            ],
        ),  # fmt: skip
        (
            "Do you see anything abnormal?",
            CHEST_CT,
            ["lung nodule", "lung tumor", "pleural effusion"],
        ),
        # The last word(s) of a label's name, singular or plural, with a side.
        (
            "Where are the ventricles?",
            BRAIN_MRI,
            ["left lateral ventricle", "right lateral ventricle", "third ventricle"],
        ),  # fmt: skip
        (
            "Where is the artery?",
            NECK_US,
            ["left common carotid artery", "right common carotid artery"],
        ),  # fmt: skip
        (
            "Where are the carotid arteries?",
            NECK_US,
            ["left common carotid artery", "right common carotid artery"],
        ),  # fmt: skip
        ("Segment the left vein.", NECK_US, ["left internal jugular vein"]),
        ("Show me the tumour if there is one.", CHEST_CT, ["lung tumor"]),
        ("Does this scan show a mass?", CHEST_CT, ["lung nodule"]),  # a "lung mass"
        # A kind's noun: every label of that kind.
        ("Where is the organ?", NECK_US, ["esophagus", "thyroid gland", "trachea"]),
        # Nothing of that sort on this exam.
        ("Where is the artery?", BRAIN_MRI, []),
    ],
)
def test_a_request_by_a_general_noun_gets_the_labels_of_its_sort(
    ontology, question, labels, expected
) -> None:
    request = generic_request(question, ontology)
    assert request is not None
    assert generic_labels(request, labels, ontology) == expected


@pytest.mark.parametrize(
    "question",
    [
        "Where is the liver?",  # a structure's own name: asked_structure
        "Where is the glass?",  # names no sort of structure
        "Which organ filters the blood?",  # not a plain request
        "Where is the pain?",
        "Any sign of a mass in the lungs?",  # a place the request does not parse
    ],
)
def test_other_questions_are_no_general_request(ontology, question) -> None:
    assert generic_request(question, ontology) is None


def test_a_kind_asked_by_name_on_an_exam_without_its_label(ontology) -> None:
    # "Where is the bone?" on an abdominal CT: the vertebra is one.
    asked = asked_structure("Where is the bone?", ontology)
    assert asked is not None and not labels_for(asked, ("liver", "vertebra"), ontology)
    assert kind_labels(asked, ("liver", "vertebra"), ontology) == ["vertebra"]
    # "body" is no kind: not the vertebra, whose synonym "vertebral body" ends in it.
    body = asked_structure("Segment the body.", ontology)
    assert body is not None and kind_labels(body, ("liver", "vertebra"), ontology) == []


def test_the_reply_when_no_label_is_of_the_sort() -> None:
    assert absent_reply(Absence("artery", "none_of_sort"), "brain_mri", ("brain",)) == (
        "I was not trained to find an artery on a brain MRI, so I cannot segment one. "
        "On a brain MRI I can find the brain."
    )


@pytest.mark.parametrize(
    ("question", "plural", "labels"),
    [
        ("Where are the lungs?", "lungs", ("left lung", "right lung")),
        ("Segment the kidneys.", "kidneys", ("left kidney", "right kidney")),
        (
            "Where are the lateral ventricles?",
            "lateral ventricles",
            ("left lateral ventricle", "right lateral ventricle"),
        ),
    ],
)
def test_a_paired_structure_in_the_plural_asks_for_both_sides(
    ontology, question, plural, labels
) -> None:
    assert both_sides(question, ontology) == BothSides(plural, labels)


@pytest.mark.parametrize(
    "question",
    [
        "Where is the kidney?",  # one of them
        "Where are the left lungs?",  # a side named
        "Where are the vertebrae?",  # not paired
        "Where are the bones?",  # a name as written (a synonym), not a plural
        "Which organs filter the blood?",  # not a plain request
    ],
)
def test_other_questions_ask_for_no_pair(ontology, question) -> None:
    assert both_sides(question, ontology) is None
