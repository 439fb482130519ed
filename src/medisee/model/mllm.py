"""Multimodal language backbones behind one interface.

* ``LiteBackbone``: a small causal LM (HF ``LlamaForCausalLM`` built from a config) fed by
  ``ImageProjector``, which pools the segmenter's image embedding into image tokens, so
  one frozen image encoder serves both the LM and the mask decoder.
* ``LlavaBackbone``: an adapter over HF ``LlavaForConditionalGeneration`` (the
  ``medisee-7b`` path; LLaVA-Med v1.5 Mistral-7B in HF format), with its own CLIP tower.

Both take ``input_ids`` in which each image already occupies ``num_image_tokens``
positions marked with ``image_token_id`` (see ``PromptBuilder``), and return the logits
and the last-layer hidden states over that same expanded sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from medisee.model.config import LanguageConfig, LoraSettings

# CLIP's normalisation, the LLaVA default when the config carries none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class BackboneOutput:
    logits: torch.Tensor  # [B, T, V], or [N, V] at the N positions of a ``logits_mask``
    hidden_states: torch.Tensor  # [B, T, d] last layer, over the expanded sequence
    past_key_values: Any = None


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """``[grid², dim]`` 2-D sine-cosine table, row-major: half the channels encode the row,
    half the column (as MAE/ViT fixed 2-D embeddings)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values.flatten()[:, None] * frequencies[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    return torch.cat((encode(rows), encode(cols)), dim=1)


class ImageProjector(nn.Module):
    """Segmenter embedding ``[B, C, g, g]`` -> image tokens ``[B, grid², d]``.

    Average-pools the grid to ``grid × grid`` (row-major token order), a 2-layer MLP (the
    LLaVA-1.5 projector shape) maps ``C`` to the LM width, and a learnable 2-D position
    embedding (sin-cos initialised) is added. SAM's image embedding carries no absolute
    position (SAM adds it inside the decoder) and the LM's RoPE only sees the flattened
    1-D order, so without it the candidate tokens cannot say *where* something is.
    """

    def __init__(self, in_channels: int, hidden_size: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.position = nn.Parameter(sincos_2d(grid, hidden_size))

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(image_embeddings, self.grid)
        return self.mlp(pooled.flatten(2).transpose(1, 2)) + self.position


def position_ids_from_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Positions that skip padding (left or right), as HF ``generate`` computes them, so a
    re-run over a generated sequence sees the positions the generation saw."""
    if attention_mask is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _run_language_model(
    base: PreTrainedModel,
    attention_mask,
    past_key_values,
    use_cache: bool,
    logits_mask: torch.Tensor | None = None,
    **inputs,
) -> BackboneOutput:
    """The HF model's trunk (``base.model``) then its LM head: over the whole sequence, or,
    with a ``[B, T]`` boolean ``logits_mask``, only at its positions (row-major ``[N, V]``;
    training needs logits only where the next token is supervised, and the head over a
    4096- to 32000-word vocabulary at every prompt position is a tenth of a lite step)."""
    out = base.model(
        attention_mask=attention_mask,
        position_ids=None
        if past_key_values is not None
        else position_ids_from_mask(attention_mask),
        past_key_values=past_key_values,
        use_cache=use_cache,
        **inputs,
    )
    hidden = out.last_hidden_state
    selected = hidden if logits_mask is None else hidden[logits_mask]
    return BackboneOutput(base.lm_head(selected), hidden, out.past_key_values)


def _check_image_tokens(
    input_ids: torch.Tensor, image_token_id: int, expected: int
) -> torch.Tensor:
    """Boolean ``[B, T]`` mask of image positions; each row must hold exactly ``expected``."""
    mask = input_ids == image_token_id
    counts = mask.sum(1)
    if not bool((counts == expected).all()):
        raise ValueError(
            f"each sequence must contain exactly {expected} image tokens (id {image_token_id}); "
            f"found {counts.tolist()}"
        )
    return mask


QUANTIZATION_MODES = ("8bit", "4bit")
#: LLaVA modules kept in full precision under quantization: the CLIP tower and projector
#: (not the LLM) and the LM head (it holds the candidate-token rows).
QUANTIZATION_SKIP_MODULES = ("vision_tower", "multi_modal_projector", "lm_head")


def llm_quantization_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """``BitsAndBytesConfig`` for the language model of a LLaVA backbone.

    ``"8bit"``: LLM.int8(); ``"4bit"``: NF4 with double quantization, computing in
    ``compute_dtype``. The vision tower, projector and LM head are skipped. Building the
    config needs no GPU; loading with it needs bitsandbytes and a CUDA device.
    """
    from transformers import BitsAndBytesConfig

    skip = list(QUANTIZATION_SKIP_MODULES)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, got {mode!r}")


class LanguageBackbone(nn.Module):
    """Common interface; ``model`` is the HF model, possibly wrapped by PEFT."""

    model: nn.Module
    image_token_id: int
    num_image_tokens: int
    hidden_size: int
    #: what ``vision_inputs`` are: the segmenter's image embedding, or CLIP pixels.
    uses_segmenter_embedding: bool
    #: whether ``generate``'s logits processors see the prompt's ids before the new ones
    #: (transformers passes only the new ones when generating from ``inputs_embeds``).
    generate_sees_prompt: bool = False

    @property
    def base_model(self) -> PreTrainedModel:
        """The HF model with LoRA layers injected (PEFT wrapper removed)."""
        get_base = getattr(self.model, "get_base_model", None)
        model = get_base() if get_base is not None else self.model
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"the language model is not a transformers model: {type(model)}")
        return model

    def resize_token_embeddings(self, vocab_size: int) -> None:
        self.base_model.resize_token_embeddings(vocab_size, mean_resizing=False)

    def apply_lora(self, settings: LoraSettings, new_token_ids: list[int]) -> None:
        """Wrap the language model with LoRA on ``settings.target_modules`` (language model
        only: the regex excludes the vision tower) and make the rows of ``new_token_ids``
        in the input embedding and the LM head trainable."""
        from peft import LoraConfig, get_peft_model

        targets = "|".join(settings.target_modules)
        lora_config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=rf"^(?!.*vision_tower).*({self._lora_scope}).*\.({targets})$",
            # New rows of the input embedding and, when untied, of the LM head.
            trainable_token_indices={
                "embed_tokens": list(new_token_ids),
                "lm_head": list(new_token_ids),
            },
        )
        self.model = get_peft_model(self.model, lora_config)

    _lora_scope = ""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        vision_inputs: torch.Tensor | None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_mask: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """``logits_mask`` ``[B, T]`` bool: LM-head logits only at those positions."""
        raise NotImplementedError

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vision_inputs: torch.Tensor,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Greedy/sampled continuation with the KV cache; returns only the new tokens ``[B, T']``."""
        raise NotImplementedError

    def pixels_from_segmenter_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's own image input from SAM-frame pixels ``[B, 3, S, S]``; only for
        backbones that do not read the segmenter's embedding (``uses_segmenter_embedding``)."""
        raise NotImplementedError


class LiteBackbone(LanguageBackbone):
    """Small Llama-architecture LM over pooled segmenter embeddings (CPU default)."""

    uses_segmenter_embedding = True
    _lora_scope = "layers"

    def __init__(
        self, language_model: PreTrainedModel, projector: ImageProjector, image_token_id: int
    ) -> None:
        super().__init__()
        self.model = language_model
        self.projector = projector
        self.image_token_id = image_token_id
        self.num_image_tokens = projector.grid**2
        self.hidden_size = language_model.config.hidden_size

    @classmethod
    def from_config(
        cls,
        config: LanguageConfig,
        vocab_size: int,
        image_channels: int,
        special_ids: dict[str, int],
    ) -> LiteBackbone:
        from transformers import LlamaConfig, LlamaForCausalLM

        # Keyword arguments that every PreTrainedConfig takes but LlamaConfig's signature
        # does not list.
        extra: dict[str, Any] = {"attn_implementation": config.attn_implementation, **special_ids}
        lm_config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=False,
            **extra,
        )
        projector = ImageProjector(image_channels, config.hidden_size, config.image_grid)
        return cls(LlamaForCausalLM(lm_config), projector, special_ids["image_token_id"])

    @classmethod
    def from_pretrained_lm(
        cls,
        config: LanguageConfig,
        directory: str | os.PathLike[str],
        vocab_size: int,
        image_channels: int,
        image_token_id: int,
    ) -> LiteBackbone:
        """A pretrained causal LM (a local HF directory, ``medisee.model.pretrained_lm``)
        under a fresh projector. Its vocabulary grows to ``vocab_size`` for the image and
        candidate tokens; the new rows start at the mean of the pretrained ones, so the
        LM's distribution over its own words is unchanged at the start."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=torch.float32,
            attn_implementation=config.attn_implementation,
            local_files_only=True,
        )
        embeddings = model.get_input_embeddings()
        if not isinstance(embeddings, nn.Embedding):
            raise TypeError(f"the pretrained LM's input embeddings are a {type(embeddings)}")
        if vocab_size > embeddings.num_embeddings:
            model.resize_token_embeddings(vocab_size, mean_resizing=True)
        projector = ImageProjector(image_channels, model.config.hidden_size, config.image_grid)
        return cls(model, projector, image_token_id)

    def embed(self, input_ids: torch.Tensor, vision_inputs: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with projected image features at the image positions."""
        embeddings = self.base_model.get_input_embeddings()(input_ids)
        has_images = bool((input_ids == self.image_token_id).any())
        if not has_images:
            return embeddings
        if vision_inputs is None:
            raise ValueError("input_ids contain image tokens but no image embedding was given")
        mask = _check_image_tokens(input_ids, self.image_token_id, self.num_image_tokens)
        features = self.projector(vision_inputs).to(embeddings.dtype)
        return embeddings.masked_scatter(mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids,
        attention_mask,
        vision_inputs,
        past_key_values=None,
        use_cache=False,
        logits_mask=None,
    ):
        embeddings = self.embed(input_ids, vision_inputs)
        return _run_language_model(
            self.base_model,
            attention_mask,
            past_key_values,
            use_cache,
            logits_mask,
            inputs_embeds=embeddings,
        )

    def generate(self, input_ids, attention_mask, vision_inputs, **generate_kwargs):
        embeddings = self.embed(input_ids, vision_inputs)
        # With inputs_embeds only, HF generate returns just the new tokens.
        return self.base_model.generate(
            inputs_embeds=embeddings, attention_mask=attention_mask, **generate_kwargs
        )


class LlavaBackbone(LanguageBackbone):
    """Adapter over ``LlavaForConditionalGeneration`` (transformers 5 layout:
    ``model.model.vision_tower``, ``model.model.language_model``, ``model.lm_head``)."""

    uses_segmenter_embedding = False
    generate_sees_prompt = True
    _lora_scope = "language_model"

    def __init__(self, llava: PreTrainedModel) -> None:
        super().__init__()
        config = llava.config
        if config.image_token_id is None:
            raise ValueError("LlavaConfig.image_token_id must be set")
        self.model = llava
        self.image_token_id = int(config.image_token_id)
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        # "default" drops CLS, "full" keeps it.
        self.num_image_tokens = patches + (
            1 if config.vision_feature_select_strategy == "full" else 0
        )
        self.hidden_size = config.text_config.hidden_size
        self.vision_image_size = int(vision.image_size)

    @classmethod
    def from_config(
        cls,
        config: LanguageConfig,
        torch_dtype: torch.dtype | None = None,
        quantization: str | None = None,
    ) -> LlavaBackbone:
        """Load ``config.pretrained_path`` (or build ``config.hf_config``) in ``torch_dtype``
        (default: the checkpoint's own). ``quantization`` (``"8bit"``/``"4bit"``) loads it
        through bitsandbytes, which needs a CUDA GPU and a pretrained directory."""
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        if config.pretrained_path is not None:
            extra: dict[str, Any] = {}
            if quantization is not None:
                extra["quantization_config"] = llm_quantization_config(
                    quantization, torch_dtype or torch.bfloat16
                )
            llava = LlavaForConditionalGeneration.from_pretrained(
                config.pretrained_path,
                dtype=torch_dtype or "auto",
                attn_implementation=config.attn_implementation,
                local_files_only=True,
                **extra,
            )
        else:
            if quantization is not None:
                raise ValueError(
                    "quantized loading needs a pretrained LLaVA directory, not an inline hf_config"
                )
            if config.hf_config is None:
                raise ValueError("LanguageConfig needs pretrained_path or hf_config for LLaVA")
            hf_config = LlavaConfig(**config.hf_config)
            hf_config._attn_implementation = config.attn_implementation
            llava = LlavaForConditionalGeneration(hf_config)
            if torch_dtype is not None:
                # PreTrainedModel.to is wrapped with functools.wraps(nn.Module.to), which
                # the stubs read as an unbound function; this calls the same method.
                cast(nn.Module, llava).to(torch_dtype)
        return cls(llava)

    def pixels_from_segmenter_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM-frame pixels ``[B, 3, S, S]`` in [0, 1] (longest side resized, padded square)
        -> CLIP input ``[B, 3, P, P]``, resized and normalised with CLIP's mean/std."""
        resized = F.interpolate(
            pixel_values,
            size=(self.vision_image_size,) * 2,
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=resized.device, dtype=resized.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=resized.device, dtype=resized.dtype).view(1, 3, 1, 1)
        return (resized - mean) / std

    def forward(
        self,
        input_ids,
        attention_mask,
        vision_inputs,
        past_key_values=None,
        use_cache=False,
        logits_mask=None,
    ):
        base = self.base_model
        has_images = bool((input_ids == self.image_token_id).any())
        if has_images:
            if vision_inputs is None:
                raise ValueError("input_ids contain image tokens but no pixel values were given")
            _check_image_tokens(input_ids, self.image_token_id, self.num_image_tokens)
        pixels = vision_inputs.to(base.model.vision_tower.dtype) if has_images else None
        return _run_language_model(
            base,
            attention_mask,
            past_key_values,
            use_cache,
            logits_mask,
            input_ids=input_ids,
            pixel_values=pixels,
        )

    def generate(self, input_ids, attention_mask, vision_inputs, **generate_kwargs):
        _check_image_tokens(input_ids, self.image_token_id, self.num_image_tokens)
        sequences = self.base_model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=vision_inputs,
            **generate_kwargs,
        )
        return sequences[:, input_ids.shape[1] :]
