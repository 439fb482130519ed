"""Evaluator and baselines with the tiny model on synthetic records (real files)."""

import json
from collections import Counter

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
    # Each row names the image it is about (the real/phantom group is image_kind).
    rows = [json.loads(line) for line in lines]
    assert {r["image"] for r in rows} == {r.image for r in test}
    assert {r["exam"] for r in rows} == {"CT"}
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
    # "It is the liver." on CT images that show the liver (the default: what the records
    # label), then judged against a data whose CT images show only kidneys.
    assert report.summaries["generated"]["overall"].plausible_rate == 1.0
    kidneys_only = {"CT": frozenset({"kidney"})}
    judged = evaluate(
        tiny_model, test[:1], root, batch_size=BATCH, progress=False, shown=kidneys_only
    )
    assert judged.summaries["generated"]["overall"].plausible_rate == 0.0
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


def test_label_matcher_scores_do_not_depend_on_word_order():
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 in one order and 0.6 in another; an exact sum
    # is 0.6 in any order, which ties "a" with "b" (one word of idf 0.6): "b" sorts last.
    matcher = LabelMatcher(["a", "b"])
    matcher.documents = {"a": Counter(["alpha", "beta", "gamma"]), "b": Counter(["delta"])}
    matcher.idf = {"alpha": 0.1, "beta": 0.2, "gamma": 0.3, "delta": 0.6}
    for query in ("alpha beta gamma delta", "gamma beta alpha delta", "delta beta gamma alpha"):
        assert matcher.scores(query) == {"a": 0.6, "b": 0.6}
        assert matcher.match(query) == "b"
    assert matcher.scores("alpha") == {"a": 0.1, "b": 0.0}
    assert matcher.match("alpha") == "a"


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


def test_baselines_decode_each_prompt_once_and_score_like_a_direct_decode(
    tiny_model, records, monkeypatch
):
    """Questions about the same target share one decode; the scores equal decoding each
    question's prompt on its own."""
    from medisee.evaluate.evaluator import ImageSource
    from medisee.evaluate.metrics import score_target

    recs, root = records
    test = [r for r in recs if r.split == "test"]
    segmenter = tiny_model.segmenter.eval()
    calls = []
    decode = segmenter.decode
    monkeypatch.setattr(
        segmenter,
        "decode",
        lambda emb, **kw: calls.append(kw["boxes"].shape[0]) or decode(emb, **kw),
    )
    summary = run_baselines(
        segmenter, test, root, prior_records=recs, which=["oracle_box"], progress=False
    )["oracle_box"]["overall"]
    items = evaluation_items(test)
    assert sum(calls) == len({(i.record.id, i.target_index) for i in items}) < len(items)

    monkeypatch.setattr(segmenter, "decode", decode)
    source = ImageSource(segmenter, root, None, "cpu")
    dice = []
    for item in items:
        record = item.record
        scale = segmenter.config.image_size / max(record.height, record.width)
        box = torch.tensor([item.target.box_xyxy], dtype=torch.float32)
        with torch.no_grad():
            out = decode(source.inputs([record])["image_embeddings"], boxes=box * scale)
        frame = source.transform.frame((record.height, record.width))
        mask = frame.mask_logits_to_original(out.mask_logits[:, :1])[0, 0] > 0
        truth = source.ground_truth(item)
        dice.append(score_target(mask.numpy(), truth, item.target.box_xyxy, item.target.box_xyxy))
    assert summary.dice == pytest.approx(np.mean([s.dice for s in dice]), abs=1e-6)


def test_evaluation_subset_spreads_over_images_and_targets(records):
    recs, _ = records
    everything = evaluation_items(recs)
    per_record = {r.id: sum(1 for i in everything if i.record is r) for r in recs}
    assert min(per_record.values()) >= 2  # else the check below proves nothing
    subset = evaluation_items(recs, max_examples=len(recs))
    assert [i.record.id for i in subset] == [r.id for r in recs]  # one question per image
    # each image's first turn goes to a different target than its second
    pairs = evaluation_items(recs, max_examples=2 * len(recs))
    for record in recs:
        targets = [i.target_index for i in pairs if i.record is record]
        assert len(targets) == 2 and (len(record.targets) == 1 or targets[0] != targets[1])
    # a subset keeps manifest order; the full set is everything
    order = [(recs.index(i.record), i.target_index, i.target.qa.index(i.qa)) for i in pairs]
    assert order == sorted(order)
    assert len(evaluation_items(recs, max_examples=10**6)) == len(everything)


