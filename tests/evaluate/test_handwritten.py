"""Hand-written questions: loading, pairing with images, naming, and the eval CLI rows."""

import json
from pathlib import Path

import pytest

from medisee.data.ontology import Ontology
from medisee.evaluate.handwritten import (
    HandwrittenQuestion,
    handwritten_items,
    load_questions,
    shipped_questions_path,
)
from medisee.evaluate.naming import answer_sentence, names_structure
from tests.train.conftest import write_synthetic_records


@pytest.fixture(scope="module")
def ontology():
    return Ontology.load()


def test_the_shipped_set_loads_and_knows_its_labels(ontology):
    questions = load_questions()
    assert len(questions) == 64
    assert all(q.label in ontology for q in questions)
    assert shipped_questions_path().is_file()


def test_bad_question_files_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"label": "liver", "question": "Which organ makes bile?"}\nnot json\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: invalid JSON"):
        load_questions(path)
    path.write_text('{"label": "", "question": "x"}\n')
    with pytest.raises(ValueError, match=r":1: needs a non-empty string 'label'"):
        load_questions(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no questions"):
        load_questions(path)


def test_each_question_meets_every_image_of_its_label(tmp_path):
    records = write_synthetic_records(tmp_path)  # 6 images, each with a liver and a kidney
    questions = [
        HandwrittenQuestion("liver", "Which organ makes bile?"),
        HandwrittenQuestion("kidney", "Which organ filters the blood?"),
        HandwrittenQuestion("spleen", "Which organ stores platelets?"),  # on no image
    ]
    items = handwritten_items(records, questions)
    assert len(items) == 6 * 2
    assert {(i.target.label, i.qa.question) for i in items} == {
        ("liver", "Which organ makes bile?"),
        ("kidney", "Which organ filters the blood?"),
    }
    assert items[0].groups()["kind"] == "handwritten"
    assert items[0].qa.answer == "It is the liver."


@pytest.mark.parametrize(
    ("reply", "label", "named"),
    [
        ("It is the liver. It makes bile.", "liver", True),
        ("It is the kidney. The liver lies above it.", "liver", False),  # only the answer
        ("It is the left kidney.", "left kidney", True),
        ("It is the right kidney.", "left kidney", False),
        ("It is the kidney.", "left kidney", False),  # the side is part of the answer
        ("It is the left kidney and the right kidney.", "left kidney", False),
        ("It is the heart muscle.", "myocardium", True),  # a synonym
        ("It is the lungs.", "lung", True),  # plural
        ("It is the mystery organ.", "mystery organ", True),  # not in the ontology
        ("", "liver", False),
    ],
)
def test_names_structure(reply, label, named, ontology):
    assert names_structure(reply, label, ontology) is named


def test_answer_sentence():
    assert answer_sentence("It is the liver. It makes bile.") == "It is the liver."
    assert answer_sentence("  The liver  ") == "The liver"


def test_eval_cli_scores_hand_written_rows(tiny_model, tmp_path):
    from medisee.cli import main
    from medisee.data.writer import write_manifest

    root = tmp_path / "data"
    records = write_synthetic_records(root)
    write_manifest(root / "manifest.jsonl", records)
    tiny_model.save_pretrained(tmp_path / "model")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"label": "liver", "question": "Which organ here makes bile?"}) + "\n"
    )
    args = ["eval", "--model", str(tmp_path / "model"), "--manifest", str(root / "manifest.jsonl")]
    args += ["--out", str(tmp_path / "eval"), "--baselines", "none", "--modes", "generated"]
    assert main([*args, "--questions", str(questions)]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["medisee (generated, hand-written)"]["count"] == 1  # one test image
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summaries"]
    assert metrics["medisee (generated, hand-written)"]["by_question"]["count"] == 1
    assert summary["medisee (generated)"]["count"] == 4
    assert summary["medisee (generated)"]["named_rate"] == 0.0  # untrained: no "liver"
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").open()]
    assert [r["kind"] for r in rows].count("handwritten") == 1
    assert "| named |" in (tmp_path / "eval" / "metrics.md").read_text()


def test_nothing_that_builds_training_data_reads_the_hand_written_set():
    source = Path(__file__).resolve().parents[2] / "src" / "medisee"
    for package in ("data", "train"):
        for path in (source / package).rglob("*.py"):
            assert "handwritten" not in path.read_text(), path
