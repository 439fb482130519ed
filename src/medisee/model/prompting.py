"""Chat formatting: a conversation about one image -> ``input_ids`` and answer-only labels.

The image placeholder is expanded to the backbone's number of image tokens here, in the
ids, so the LM sequence and ``input_ids`` are the same "expanded sequence": candidate
tokens and image tokens are found by masks over it, never by offsets.

The assistant's answer that carries the target is ``"{answer} <cand_0>...<cand_{n-1}> {explanation}"``:
the model names what it found, emits the candidate tokens (their last-layer states drive
the decoders), then explains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ChatFormat:
    """Text around each turn; ``{image}`` marks where the image goes in the first turn."""

    first_user: str
    user: str
    assistant_prefix: str
    #: the role words, which a tokenizer trained here learns as whole tokens (see
    #: ``medisee.model.builder.build_tokenizer``).
    role_markers: tuple[str, ...] = ()
    #: start each conversation with the tokenizer's BOS token (ChatML has its own markers)
    add_bos: bool = True


CHAT_FORMATS: dict[str, ChatFormat] = {
    # LLaVA-1.5 / vicuna-style, used by the lite LM.
    "vicuna": ChatFormat(
        first_user="USER: {image}\n{q} ASSISTANT:",
        user="USER: {q} ASSISTANT:",
        assistant_prefix=" ",
        role_markers=("USER:", "ASSISTANT:"),
    ),
    # ChatML, as SmolLM2-Instruct was tuned with (without its default system turn: the
    # fine-tuned model needs none, and it would cost ~20 tokens per sequence).
    "chatml": ChatFormat(
        first_user="<|im_start|>user\n{image}\n{q}<|im_end|>\n<|im_start|>assistant\n",
        user="\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
        assistant_prefix="",
        add_bos=False,
    ),
    # LLaVA-Med v1.5 Mistral.
    "mistral": ChatFormat(
        first_user="[INST] {image}\n{q} [/INST]",
        user="[INST] {q} [/INST]",
        assistant_prefix=" ",
        role_markers=("[INST]", "[/INST]"),
    ),
}


@dataclass
class EncodedPrompt:
    """``input_ids`` and ``labels`` (``-100`` outside assistant answers), same length."""

    input_ids: list[int]
    labels: list[int]


class PromptBuilder:
    """Encodes conversations for one backbone.

    Args:
        tokenizer: the backbone's tokenizer (with candidate tokens added).
        image_token_id: id that marks image positions in ``input_ids``.
        num_image_tokens: how many image positions one image takes.
        candidate_tokens: the n candidate token strings.
        chat_format: a key of ``CHAT_FORMATS``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token_id: int,
        num_image_tokens: int,
        candidate_tokens: Sequence[str],
        chat_format: str = "vicuna",
    ) -> None:
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {chat_format!r}; known: {sorted(CHAT_FORMATS)}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an EOS token to end answers")
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.candidate_tokens = list(candidate_tokens)
        self.format = CHAT_FORMATS[chat_format]
        # Ids a question must not contain: they would place image features or a
        # candidate's state where the user typed text.
        candidate_ids = tokenizer.convert_tokens_to_ids(self.candidate_tokens)
        if isinstance(candidate_ids, int):  # the tokenizer's return for a single token
            candidate_ids = [candidate_ids]
        self.reserved_ids = {image_token_id, *(int(i) for i in candidate_ids)}

    def answer_text(self, answer: str, explanation: str | None = None) -> str:
        """The assistant reply for a target: answer, candidate tokens, explanation."""
        text = f"{answer.strip()} {''.join(self.candidate_tokens)}"
        if explanation:
            text += f" {explanation.strip()}"
        return text

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reply_ids(self, reply: str) -> list[int]:
        """The ids of an assistant reply as ``encode`` writes it after the assistant
        marker (without the closing EOS)."""
        return self._ids(self.format.assistant_prefix + reply)

    def encode(self, turns: Sequence[tuple[str, str | None]]) -> EncodedPrompt:
        """Encode ``[(question, answer), ...]``; the last answer may be ``None`` to get a
        generation prompt (ending right after the assistant marker).

        The image is placed in the first user turn.
        """
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        if any(answer is None for _, answer in turns[:-1]):
            raise ValueError("only the last turn may have no answer")
        input_ids: list[int] = []
        labels: list[int] = []
        if self.format.add_bos and self.tokenizer.bos_token_id is not None:
            input_ids.append(self.tokenizer.bos_token_id)
            labels.append(IGNORE_INDEX)
        for index, (question, answer) in enumerate(turns):
            if not question or not question.strip():
                raise ValueError(f"turn {index}: the question is empty")
            template = self.format.first_user if index == 0 else self.format.user
            before, _, after = template.partition("{image}")
            # The ids of the text that holds the question (the image ids placed here are
            # not part of it), checked for reserved tokens the user typed.
            if index == 0:
                typed = self._ids(after.format(q=question.strip()))
                prompt = self._ids(before) + [self.image_token_id] * self.num_image_tokens
                prompt += typed
            else:
                typed = self._ids(template.format(q=question.strip()))
                prompt = typed
            reserved = sorted(set(typed) & self.reserved_ids)
            if reserved:
                names = ", ".join(repr(t) for t in self.tokenizer.convert_ids_to_tokens(reserved))
                raise ValueError(
                    f"turn {index}: the question contains the model's reserved token(s) "
                    f"{names}; remove them (the image is attached separately)"
                )
            input_ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
            if answer is None:
                break
            reply = self.reply_ids(answer) + [self.tokenizer.eos_token_id]
            input_ids += reply
            labels += reply
        return EncodedPrompt(input_ids, labels)


def right_pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> right-padded ``[B, T]`` ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
