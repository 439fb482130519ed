"""Tokenizers: the offline-trained one of the ``lite`` LM, and candidate tokens for all.

Candidate-token ids are always read back with ``convert_tokens_to_ids``, never from the
first id of an encoding (which can be BOS or a split piece).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import cast

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"


def candidate_token_strings(num_candidates: int) -> list[str]:
    """The n candidate tokens of the paper, ``<cand_0>`` ... ``<cand_{n-1}>``."""
    return [f"<cand_{i}>" for i in range(num_candidates)]


def add_candidate_tokens(tokenizer: PreTrainedTokenizerBase, num_candidates: int) -> list[int]:
    """Add the candidate tokens (idempotent) and return their ids, checked to be distinct
    single tokens."""
    tokens = candidate_token_strings(num_candidates)
    # Extend (not replace) the extra special tokens, so <image> stays special and is
    # dropped by decode(skip_special_tokens=True).
    tokenizer.add_special_tokens(
        {"extra_special_tokens": tokens}, replace_extra_special_tokens=False
    )
    # A list of tokens gives a list of ids; the stubs return ``int | list[int]`` for both.
    ids = cast(list[int], tokenizer.convert_tokens_to_ids(tokens))
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"candidate tokens {tokens} map to the unknown token: {ids}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"candidate tokens {tokens} do not have distinct ids: {ids}")
    return list(ids)


def default_corpus() -> list[str]:
    """Text the ``lite`` tokenizer is trained on when no training text is given: the
    packaged ontology (names, functions, locations, appearances) and answer phrasing."""
    texts = [
        "It is the {label}. The answer is located in the upper left, lower right, centre.",
        "Segment the target. Where is it? Which structure is responsible for this function?",
    ]
    assets = resources.files("medisee.assets")
    for name in ("ontology.json", "ontology.yaml"):
        entry = assets.joinpath(name)
        if entry.is_file():
            texts.append(entry.read_text(encoding="utf-8"))
    return texts


def train_lite_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained locally with ``tokenizers`` (any text encodes; no network).

    Special tokens: ``<pad>`` (0), ``<s>``, ``</s>``, ``<image>``. Deterministic for the
    same texts and vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    return tokenizer
