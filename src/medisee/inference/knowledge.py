"""Chat follow-ups answered from the pretrained LM's own knowledge.

A fine-tuned MediSee answers every turn, but it learned its text replies from the
training templates: "What does it do?" gets the ontology's one-line function and "What
lies next to it?" a new target. When the language model is a pretrained instruct LM
under LoRA (``lite-smollm2``), a follow-up that asks for no new mask is better answered
by that LM as it was pretrained: its knowledge is what the adapters are trained away
from. So, for a turn on which the fine-tuned model found no target, :func:`knowledge_reply`
asks the base LM (adapters disabled) the follow-up with its pronouns resolved to the
structure found earlier in the conversation ("What does it do?" -> "What does the left
kidney do?"), in the LM's own chat template, without the image.

The from-scratch ``lite`` LM has no knowledge of its own (and no chat template): there
the fine-tuned reply stands (:func:`supports_knowledge` is false).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

#: The system turn of a knowledge reply: short, factual, no diagnosis.
KNOWLEDGE_SYSTEM = (
    "You are a medical assistant. Answer the question about human anatomy in one or two "
    "short, factual sentences."
)
# "It is the left kidney." / "That is the liver." / "Those are the lungs."
_ANSWER = re.compile(
    r"^\s*(?:it|that|this|those|these)\s+(?:is|are)\s+(?:the\s+)?(?P<subject>[^.!?<]+?)\s*[.!?]",
    re.IGNORECASE,
)
_POSSESSIVE = re.compile(r"\b(?:its|that structure's|this structure's)\b", re.IGNORECASE)
_PRONOUN = re.compile(
    r"\b(?:it|that structure|this structure|that organ|this organ|that one|this one)\b",
    re.IGNORECASE,
)


def subject_of(reply: str) -> str | None:
    """The structure an answer sentence names ("It is the left kidney." -> "left kidney"),
    or ``None`` when the reply does not start with such a sentence."""
    match = _ANSWER.match(reply)
    return match.group("subject").strip() if match else None


def resolve_follow_up(question: str, subject: str) -> str:
    """``question`` with "it", "its", "that structure", ... replaced by ``subject``:
    the base LM sees one self-contained question, not the conversation."""
    question = _POSSESSIVE.sub(f"the {subject}'s", question)
    return _PRONOUN.sub(f"the {subject}", question)


def supports_knowledge(model: Any) -> bool:
    """Whether ``model`` (a ``MediSee``) has a pretrained LM under adapters to ask: its
    tokenizer has a chat template of its own and its language model is a PEFT model."""
    tokenizer = model.tokenizer
    language = getattr(model.language, "model", None)
    return bool(getattr(tokenizer, "chat_template", None)) and callable(
        getattr(language, "disable_adapter", None)
    )


def _complete_sentences(text: str) -> str:
    """``text`` cut after its last sentence end, when it has one (a reply that ran into
    ``max_new_tokens`` ends mid-sentence)."""
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


@torch.no_grad()
def knowledge_reply(
    model: Any,
    question: str,
    subject: str | None,
    *,
    max_new_tokens: int = 64,
    system: str = KNOWLEDGE_SYSTEM,
) -> str:
    """The base LM's answer to ``question`` about ``subject`` (greedy, adapters off).

    Args:
        model: a ``MediSee`` for which :func:`supports_knowledge` holds.
        question: the follow-up as typed.
        subject: what "it" refers to (from :func:`subject_of`), or ``None`` to ask as is.
        max_new_tokens: bound on the reply; a cut last sentence is dropped.
    """
    if not supports_knowledge(model):
        raise ValueError(
            "knowledge replies need a pretrained LM with adapters and a chat template "
            "(for example the lite-smollm2 preset)"
        )
    if not question.strip():
        raise ValueError("the question is empty")
    tokenizer = model.tokenizer
    asked = resolve_follow_up(question.strip(), subject) if subject else question.strip()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": asked}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], device=device)
    language = model.language.model  # a PEFT model: supports_knowledge checked it
    was_training = language.training
    language.eval()
    try:
        with language.disable_adapter():
            output = language.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
    finally:
        language.train(was_training)
    new = output[0, input_ids.shape[1] :].tolist()
    return _complete_sentences(tokenizer.decode(new, skip_special_tokens=True))


def answer_follow_up(
    model: Any, prediction: Any, subject: str | None, *, enabled: bool = True
) -> tuple[Any, str | None]:
    """One conversation turn after the model answered it: ``(prediction, subject)``.

    A turn with a target keeps its prediction and makes what it names the new subject.
    A turn without one, when ``enabled``, with a subject and a model that
    :func:`supports_knowledge`, gets the knowledge reply as its ``text`` and ``raw_text``
    (a new ``Prediction``). ``scores["reply"]`` says which: ``"knowledge"`` or ``"model"``.
    """
    scores = {**prediction.scores, "reply": "model"}
    if prediction.found_target:
        subject = subject_of(prediction.text) or subject
    elif enabled and subject is not None and supports_knowledge(model):
        text = knowledge_reply(model, prediction.question, subject)
        if text:
            scores["reply"] = "knowledge"
            return dataclasses.replace(prediction, text=text, raw_text=text, scores=scores), subject
    return dataclasses.replace(prediction, scores=scores), subject
