"""Constrained answer sentences: a reply that carries a target names a known structure.

A reply is ``"{answer} <cand_0>...<cand_{n-1}> {explanation}"`` (``prompting``). Left
free, a pretrained LM often answers with a paraphrase taken from the question ("the ball
of the hip joint") where the training replies named the label ("the femoral head"); the
candidate states after such a sentence are off the training distribution, and the reply
names nothing a user can check. With the constraint, the tokens up to the last candidate
token must spell one of the answer forms the training replies use
(:data:`ANSWER_FORMS`) around one of the model's labels; the explanation after the
candidates is free. Greedy decoding then picks the label the LM scores highest, as
grammar-constrained decoding does.

Only where a target is wanted: a one-shot question (``Predictor.predict``, ``medisee
eval``). A chat follow-up ("what does it do?") is generated freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers import LogitsProcessor

from medisee.data.qa_template import REASONING_ANSWERS, REFERRING_ANSWER
from medisee.model.prompting import PromptBuilder

#: The answer sentences of the training replies (the template engine's; the referring
#: items built at training time use "It is the {label}." as well).
ANSWER_FORMS = (*REASONING_ANSWERS, REFERRING_ANSWER)


class TokenTrie:
    """Token-id sequences as a prefix tree; ``children(prefix)`` is ``None`` once
    ``prefix`` is no longer inside the tree or has completed a sequence."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        self._root: dict[int, dict] = {}
        count = 0
        for sequence in sequences:
            if not sequence:
                raise ValueError("a trie sequence may not be empty")
            node = self._root
            for token in sequence:
                node = node.setdefault(int(token), {})
            count += 1
        if not count:
            raise ValueError("a trie needs at least one sequence")

    def children(self, prefix: Sequence[int]) -> list[int] | None:
        node = self._root
        for token in prefix:
            nxt = node.get(int(token))
            if nxt is None:
                return None
            node = nxt
        return list(node) or None


def answer_sequences(builder: PromptBuilder, labels: Iterable[str]) -> list[list[int]]:
    """The token ids of every reply opening ``answer + candidates`` over ``labels``, as
    ``PromptBuilder.encode`` writes them after the assistant marker."""
    out: dict[tuple[int, ...], None] = {}
    for label in sorted({" ".join(str(label).split()) for label in labels} - {""}):
        for form in ANSWER_FORMS:
            ids = builder.reply_ids(builder.answer_text(form.format(label=label)))
            out[tuple(ids)] = None
    if not out:
        raise ValueError("give at least one label to constrain answers to")
    return [list(ids) for ids in out]


class AnswerConstraint(LogitsProcessor):
    """A transformers logits processor: while a row's new tokens are a proper prefix of
    an answer opening in ``trie``, every token that leaves the trie gets ``-inf``.

    ``prompt_length``: how many leading ids of the ``input_ids`` the processor sees are
    the prompt (0 when generation runs from ``inputs_embeds``, where transformers passes
    the new tokens only). ``rows``: the batch rows it applies to (default: all).
    ``row_tries``: rows that follow a trie of their own (the answers over the labels of
    the image's exam, ``medisee.model.exam_head``) instead of ``trie``.
    """

    def __init__(
        self,
        trie: TokenTrie,
        prompt_length: int = 0,
        rows: Sequence[int] | None = None,
        row_tries: Mapping[int, TokenTrie] | None = None,
    ) -> None:
        self.trie = trie
        self.prompt_length = prompt_length
        self.rows = None if rows is None else sorted(set(int(r) for r in rows))
        self.row_tries = {int(row): own for row, own in (row_tries or {}).items()}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = range(input_ids.shape[0]) if self.rows is None else self.rows
        generated = input_ids[:, self.prompt_length :]
        for row in rows:
            allowed = self.row_tries.get(row, self.trie).children(generated[row].tolist())
            if allowed is None:
                continue
            keep = scores[row, allowed].clone()
            scores[row] = float("-inf")
            scores[row, allowed] = keep
        return scores
