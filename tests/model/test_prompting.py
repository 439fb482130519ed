import pytest
import torch

from medisee.model.medisee import candidate_positions
from medisee.model.prompting import IGNORE_INDEX, PromptBuilder
from medisee.model.tokenizer import (
    IMAGE_TOKEN,
    add_candidate_tokens,
    candidate_token_strings,
    default_corpus,
    train_lite_tokenizer,
)
from tests.conftest import TINY_CORPUS


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_lite_tokenizer(default_corpus() + ["the liver filters blood"] * 3, vocab_size=400)
    add_candidate_tokens(tok, 2)
    return tok


def test_tokenizer_is_deterministic_and_round_trips(tokenizer, tmp_path):
    again = train_lite_tokenizer(default_corpus() + ["the liver filters blood"] * 3, vocab_size=400)
    add_candidate_tokens(again, 2)
    text = "Which organ filters blood? It is the kidney <cand_0><cand_1>."
    assert tokenizer(text).input_ids == again(text).input_ids
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.convert_tokens_to_ids(
        candidate_token_strings(2)
    ) == tokenizer.convert_tokens_to_ids(candidate_token_strings(2))


def test_candidate_and_image_tokens_are_single_distinct_ids(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(candidate_token_strings(2) + [IMAGE_TOKEN])
    assert len(set(ids)) == 3
    encoded = tokenizer("x <cand_0><cand_1>", add_special_tokens=False).input_ids
    assert encoded[-2:] == ids[:2]
    # adding again is idempotent
    assert add_candidate_tokens(tokenizer, 2) == ids[:2]
    # all of them stay special: decoding drops them
    assert (
        tokenizer.decode(
            ids + tokenizer("ok", add_special_tokens=False).input_ids, skip_special_tokens=True
        )
        == "ok"
    )


def _builder(tokenizer, num_image_tokens=4):
    return PromptBuilder(
        tokenizer,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        num_image_tokens=num_image_tokens,
        candidate_tokens=candidate_token_strings(2),
    )


def test_prompt_labels_cover_answers_only(tokenizer):
    builder = _builder(tokenizer)
    answer = builder.answer_text("It is the liver.", "It filters blood.")
    encoded = builder.encode([("Which organ filters blood?", answer)])
    assert len(encoded.input_ids) == len(encoded.labels)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert encoded.input_ids.count(image_id) == 4
    supervised = [t for t, lab in zip(encoded.input_ids, encoded.labels) if lab != IGNORE_INDEX]
    assert (
        tokenizer.decode(supervised, skip_special_tokens=False)
        .strip()
        .startswith("It is the liver.")
    )
    assert supervised[-1] == tokenizer.eos_token_id
    assert all(
        lab == IGNORE_INDEX for t, lab in zip(encoded.input_ids, encoded.labels) if t == image_id
    )


def test_generation_prompt_and_multi_turn(tokenizer):
    builder = _builder(tokenizer)
    prompt = builder.encode([("Where is it?", None)])
    assert all(label == IGNORE_INDEX for label in prompt.labels)
    turns = [
        ("Which organ filters blood?", builder.answer_text("The liver.")),
        ("And its size?", "Large."),
    ]
    two = builder.encode(turns)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert two.input_ids.count(image_id) == 4  # the image only in the first turn
    with pytest.raises(ValueError, match="only the last turn"):
        builder.encode([("a?", None), ("b?", "c")])
    with pytest.raises(ValueError, match="empty"):
        builder.encode([("  ", None)])


def test_candidate_positions_found_by_mask_and_checked():
    ids = [7, 8]
    seq = torch.tensor([[1, 2, 7, 8, 3], [7, 8, 5, 7, 8]])
    # the last complete group is taken in a multi-turn row
    assert candidate_positions(seq, ids).tolist() == [[2, 3], [3, 4]]
    with pytest.raises(ValueError, match=r"found counts \[1, 0\]"):
        candidate_positions(torch.tensor([[1, 7, 3, 4]]), ids)
    with pytest.raises(ValueError, match=r"found counts \[0, 0\]"):
        candidate_positions(torch.tensor([[1, 2, 3]]), ids)
    with pytest.raises(ValueError, match="out of order"):
        candidate_positions(torch.tensor([[8, 7, 1]]), ids)


def test_lite_tokenizer_keeps_role_markers_whole():
    from medisee.model.builder import build_tokenizer
    from medisee.model.presets import tiny

    tokenizer = build_tokenizer(tiny(), corpus=TINY_CORPUS)
    text = "USER: Which organ filters blood? ASSISTANT: The kidney."
    pieces = [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]
    assert "USER:" in pieces and "ASSISTANT:" in pieces
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize("typed", [IMAGE_TOKEN, "<cand_1>"])
def test_a_question_with_a_reserved_token_is_refused_by_name(tokenizer, typed):
    builder = _builder(tokenizer)
    with pytest.raises(ValueError, match=rf"turn 1: .*reserved token.*'{typed}'"):
        builder.encode(
            [("Which organ filters blood?", "It is the kidney."), (f"And {typed} here?", None)]
        )
    # The same words without the token are fine.
    builder.encode([("And here?", None)])
