"""A reply names only structures its kind of exam shows: kinds, what each shows, the
structures an answer sentence names, and the verdict."""

from types import SimpleNamespace

import pytest

from medisee.data.ontology import Ontology
from medisee.data.schema import exam_kind
from medisee.evaluate.metrics import TargetScore, summarize
from medisee.evaluate.plausibility import (
    is_plausible,
    named_structures,
    structures_by_exam,
)


@pytest.fixture(scope="module")
def ontology():
    return Ontology.load()


def _record(modality, labels, kind=None):
    meta = {"kind": kind} if kind else {}
    return SimpleNamespace(
        modality=modality, meta=meta, targets=[SimpleNamespace(label=x) for x in labels]
    )


RECORDS = [
    _record("MRI", ["brain", "white matter", "left lateral ventricle"], "brain_mri"),
    _record("MRI", ["brain tumor"], "brain_mri"),
    _record("CT", ["left lung", "right lung", "lung tumor"], "chest_ct"),
    _record("CT", ["vertebra"]),  # no kind: judged by its modality
]


def test_exam_kind_is_the_meta_kind_else_the_modality():
    assert [exam_kind(r) for r in RECORDS] == ["brain_mri", "brain_mri", "chest_ct", "CT"]


def test_structures_by_exam_pools_each_kind_by_ontology_category(ontology):
    shown = structures_by_exam(RECORDS, ontology)
    assert shown == {
        "brain_mri": {"brain", "white matter", "lateral ventricle", "brain tumor"},
        "chest_ct": {"lung", "lung tumor"},
        "CT": {"vertebra"},
    }


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        ("It is the left lung. It lies beside the heart.", {"lung"}),  # answer sentence only
        ("The lung tumor. It sits in the right lung.", {"lung tumor"}),  # not "lung" too
        ("It is the liver and the spleen.", {"liver", "spleen"}),
        ("Sure, this is the hepar.", {"liver"}),  # a synonym
        ("It is the growth.", set()),
    ],
)
def test_named_structures_reads_the_answer_sentence_longest_terms_first(reply, named, ontology):
    assert named_structures(reply, ontology) == named


@pytest.mark.parametrize(
    ("reply", "kind", "verdict"),
    [
        ("It is the right lateral ventricle.", "brain_mri", True),
        ("It is the left lung.", "brain_mri", False),  # the brain MRI reply
        ("It is the brain tumor and the liver.", "brain_mri", False),  # one is enough
        ("The lung tumor.", "chest_ct", True),
        ("It is the growth.", "brain_mri", None),  # names nothing known
        ("It is the vertebra.", "fundus", None),  # a kind the data never shows
    ],
)
def test_is_plausible(reply, kind, verdict, ontology):
    assert is_plausible(reply, kind, structures_by_exam(RECORDS, ontology), ontology) is verdict


def test_plausible_rate_averages_the_judged_replies_only():
    def score(plausible):
        return TargetScore(1.0, 1.0, 1, 1, 1.0, True, named=True, plausible=plausible)

    summary = summarize([score(True), score(False), score(None), score(True)])
    assert summary.plausible_rate == pytest.approx(2 / 3)
    assert summary.as_dict()["plausible_rate"] == pytest.approx(2 / 3)
