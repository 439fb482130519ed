"""The label scorer: each allowed label's name scored as the answer by a pretrained LM."""

from __future__ import annotations

import math

import pytest
import torch

from medisee.model.config import QuestionPriorConfig
from medisee.model.label_knowledge import (
    CHANNEL_SYSTEM,
    OPENING,
    SYSTEM,
    ChannelScorer,
    LabelScorer,
)
from medisee.model.pretrained_lm import resolve_pretrained_lm
from tests.model.gguf_fixture import write_tiny_gguf


@pytest.fixture(scope="module")
def causal_and_tokenizer(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("label_knowledge")
    path = write_tiny_gguf(root / "tiny-llama.gguf").path
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDISEE_CACHE", str(root / "cache"))
        directory = resolve_pretrained_lm(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    causal = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    return causal, tokenizer


def _summed(causal, prompt: list[int], ids: list[int]) -> float:
    """``ids``' summed log-probability after ``prompt``: one whole, unpadded sequence."""
    with torch.no_grad():
        steps = causal(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
    return sum(float(steps[len(prompt) - 1 + j, ids[j]]) for j in range(len(ids)))


def _normalised(raw: list[float], labels: list[str]) -> dict[str, float]:
    total = math.log(sum(math.exp(value) for value in raw))
    return {label: value - total for label, value in zip(labels, raw)}


def _by_hand(causal, tokenizer, question: str, labels: list[str], examples=()) -> dict[str, float]:
    """Each label scored as one whole, unpadded sequence (no cache), then normalised;
    ``examples`` (question, label) come first as answered turns."""
    messages = [{"role": "system", "content": SYSTEM}]
    for example, label in examples:
        messages.append({"role": "user", "content": example})
        messages.append({"role": "assistant", "content": f"{OPENING} {label}."})
    messages.append({"role": "user", "content": question})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text + OPENING, add_special_tokens=False).input_ids
    raw = [
        _summed(causal, prompt, tokenizer(f" {label}.", add_special_tokens=False).input_ids)
        for label in labels
    ]
    return _normalised(raw, labels)


def test_scores_match_whole_sequences_scored_one_by_one(causal_and_tokenizer):
    causal, tokenizer = causal_and_tokenizer
    scorer = LabelScorer(causal, tokenizer)
    questions = [
        "Which organ filters the blood?",
        "the heart is",  # shorter: left-padded in the batch
        "Which organ  here makes bile and stores glycogen for the body?",
    ]
    allowed = [["liver", "left kidney", "heart"], ["brain"], ["liver", "left kidney"]]
    scored = scorer.log_probs(questions, allowed, batch_size=2)  # two batches, one of 1
    assert [list(s) for s in scored] == allowed
    for question, labels, got in zip(questions, allowed, scored):
        expected = _by_hand(causal, tokenizer, " ".join(question.split()), labels)
        for label in labels:
            assert got[label] == pytest.approx(expected[label], abs=1e-4)
        assert sum(math.exp(v) for v in got.values()) == pytest.approx(1.0, abs=1e-5)
    assert scored[1] == {"brain": 0.0}
    # Labels that differ from one another do get different scores.
    assert len({round(v, 6) for v in scored[0].values()}) == 3


def test_worked_examples_come_first_as_answered_turns(causal_and_tokenizer):
    causal, tokenizer = causal_and_tokenizer
    examples = [("Which organ makes bile?", "liver"), ("Which organ  pumps blood?", "heart")]
    scorer = LabelScorer(causal, tokenizer, examples=examples)
    prompt = tokenizer.decode(scorer.prompt_ids("Which organ filters the blood?"))
    # In order, each answered the way a label is scored, before the question.
    assert prompt.index("makes bile") < prompt.index("The answer is the liver.")
    assert prompt.index("The answer is the liver.") < prompt.index("pumps blood")
    assert prompt.index("The answer is the heart.") < prompt.index("filters the blood")
    questions = ["Which organ filters the blood?", "the heart is"]
    allowed = [["liver", "left kidney", "heart"], ["liver", "brain"]]
    cleaned = [(" ".join(q.split()), label) for q, label in examples]
    for question, labels, got in zip(questions, allowed, scorer.log_probs(questions, allowed)):
        expected = _by_hand(causal, tokenizer, question, labels, cleaned)
        for label in labels:
            assert got[label] == pytest.approx(expected[label], abs=1e-4)
    assert scorer.log_probs(questions, allowed) != LabelScorer(causal, tokenizer).log_probs(
        questions, allowed
    )


@pytest.mark.parametrize("scorer_class", [LabelScorer, ChannelScorer])
def test_bad_inputs_are_refused(causal_and_tokenizer, scorer_class):
    causal, tokenizer = causal_and_tokenizer
    scorer = scorer_class(causal, tokenizer)
    with pytest.raises(ValueError, match="label sets for 2 questions"):
        scorer.log_probs(["a", "b"], [["liver"]])
    with pytest.raises(ValueError, match="at least one allowed label"):
        scorer.log_probs(["a"], [[]])
    with pytest.raises(ValueError, match="batch_size"):
        scorer.log_probs(["a"], [["liver"]], batch_size=0)
    assert scorer.log_probs([], []) == []


def test_knowledge_weight_is_validated_and_defaults_off():
    assert QuestionPriorConfig().knowledge_weight == 0.0
    with pytest.raises(ValueError, match="knowledge_weight"):
        QuestionPriorConfig(knowledge_weight=-0.5)
    assert QuestionPriorConfig().unfamiliar_weight == 1.0
    with pytest.raises(ValueError, match="unfamiliar_weight"):
        QuestionPriorConfig(unfamiliar_weight=-0.1)


def test_per_token_scores_are_each_names_mean(causal_and_tokenizer):
    """``per_token``: each name's summed log-probability divided by its token count,
    then normalised over the labels."""
    causal, tokenizer = causal_and_tokenizer
    question, labels = "Which organ filters the blood?", ["liver", "left kidney", "heart"]
    summed = LabelScorer(causal, tokenizer).log_probs([question], [labels])[0]
    mean = LabelScorer(causal, tokenizer, per_token=True).log_probs([question], [labels])[0]
    # The normalised sums differ from the raw ones by one constant: recover the raw by hand.
    by_hand = _by_hand(causal, tokenizer, question, labels)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text + OPENING, add_special_tokens=False).input_ids
    raw = []
    for label in labels:
        ids = tokenizer(f" {label}.", add_special_tokens=False).input_ids
        raw.append(_summed(causal, prompt, ids) / len(ids))
    expected = _normalised(raw, labels)
    for label in labels:
        assert mean[label] == pytest.approx(expected[label], abs=1e-4)
        assert summed[label] == pytest.approx(by_hand[label], abs=1e-4)


def _channel_by_hand(causal, tokenizer, question: str, labels: list[str]) -> dict[str, float]:
    """log p(question | label) of each label, one whole unpadded sequence each, normalised."""
    raw = []
    asked = tokenizer(" ".join(question.split()), add_special_tokens=False).input_ids
    for label in labels:
        messages = [
            {"role": "system", "content": CHANNEL_SYSTEM},
            {"role": "user", "content": f"Ask a question about the {label}."},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        raw.append(_summed(causal, tokenizer(text, add_special_tokens=False).input_ids, asked))
    return _normalised(raw, labels)


def test_channel_scores_are_each_questions_likelihood_given_the_label(causal_and_tokenizer):
    causal, tokenizer = causal_and_tokenizer
    scorer = ChannelScorer(causal, tokenizer)
    questions = ["Which organ filters the blood?", "the  heart is", "Where does bile come from?"]
    allowed = [
        ["liver", "left kidney", "heart"],
        ["brain", "left lateral ventricle"],
        ["heart", "liver"],
    ]
    # Batches of 2 pairs, by label then question length: a batch holds one label's
    # prompt with two questions of different lengths (right-padded), or two labels.
    scored = scorer.log_probs(questions, allowed, batch_size=2)
    assert [list(s) for s in scored] == allowed
    for question, labels, got in zip(questions, allowed, scored):
        expected = _channel_by_hand(causal, tokenizer, question, labels)
        for label in labels:
            assert got[label] == pytest.approx(expected[label], abs=1e-4)
        assert sum(math.exp(v) for v in got.values()) == pytest.approx(1.0, abs=1e-5)
    assert len({round(v, 6) for v in scored[0].values()}) == 3
    assert scorer.log_probs(["a question"], [["liver"]]) == [{"liver": 0.0}]
