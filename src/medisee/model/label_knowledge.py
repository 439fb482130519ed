"""What a pretrained LM already knows about a question: which of the labels it names.

The question prior's classifier (``medisee.model.question_prior``) is fitted on template
questions only. Over the early layers' pooled features it learns their wording, and a
plain-language question can land near the wrong label's templates with near certainty
("where is the breathing organ on the right side of this patient's chest?" read as the
trachea, p = 0.98, on the demo's model). The whole pretrained LM has read such words in
context: asked the question in its own chat format, it finds "The answer is the right
lung." more likely than "... the trachea.". :class:`LabelScorer` turns that into a
distribution over the labels an answer may name: each label's name is scored as the
continuation of the question, and the scores are normalised over the allowed labels.

Nothing here is trained. The question's prompt is run once and its cache reused for all
of the question's labels, and questions are batched, so a question with 14 labels costs
about one forward pass over its prompt and one over the labels' few tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: The system turn: the LM is asked for a structure's name, the way the labels are written.
SYSTEM = "You are a radiologist. Name the anatomical structure or finding the question asks about."
#: The assistant turn's opening; each label continues it as `` {label}.``.
OPENING = "The answer is the"


def _check_inputs(
    questions: Sequence[str], allowed: Sequence[Sequence[str]], batch_size: int
) -> None:
    if len(questions) != len(allowed):
        raise ValueError(f"{len(allowed)} label sets for {len(questions)} questions")
    if any(not labels for labels in allowed):
        raise ValueError("every question needs at least one allowed label")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _normalised(scores: torch.Tensor, allowed: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """``scores``, one per allowed label in order, as log-probabilities over each set."""
    out: list[dict[str, float]] = []
    position = 0
    for labels in allowed:
        chunk = scores[position : position + len(labels)]
        chunk = chunk - torch.logsumexp(chunk, 0)
        out.append({label: float(value) for label, value in zip(labels, chunk)})
        position += len(labels)
    return out


def continuation_log_probs(
    causal: Any,
    pad: int,
    prompts: Sequence[list[int]],
    owners: Sequence[int],
    continuations: Sequence[list[int]],
) -> torch.Tensor:
    """``[len(continuations)]``: each continuation's summed token log-probability after
    the prompt ``prompts[owner]``. Each prompt is run once, left-padded so that every one
    ends at the last column, where its continuations' first token is predicted (RoPE
    attends by relative position, so the padding shifts nothing); its cache is then
    reused by all of its continuations, right-padded."""
    device = next(causal.parameters()).device
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
        prompt_mask[row, width - len(prompt) :] = 1
    prompt_out = causal(input_ids=input_ids, attention_mask=prompt_mask, use_cache=True)
    first = prompt_out.logits[:, -1].float().log_softmax(-1)  # [prompts, V]
    scores = torch.tensor(
        [float(first[owner, ids[0]]) for owner, ids in zip(owners, continuations)]
    )
    length = max(len(ids) for ids in continuations)
    if length > 1:
        cache = prompt_out.past_key_values
        cache.reorder_cache(torch.tensor(list(owners), device=device))
        follow = torch.full((len(continuations), length - 1), pad, dtype=torch.long, device=device)
        follow_mask = torch.zeros_like(follow)
        for row, ids in enumerate(continuations):
            follow[row, : len(ids) - 1] = torch.tensor(ids[:-1], device=device)
            follow_mask[row, : len(ids) - 1] = 1
        mask = torch.cat((prompt_mask[list(owners)], follow_mask), dim=1)
        logits = causal(
            input_ids=follow, attention_mask=mask, past_key_values=cache, use_cache=False
        ).logits.float()
        steps = logits.log_softmax(-1)  # position j predicts token j + 1 of the continuation
        for row, ids in enumerate(continuations):
            if len(ids) > 1:
                targets = torch.tensor(ids[1:], device=device)
                picked = steps[row, : len(ids) - 1].gather(-1, targets[:, None])
                scores[row] += float(picked.sum())
    return scores


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id or 0)


class LabelScorer:
    """``log_probs(questions, allowed)`` -> per question, ``{label: log p(label | question)}``
    over its allowed labels (normalised over them), read from ``causal``, a frozen
    pretrained causal LM with a chat template (``tokenizer``). With ``per_token`` a name's
    score is its tokens' mean log-probability, then normalised over the labels the same
    way."""

    def __init__(
        self,
        causal: Any,
        tokenizer: Any,
        *,
        system: str = SYSTEM,
        per_token: bool = False,
        examples: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("LabelScorer needs a tokenizer with a chat template")
        self.causal = causal
        self.tokenizer = tokenizer
        self.system = system
        # Worked examples, (question, label): earlier turns of the chat, each answered
        # the way a label is scored, so the LM has seen the form of the answer asked for.
        self.examples = [(" ".join(q.split()), label) for q, label in examples]
        # A name's log-probability is the sum over its tokens, so a one-word label outscores
        # "left lateral ventricle"; per_token scores each name by its mean instead.
        self.per_token = per_token
        self._label_ids: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        """The chat prompt (system, the examples' turns, the question, the assistant's
        opening) as token ids."""
        messages = [{"role": "system", "content": self.system}]
        for example, label in self.examples:
            messages.append({"role": "user", "content": example})
            messages.append({"role": "assistant", "content": f"{OPENING} {label}."})
        messages.append({"role": "user", "content": " ".join(question.split())})
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text + OPENING, add_special_tokens=False).input_ids)

    def label_ids(self, label: str) -> list[int]:
        """`` {label}.`` as token ids (the period ends the name, so "lung" does not take
        the mass of "lung tumor")."""
        if label not in self._label_ids:
            self._label_ids[label] = list(
                self.tokenizer(f" {label}.", add_special_tokens=False).input_ids
            )
        return self._label_ids[label]

    @torch.no_grad()
    def log_probs(
        self,
        questions: Sequence[str],
        allowed: Sequence[Sequence[str]],
        batch_size: int = 16,
    ) -> list[dict[str, float]]:
        _check_inputs(questions, allowed, batch_size)
        out: list[dict[str, float]] = []
        for start in range(0, len(questions), batch_size):
            out.extend(
                self._score_batch(
                    questions[start : start + batch_size], allowed[start : start + batch_size]
                )
            )
        return out

    def _score_batch(
        self, questions: Sequence[str], allowed: Sequence[Sequence[str]]
    ) -> list[dict[str, float]]:
        prompts = [self.prompt_ids(question) for question in questions]
        owners = [row for row, labels in enumerate(allowed) for _ in labels]
        continuations = [self.label_ids(label) for labels in allowed for label in labels]
        scores = continuation_log_probs(
            self.causal, _pad_id(self.tokenizer), prompts, owners, continuations
        )
        if self.per_token:
            scores = scores / torch.tensor([float(len(ids)) for ids in continuations])
        return _normalised(scores, allowed)


#: The channel's system turn: the LM writes a question about a structure it is given.
CHANNEL_SYSTEM = "You are a radiologist. Ask a question about the structure you are given."


class ChannelScorer:
    """The noisy channel: ``log_probs(questions, allowed)`` -> per question,
    ``{label: log p(question | label)}`` normalised over its allowed labels, i.e. the
    posterior under a uniform label prior. The LM is told the label and scored on writing
    the question (its tokens' summed log-probability), so a label's name is read, never
    predicted: a long name ("left lateral ventricle") costs nothing against a short one
    ("the brain"), and each label is weighed by how well it explains every word of the
    question. Costs one pass over each label's prompt per batch of pairs and one over the
    question's tokens per (question, label) pair, from the prompt's cache."""

    def __init__(self, causal: Any, tokenizer: Any, *, system: str = CHANNEL_SYSTEM) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("ChannelScorer needs a tokenizer with a chat template")
        self.causal = causal
        self.tokenizer = tokenizer
        self.system = system
        self._prefix_ids: dict[str, list[int]] = {}

    def prefix_ids(self, label: str) -> list[int]:
        """The chat up to the assistant's turn, the label given in the user's, as token
        ids; the question follows as the assistant's reply."""
        if label not in self._prefix_ids:
            messages = [
                {"role": "system", "content": self.system},
                {"role": "user", "content": f"Ask a question about the {label}."},
            ]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            self._prefix_ids[label] = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return self._prefix_ids[label]

    def question_ids(self, question: str) -> list[int]:
        return list(self.tokenizer(" ".join(question.split()), add_special_tokens=False).input_ids)

    @torch.no_grad()
    def log_probs(
        self,
        questions: Sequence[str],
        allowed: Sequence[Sequence[str]],
        batch_size: int = 32,
    ) -> list[dict[str, float]]:
        _check_inputs(questions, allowed, batch_size)
        pairs = [(row, label) for row, labels in enumerate(allowed) for label in labels]
        asked = [self.question_ids(question) for question in questions]
        # Batches of one or two labels, their questions by length: a batch runs each of
        # its labels' prompts once and pads its questions little (by question, a batch
        # ran a dozen prompts and padded to its longest question).
        order = sorted(range(len(pairs)), key=lambda i: (pairs[i][1], len(asked[pairs[i][0]])))
        scores = torch.empty(len(pairs))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores[chunk] = self._score_pairs([(pairs[i][1], asked[pairs[i][0]]) for i in chunk])
        return _normalised(scores, allowed)

    def _score_pairs(self, pairs: Sequence[tuple[str, list[int]]]) -> torch.Tensor:
        """Summed log-probability of each ``(label, question ids)``'s question after the
        label's prompt; each label's prompt is run once per batch."""
        labels = list(dict.fromkeys(label for label, _ in pairs))
        return continuation_log_probs(
            self.causal,
            _pad_id(self.tokenizer),
            [self.prefix_ids(label) for label in labels],
            [labels.index(label) for label, _ in pairs],
            [ids for _, ids in pairs],
        )
