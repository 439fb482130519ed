"""Build the parts of a ``MediSee`` from a ``ModelConfig``, and the trainable/frozen policy.

``medisee.model.medisee.build_model`` assembles the parts into the composite; this module
does not import the composite (so ``MediSee.from_pretrained`` can build through it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medisee.model.box_decoder import BoxDecoder
from medisee.model.config import ModelConfig
from medisee.model.fusion import CandidateFusion
from medisee.model.grounding import GroundingHead
from medisee.model.mllm import LanguageBackbone, LiteBackbone, LlavaBackbone
from medisee.model.prompting import CHAT_FORMATS
from medisee.model.tokenizer import (
    IMAGE_TOKEN,
    add_candidate_tokens,
    default_corpus,
    train_lite_tokenizer,
)

if TYPE_CHECKING:  # pragma: no cover
    from medisee.model.medisee import MediSee

logger = logging.getLogger(__name__)


def _seg_projection(hidden_size: int, prompt_dim: int, inner: int | None) -> nn.Module:
    """2-layer MLP h_seg -> SAM prompt token (LISA's text_hidden_fcs shape)."""
    inner = inner or hidden_size
    return nn.Sequential(nn.Linear(hidden_size, inner), nn.ReLU(), nn.Linear(inner, prompt_dim))


def build_tokenizer(config: ModelConfig, corpus: Iterable[str] | None = None):
    """The tokenizer a fresh model starts with: trained offline for ``lite``; the
    checkpoint's own for ``llava`` (local files only)."""
    if config.language.backbone == "lite" and config.language.pretrained_path is not None:
        return pretrained_lm_tokenizer(config.language.pretrained_path)
    if config.language.backbone == "lite":
        texts = list(corpus) if corpus is not None else default_corpus()
        tokenizer = train_lite_tokenizer(texts, config.language.tokenizer_vocab_size)
        # The corpus holds no chat template, so BPE would spell "ASSISTANT:" in ten
        # single-letter tokens: whole markers make the demo's training sequences 113 -> 101
        # tokens on average (docs/training.md, "Design notes").
        tokenizer.add_tokens(list(CHAT_FORMATS[config.language.chat_format].role_markers))
        return tokenizer
    if config.language.pretrained_path is None:
        raise ValueError(
            "a llava model built from an inline hf_config needs its tokenizer passed in"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.language.pretrained_path, local_files_only=True)


def pretrained_lm_tokenizer(name_or_path: str):
    """The tokenizer of a pretrained ``lite`` LM, with ``<image>`` added (special) and a
    pad token (its EOS) when it has none."""
    from transformers import AutoTokenizer

    from medisee.model.pretrained_lm import resolve_pretrained_lm

    tokenizer = AutoTokenizer.from_pretrained(
        str(resolve_pretrained_lm(name_or_path)), local_files_only=True
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_parts(
    config: ModelConfig,
    tokenizer=None,
    corpus: Iterable[str] | None = None,
    load_segmenter_weights: bool = True,
    llm_dtype: torch.dtype | None = None,
    llm_quantization: str | None = None,
) -> dict[str, Any]:
    """Build every part of a ``MediSee`` from ``config``, as the composite's constructor
    arguments (``config`` included); candidate tokens are added to the tokenizer and the
    vocabulary, and LoRA applied if configured.

    ``load_segmenter_weights=False`` skips ``config.mask.weights`` (used when a full
    checkpoint will be loaded on top). ``llm_dtype`` / ``llm_quantization`` (``"8bit"``,
    ``"4bit"``) apply to the LLaVA backbone only; the segmenter and heads stay fp32.
    """
    from medisee.model.mask_decoder import build_segmenter

    if config.language.backbone != "llava" and (
        llm_dtype is not None or llm_quantization is not None
    ):
        raise ValueError("llm_dtype and llm_quantization apply to the llava backbone only")

    if tokenizer is None:
        tokenizer = build_tokenizer(config, corpus)
    candidate_ids = add_candidate_tokens(tokenizer, config.num_candidate_tokens)
    mask_config = (
        config.mask if load_segmenter_weights else dataclasses.replace(config.mask, weights=None)
    )
    segmenter = build_segmenter(mask_config)

    language: LanguageBackbone
    if config.language.backbone == "lite" and config.language.pretrained_path is not None:
        from medisee.model.pretrained_lm import resolve_pretrained_lm

        language = LiteBackbone.from_pretrained_lm(
            config.language,
            resolve_pretrained_lm(config.language.pretrained_path),
            len(tokenizer),
            config.mask.prompt_dim,
            tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        )
    elif config.language.backbone == "lite":
        special = {
            "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        language = LiteBackbone.from_config(
            config.language, len(tokenizer), config.mask.prompt_dim, special
        )
    else:
        language = LlavaBackbone.from_config(config.language, llm_dtype, llm_quantization)
        embeddings = language.base_model.get_input_embeddings()
        if not isinstance(embeddings, nn.Embedding):
            raise TypeError(f"the LLaVA input embeddings are a {type(embeddings)}")
        if len(tokenizer) > embeddings.num_embeddings:
            language.resize_token_embeddings(len(tokenizer))
    if config.language.lora is not None:
        language.apply_lora(config.language.lora, candidate_ids)
    if config.language.gradient_checkpointing:
        language.base_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    hidden = language.hidden_size
    return {
        "config": config,
        "language": language,
        "tokenizer": tokenizer,
        "fusion": CandidateFusion(hidden, config.num_candidate_tokens, config.fusion),
        "box_decoder": BoxDecoder(hidden, config.box),
        "seg_projection": _seg_projection(
            hidden, config.mask.prompt_dim, config.seg_projection_hidden
        ),
        "segmenter": segmenter,
        "grounding": (
            GroundingHead(hidden, config.mask.prompt_dim, config.grounding)
            if config.grounding.enabled
            else None
        ),
    }


@dataclass
class ParameterReport:
    """Trainable/frozen parameter counts per top-level part."""

    trainable: dict[str, int]
    frozen: dict[str, int]

    @property
    def total_trainable(self) -> int:
        return sum(self.trainable.values())

    @property
    def total_frozen(self) -> int:
        return sum(self.frozen.values())

    def format(self) -> str:
        lines = [f"{'part':<28}{'trainable':>14}{'frozen':>14}"]
        for part in sorted(set(self.trainable) | set(self.frozen)):
            lines.append(
                f"{part:<28}{self.trainable.get(part, 0):>14,}{self.frozen.get(part, 0):>14,}"
            )
        lines.append(f"{'total':<28}{self.total_trainable:>14,}{self.total_frozen:>14,}")
        return "\n".join(lines)


def _part_of(name: str) -> str:
    head, _, rest = name.partition(".")
    if head in ("language", "segmenter"):
        return f"{head}.{rest.split('.')[0]}"
    return head


def apply_trainable_policy(model: MediSee) -> ParameterReport:
    """SPEC §1 (paper §4.3): train the LM (LoRA + new token rows for LLaVA; all of the
    small ``lite`` LM and its projector), the routers, seg projection, box decoder and
    the whole mask decoder; freeze the rest of SAM (image encoder, prompt encoder and its
    positional embedding, as LISA/MediSee) and the MLLM's vision tower and projector."""
    config = model.config
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for parameter in model.segmenter.parameters():
        parameter.requires_grad_(False)
    for parameter in model.segmenter.mask_decoder.parameters():
        parameter.requires_grad_(True)
    language = model.language
    if config.language.lora is not None:
        # PEFT already froze everything in the LM but the LoRA and trainable-token
        # parameters; re-assert that over our blanket True above.
        for name, parameter in language.model.named_parameters():
            parameter.requires_grad_("lora_" in name or "trainable_tokens" in name)
    if isinstance(language, LlavaBackbone):
        for parameter in language.base_model.model.vision_tower.parameters():
            parameter.requires_grad_(False)
        for parameter in language.base_model.model.multi_modal_projector.parameters():
            parameter.requires_grad_(False)
    report = parameter_report(model)
    # DEBUG: every `medisee predict` builds a model; a training run logs it at INFO.
    logger.debug("parameters:\n%s", report.format())
    return report


def parameter_report(model: nn.Module) -> ParameterReport:
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        bucket = trainable if parameter.requires_grad else frozen
        part = _part_of(name)
        bucket[part] = bucket.get(part, 0) + parameter.numel()
    return ParameterReport(trainable, frozen)