def test_medisee_eval_scores_what_the_predictor_returns(tiny_model, records, tmp_path, monkeypatch):
    """``medisee eval`` (batched, embeddings from the cache) gives the figures of scoring
    ``Predictor.predict`` answers one by one: the product's inference path."""
    from medisee.cli import main
    from medisee.data.masks import load_mask
    from medisee.data.writer import write_manifest
    from medisee.evaluate.metrics import MetricAccumulator, score_target
    from medisee.inference import Predictor
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.model.medisee import MediSee
    from medisee.model.mllm import LiteBackbone

    recs, root = records
    write_manifest(root / "manifest.jsonl", recs)
    # The untrained map's peak region would replace every mask (the map fallback).
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.0)
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer, builder = tiny_model.tokenizer, tiny_model.prompt_builder()

    def fake_generate(self, input_ids, attention_mask, vision, **kwargs):
        # An untrained model emits no candidates: make every reply name a target, so
        # that masks and boxes are decoded and scored.
        reply = builder.format.assistant_prefix + builder.answer_text("It is the liver.")
        row = tokenizer(reply, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return torch.tensor([row] * input_ids.shape[0])

    def fake_decode_masks(self, seg_state, image_embeddings, image_sizes, boxes):
        # An untrained decoder paints nothing: masks from the image itself instead (the
        # embedding's channel mean above its median, at the low-res size), so the scores
        # depend on the image reading, the embedding and the mapping back.
        side = self.config.mask.low_res_mask_size
        mean = torch.nn.functional.interpolate(image_embeddings.mean(1, keepdim=True), side)
        logits = mean[:, 0] - mean.flatten(1).median(1).values[:, None, None]
        return logits * 100, torch.ones(len(logits))

    monkeypatch.setattr(LiteBackbone, "generate", fake_generate)
    monkeypatch.setattr(MediSee, "_decode_masks", fake_decode_masks)
    args = ["eval", "--model", str(tmp_path / "model"), "--manifest", str(root / "manifest.jsonl")]
    args += ["--split", "test", "--out", str(tmp_path / "eval"), "--baselines", "none"]
    args += ["--modes", "generated", "--batch-size", "3", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    reported = json.loads((tmp_path / "eval" / "summary.json").read_text())["medisee (generated)"]

    predictor = Predictor.from_pretrained(tmp_path / "model")
    cache = EmbeddingCache(tmp_path / "cache", encoder_fingerprint(predictor.model.segmenter))
    accumulator = MetricAccumulator()
    test = [r for r in recs if r.split == "test"]
    for item in evaluation_items(test):
        state = predictor.prepare(root / item.record.image)
        state.embedding = cache.load(root / item.record.image)  # what eval read
        predictor.set_image(state)
        answer = predictor.predict(item.qa.question, max_new_tokens=48)
        assert answer.found_target
        truth = load_mask(item.target.mask, root, shape=answer.image_size)
        accumulator.add(score_target(answer.mask, truth, answer.box, item.target.box_xyxy))
    expected = accumulator.summary()["overall"].as_dict()
    assert expected["count"] == reported["count"] == 4 and 0.05 < expected["dice"] < 0.99
    # The batch pads prompts (left, 3 rows): float rounding only.
    for key in ("dice", "giou", "ciou", "box_iou", "acc", "found_rate"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-3), key


def test_reports_group_real_and_phantom_images_by_provenance(tiny_model, records):
    import dataclasses

    recs, root = records
    test = [r for r in recs if r.split == "test"]
    kinds = {"liver": "expert", "kidney": "phantom"}
    test = [
        dataclasses.replace(
            r, targets=[dataclasses.replace(t, provenance=kinds[t.label]) for t in r.targets]
        )
        for r in test
    ]
    report = evaluate(tiny_model, test, root, modes=("teacher_forced",), progress=False)
    summary = report.summaries["teacher_forced"]
    assert {k: v.count for k, v in summary["image"].items()} == {"phantom": 2, "real": 2}
    assert set(summary["provenance"]) == {"expert", "phantom"}
    # Structures are grouped on real images only.
    assert {k: v.count for k, v in summary["real_structure"].items()} == {"liver": 2}
    from medisee.evaluate.evaluator import markdown_table

    table = markdown_table({"m": summary})
    assert "| m | image=phantom | 2 |" in table and "| m | image=real | 2 |" in table
    # Real first.
    assert table.index("| m | image=real |") < table.index("| m | image=phantom |")
    assert "| m | real_structure=liver | 2 |" in table


def test_real_structure_pools_the_two_lungs_and_skips_phantoms():
    from types import SimpleNamespace

    from medisee.evaluate.evaluator import EvalItem

    qa = SimpleNamespace(kind="reasoning", length="short", perspective="function")

    def groups(label: str, provenance: str) -> dict:
        target = SimpleNamespace(label=label, provenance=provenance)
        record = SimpleNamespace(split="test", modality="CT", targets=[target])
        return EvalItem(record, 0, qa).groups()

    assert groups("left lung", "derived")["real_structure"] == "lungs"
    assert groups("right lung", "derived")["category"] == "right lung"
    assert groups("lung tumor", "expert")["real_structure"] == "lung tumor"
    assert groups("left lung", "phantom")["real_structure"] is None


@pytest.mark.parametrize("flag", [[], ["--free-answers"]])
def test_eval_free_answers_flag_reaches_the_evaluation(tmp_path, monkeypatch, flag):
    from medisee.cli import main
    from medisee.evaluate import pipeline

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        (kwargs["out"]).mkdir(parents=True)
        (kwargs["out"] / "metrics.md").write_text("table")
        return {}

    monkeypatch.setattr(pipeline, "evaluate_with_baselines", fake)
    args = ["eval", "--model", "m", "--manifest", "x.jsonl", "--out", str(tmp_path / "e")]
    assert main([*args, *flag]) == 0
    assert seen["constrain_answer"] is (not flag)


def test_eval_takes_a_released_model_by_name(records, tmp_path, monkeypatch):
    """``medisee eval --model medisee-lite`` scores the shipped model, as ``predict`` does."""
    from pathlib import Path

    from medisee.evaluate import pipeline
    from medisee.model.medisee import MediSee
    from medisee.model.released import DEFAULT_MODEL, released_model_dir

    loaded = []

    class Loaded(Exception):
        pass

    def from_pretrained(path, *args, **kwargs):
        loaded.append(Path(path))
        raise Loaded

    monkeypatch.setattr(MediSee, "from_pretrained", from_pretrained)
    common = {"manifest": "unused", "split": "test", "out": tmp_path, "records": records}
    with pytest.raises(Loaded):
        pipeline.evaluate_with_baselines(model_dir=DEFAULT_MODEL, **common)
    assert loaded == [released_model_dir(DEFAULT_MODEL)]
    with pytest.raises(FileNotFoundError, match="released model"):
        pipeline.evaluate_with_baselines(model_dir="no-such-model", **common)


def test_teacher_forcing_through_the_candidate_tokens_equals_the_whole_reply(
    tiny_model, records, monkeypatch
):
    """The teacher-forced pass stops after the candidate tokens: the LM is causal, so the
    masks and boxes are those of the whole reply with its explanation."""
    from medisee.model.prompting import PromptBuilder

    recs, root = records
    test = [r for r in recs if r.split == "test"]
    short = evaluate(tiny_model, test, root, modes=("teacher_forced",), progress=False)
    answer_text = PromptBuilder.answer_text

    def with_explanation(self, answer, explanation=None):
        return answer_text(self, answer, explanation or "It filters the blood; it lies deep.")

    monkeypatch.setattr(PromptBuilder, "answer_text", with_explanation)
    whole = evaluate(tiny_model, test, root, modes=("teacher_forced",), progress=False)
    assert len(short.examples) == len(whole.examples) == 4
    for a, b in zip(short.examples, whole.examples):
        assert a["tf_box"] == pytest.approx(b["tf_box"], abs=1e-4)
        assert a["tf_dice"] == pytest.approx(b["tf_dice"], abs=1e-6)
