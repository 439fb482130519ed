"""Evaluator and baselines with the tiny model on synthetic records (real files)."""

import json

import numpy as np
import pytest
import torch

from medisee.data.schema import QAItem
from medisee.evaluate.baselines import LabelMatcher, label_box_priors, run_baselines
from medisee.evaluate.evaluator import evaluate, evaluation_items
from tests.train.conftest import write_synthetic_records

BATCH = 4  # padded: prompts differ in length


@pytest.fixture
def records(tmp_path):
    return write_synthetic_records(tmp_path / "data"), tmp_path / "data"


def test_generated_and_teacher_forced_report(tiny_model, records, tmp_path, monkeypatch):
    recs, root = records
    test = [r for r in recs if r.split == "test"]
    report = evaluate(tiny_model, test, root, batch_size=2, progress=False, max_new_tokens=4)
    items = evaluation_items(test)
    assert len(items) == len(report.examples) == 4  # 2 targets x 2 reasoning questions
    generated = report.summaries["generated"]
    teacher = report.summaries["teacher_forced"]
    assert generated["overall"].count == teacher["overall"].count == 4
    # an untrained tiny model emits no candidate group in 4 tokens: empty masks, no boxes
    assert generated["overall"].found_rate == 0.0 and generated["overall"].dice == 0.0
    # teacher forcing always decodes a mask and a box
    assert teacher["overall"].found_rate == 1.0
    assert set(generated["length"]) == {"short", "long"}
    assert set(generated["category"]) == {"liver", "kidney"}
    report.save(tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["summaries"]["generated"]["overall"]["count"] == 4
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "reply" in json.loads(lines[0])
    assert "| generated | overall | 4 |" in (tmp_path / "eval" / "metrics.md").read_text()


def test_generated_scores_use_the_models_own_mask(tiny_model, records, monkeypatch):
    """With generation forced to emit the candidate group, the generated scores equal the
    teacher-forced ones on the same answer text (same sequence, same decoders)."""
    recs, root = records
    test = [r for r in recs if r.split == "test"]
    builder = tiny_model.prompt_builder()
    tok = tiny_model.tokenizer

    def fake_generate(input_ids, attention_mask, vision, **kwargs):
        rows = []
        for _ in range(input_ids.shape[0]):
            reply = builder.format.assistant_prefix + builder.answer_text("It is the liver.")
            rows.append(tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id])
        return torch.tensor(rows)

    monkeypatch.setattr(tiny_model.language, "generate", fake_generate)
    for target in test[0].targets:  # the teacher answer = what the fake model says
        target.qa = [
            QAItem(q.kind, q.perspective, q.length, q.question, "It is the liver.", "")
            for q in target.qa
        ]
    report = evaluate(tiny_model, test, root, batch_size=BATCH, progress=False)
    assert report.summaries["generated"]["overall"].found_rate == 1.0
    # Left (generated) vs right (teacher) padding differ only in float rounding.
    np.testing.assert_allclose(
        [e["box"] for e in report.examples], [e["tf_box"] for e in report.examples], atol=1e-3
    )
    np.testing.assert_allclose(
        [e["dice"] for e in report.examples], [e["tf_dice"] for e in report.examples], atol=1e-3
    )


def test_label_matcher_and_priors(records):
    recs, _ = records
    priors = label_box_priors(recs)
    assert set(priors) == {"liver", "kidney"}
    assert priors["liver"][0] < 0.5 < priors["kidney"][0]  # liver drawn on the left
    from medisee.data.ontology import Ontology

    matcher = LabelMatcher(["liver", "left kidney", "spleen", "not-a-category"], Ontology.load())
    assert matcher.match("Which organ produces bile and stores glycogen?") == "liver"
    assert matcher.match("Which organ filters blood to make urine?") == "left kidney"


def test_baselines_oracle_box_is_its_own_box(tiny_model, records):
    recs, root = records
    test = [r for r in recs if r.split == "test"]
    summaries = run_baselines(
        tiny_model.segmenter, test, root, prior_records=recs, progress=False, batch_size=3
    )
    assert set(summaries) == {"whole_image_box", "label_match", "oracle_box"}
    assert summaries["oracle_box"]["overall"].box_iou == pytest.approx(1.0)
    assert summaries["whole_image_box"]["overall"].box_iou < 0.5
    assert all(s["overall"].count == 4 for s in summaries.values())
    with pytest.raises(ValueError, match="unknown baselines"):
        run_baselines(
            tiny_model.segmenter, test, root, prior_records=recs, which=["magic"], progress=False
        )
