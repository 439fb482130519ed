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

import math
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
    ``prefix`` is no longer inside the tree or has completed a sequence.

    With ``weights`` (one non-negative mass per sequence), ``log_shares(prefix, children)``
    gives each child's log share of its prefix's mass: summed along a sequence, the log of
    its normalised weight.
    """

    def __init__(
        self, sequences: Iterable[Sequence[int]], weights: Sequence[float] | None = None
    ) -> None:
        self._root: dict[int, dict] = {}
        self._mass: dict[tuple[int, ...], float] | None = None if weights is None else {}
        count = 0
        for sequence in sequences:
            if not sequence:
                raise ValueError("a trie sequence may not be empty")
            node = self._root
            for token in sequence:
                node = node.setdefault(int(token), {})
            if self._mass is not None and weights is not None:
                if count >= len(weights):
                    raise ValueError("a weighted trie needs one weight per sequence")
                mass = float(weights[count])
                if not mass >= 0.0:
                    raise ValueError(f"trie weights must be >= 0, got {mass!r}")
                key = tuple(int(token) for token in sequence)
                for end in range(len(key) + 1):
                    self._mass[key[:end]] = self._mass.get(key[:end], 0.0) + mass
            count += 1
        if not count:
            raise ValueError("a trie needs at least one sequence")
        if weights is not None and len(weights) != count:
            raise ValueError(f"{len(weights)} weights for {count} trie sequences")

    @property
    def weighted(self) -> bool:
        return self._mass is not None

    def log_shares(self, prefix: Sequence[int], children: Sequence[int]) -> list[float]:
        """``log(mass(prefix + child) / mass(prefix))`` per child; all 0 when unweighted
        (a share is floored at 1e-30, so a zero-mass child is unlikely, not impossible)."""
        if self._mass is None:
            return [0.0] * len(children)
        key = tuple(int(token) for token in prefix)
        total = max(self._mass.get(key, 0.0), 1e-300)
        return [
            math.log(max(self._mass.get((*key, int(child)), 0.0) / total, 1e-30))
            for child in children
        ]

    def children(self, prefix: Sequence[int]) -> list[int] | None:
        node = self._root
        for token in prefix:
            nxt = node.get(int(token))
            if nxt is None:
                return None
            node = nxt
        return list(node) or None


def answer_sequences_by_label(
    builder: PromptBuilder, labels: Iterable[str]
) -> dict[str, list[list[int]]]:
    """Per label (whitespace-normalised, sorted), the token ids of each reply opening
    ``answer + candidates`` that names it, as ``PromptBuilder.encode`` writes them after
    the assistant marker (one per distinct answer form)."""
    out: dict[str, list[list[int]]] = {}
    for label in sorted({" ".join(str(label).split()) for label in labels} - {""}):
        forms: dict[tuple[int, ...], None] = {}
        for form in ANSWER_FORMS:
            forms[tuple(builder.reply_ids(builder.answer_text(form.format(label=label))))] = None
        out[label] = [list(ids) for ids in forms]
    if not out:
        raise ValueError("give at least one label to constrain answers to")
    return out


def answer_sequences(builder: PromptBuilder, labels: Iterable[str]) -> list[list[int]]:
    """Every reply opening of :func:`answer_sequences_by_label`, in one list."""
    out: dict[tuple[int, ...], None] = {}
    for sequences in answer_sequences_by_label(builder, labels).values():
        out.update((tuple(ids), None) for ids in sequences)
    return [list(ids) for ids in out]


def weighted_answer_trie(
    openings_by_label: Mapping[str, Sequence[Sequence[int]]],
    label_probabilities: Mapping[str, float],
) -> TokenTrie:
    """The answer openings (``answer_sequences_by_label``) of the labels given, each
    label's mass its probability, split evenly over its openings: the trie's log shares
    along an opening then sum to the log-probability of its label (plus the constant log
    share of its answer form)."""
    normalised = {" ".join(str(k).split()): float(v) for k, v in label_probabilities.items()}
    missing = sorted(set(normalised) - set(openings_by_label))
    if missing:
        raise ValueError(f"no answer openings for labels {missing}")
    sequences: list[list[int]] = []
    weights: list[float] = []
    for label in sorted(normalised):
        openings = openings_by_label[label]
        for ids in openings:
            sequences.append(list(ids))
            weights.append(normalised[label] / len(openings))
    return TokenTrie(sequences, weights)


class AnswerConstraint(LogitsProcessor):
    """A transformers logits processor: while a row's new tokens are a proper prefix of
    an answer opening in ``trie``, every token that leaves the trie gets ``-inf``.

    ``prompt_length``: how many leading ids of the ``input_ids`` the processor sees are
    the prompt (0 when generation runs from ``inputs_embeds``, where transformers passes
    the new tokens only). ``rows``: the batch rows it applies to (default: all).
    ``row_tries``: rows that follow a trie of their own (the answers over the labels of
    the image's exam, ``medisee.model.exam_head``) instead of ``trie``. Where a row's trie
    is weighted (``weighted_answer_trie``: a prior over its labels), each allowed token's
    score also gains ``prior_weight`` times its log share, so greedy decoding spells the
    label that LM and prior together score highest.
    """

    def __init__(
        self,
        trie: TokenTrie,
        prompt_length: int = 0,
        rows: Sequence[int] | None = None,
        row_tries: Mapping[int, TokenTrie] | None = None,
        prior_weight: float = 1.0,
    ) -> None:
        self.trie = trie
        self.prompt_length = prompt_length
        self.rows = None if rows is None else sorted(set(int(r) for r in rows))
        self.row_tries = {int(row): own for row, own in (row_tries or {}).items()}
        self.prior_weight = float(prior_weight)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = range(input_ids.shape[0]) if self.rows is None else self.rows
        generated = input_ids[:, self.prompt_length :]
        for row in rows:
            trie = self.row_tries.get(row, self.trie)
            prefix = generated[row].tolist()
            allowed = trie.children(prefix)
            if allowed is None:
                continue
            keep = scores[row, allowed].clone()
            if trie.weighted and self.prior_weight:
                shares = trie.log_shares(prefix, allowed)
                keep += self.prior_weight * torch.tensor(shares, dtype=keep.dtype).to(keep.device)
            scores[row] = float("-inf")
            scores[row, allowed] = keep
        return scores
