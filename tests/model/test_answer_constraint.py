"""Constrained answer sentences (``medisee.model.answer_constraint``)."""

from __future__ import annotations

import pytest
import torch

from medisee.model.answer_constraint import (
    ANSWER_FORMS,
    AnswerConstraint,
    TokenTrie,
    answer_sequences,
)
from medisee.model.config import ModelConfig

LABELS = ("liver", "left kidney", "right kidney")


def test_trie_children_by_hand():
    trie = TokenTrie([[1, 2, 3], [1, 2, 4], [5]])
    assert sorted(trie.children([])) == [1, 5]
    assert trie.children([1]) == [2]
    assert sorted(trie.children([1, 2])) == [3, 4]
    # A completed sequence, or a prefix that left the tree: no constraint.
    assert trie.children([1, 2, 3]) is None
    assert trie.children([5]) is None
    assert trie.children([1, 7]) is None
    assert trie.children([1, 2, 3, 9]) is None
    with pytest.raises(ValueError, match="at least one"):
        TokenTrie([])
    with pytest.raises(ValueError, match="empty"):
        TokenTrie([[1], []])


def test_processor_masks_only_the_flagged_rows_and_leaves_allowed_scores():
    trie = TokenTrie([[1, 2], [1, 3]])
    scores = torch.arange(12, dtype=torch.float).reshape(2, 6)
    # Prompt of 2 ids, then row 0 has generated [1], row 1 [4] (outside the trie).
    ids = torch.tensor([[9, 9, 1], [9, 9, 4]])
    out = AnswerConstraint(trie, prompt_length=2)(ids, scores.clone())
    assert torch.isinf(out[0, [0, 1, 4, 5]]).all() and out[0, 2] == 2 and out[0, 3] == 3
    assert torch.equal(out[1], scores[1])
    # rows=[1]: row 0 is left alone even inside the trie.
    out = AnswerConstraint(trie, prompt_length=2, rows=[1])(ids, scores.clone())
    assert torch.equal(out, scores)
    # At the start every opening's first token is allowed.
    out = AnswerConstraint(trie)(torch.zeros((2, 0), dtype=torch.long), scores.clone())
    assert torch.isinf(out[:, [0, 2, 3, 4, 5]]).all() and torch.equal(out[:, 1], scores[:, 1])


def test_processor_follows_a_row_own_trie():
    shared, own = TokenTrie([[1, 2]]), TokenTrie([[3, 4]])
    scores = torch.zeros(2, 6)
    out = AnswerConstraint(shared, row_tries={1: own})(
        torch.zeros((2, 0), dtype=torch.long), scores
    )
    assert torch.isfinite(out[0]).tolist() == [False, True, False, False, False, False]
    assert torch.isfinite(out[1]).tolist() == [False, False, False, True, False, False]


def test_answer_sequences_are_the_training_reply_ids(tiny_model):
    builder = tiny_model.prompt_builder()
    sequences = answer_sequences(builder, [*LABELS, " liver "])
    assert len(sequences) == len(LABELS) * len(ANSWER_FORMS)  # " liver " is "liver"
    candidates = tiny_model.candidate_token_ids
    encoded = builder.encode(
        [("Which organ filters the blood?", builder.answer_text("It is the liver.", "Why."))]
    )
    reply = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    opening = reply[: reply.index(candidates[-1]) + 1]
    assert opening in sequences
    for ids in sequences:
        assert ids[-len(candidates) :] == candidates
    with pytest.raises(ValueError, match="at least one label"):
        answer_sequences(builder, ["  "])


def _generate(model, questions, **kwargs):
    builder = model.prompt_builder()
    prompts = [builder.encode([(q, None)]).input_ids for q in questions]
    size = model.config.mask.image_size
    torch.manual_seed(0)
    pixels = torch.rand(len(questions), 3, size, size)
    sizes = torch.tensor([[size, size]] * len(questions))
    return model.generate(prompts, sizes, pixel_values=pixels, max_new_tokens=24, **kwargs)


def test_constrained_generation_names_a_label_then_emits_the_candidates(tiny_model):
    tiny_model.eval()
    questions = ["Which organ filters the blood?", "Where?"]
    free = _generate(tiny_model, questions)
    # The untrained tiny LM does not answer in the training form on its own.
    assert not all(answer.found_target for answer in free)
    # Without labels the flag changes nothing.
    same = _generate(tiny_model, questions, constrain_answer=True)
    assert [a.token_ids for a in same] == [a.token_ids for a in free]
    tiny_model.config.labels = LABELS
    openings = {form.format(label=label) for form in ANSWER_FORMS for label in LABELS}
    constrained = _generate(tiny_model, questions, constrain_answer=True)
    first = tiny_model.candidate_token_ids[0]
    for answer in constrained:
        assert answer.found_target and answer.mask_logits is not None
        ids = answer.token_ids
        sentence = tiny_model.tokenizer.decode(ids[: ids.index(first)]).strip()
        assert sentence in openings, answer.text
    # Flags per row: the unflagged row generates as it did free.
    mixed = _generate(tiny_model, questions, constrain_answer=[True, False])
    assert mixed[0].token_ids == constrained[0].token_ids
    assert mixed[1].token_ids == free[1].token_ids
    with pytest.raises(ValueError, match="flags"):
        _generate(tiny_model, questions, constrain_answer=[True])


def test_labels_round_trip_and_are_checked():
    config = ModelConfig(labels=["liver", "left kidney"])
    assert config.labels == ("liver", "left kidney")
    assert ModelConfig.from_dict(config.to_dict()).labels == config.labels
    assert (
        ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "labels"}).labels
        == ()
    )
    with pytest.raises(ValueError, match="labels"):
        ModelConfig(labels=["liver", " "])
