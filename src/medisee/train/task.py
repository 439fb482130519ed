"""Model + criterion in one module, so the trainer (and DDP) wraps a single thing."""

from __future__ import annotations

import torch
from torch import nn

from medisee.boxes import jitter_boxes
from medisee.checks import check_choice
from medisee.losses import (
    LossBreakdown,
    LossWeights,
    end_to_end_loss,
    grounding_loss,
    next_token_supervised,
)
from medisee.model.medisee import MediSee, candidate_positions

STAGES = ("end2end", "finetune")
# Which box prompts the mask decoder in training: the model's own ("predicted", the paper)
# or the ground truth's ("target": teacher forcing, so that the decoder learns to follow
# boxes while the box predictor is still poor).
MASK_PROMPTS = ("predicted", "target")


class MediSeeTask(nn.Module):
    """``forward(batch) -> LossBreakdown``.

    ``end2end``: ``L_end``. ``finetune``: ``L_end + L_sim``, where the target map is the
    similarity map of the plain-label query for the same image, computed without gradient.
    Models with a grounding head add ``L_ground``; ``L_bbox`` is on the box decoder's own
    output.
    """

    def __init__(
        self,
        model: MediSee,
        weights: LossWeights,
        stage: str = "end2end",
        mask_prompt: str = "predicted",
        box_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("stage", stage, STAGES)
        check_choice("mask_prompt", mask_prompt, MASK_PROMPTS)
        if not 0.0 <= box_jitter < 1.0:
            raise ValueError(f"box_jitter must be in [0, 1), got {box_jitter}")
        self.mask_prompt = mask_prompt
        self.box_jitter = box_jitter
        self.model = model
        self.weights = weights
        self.stage = stage

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        decode_masks: bool = True,
        grounding_only: bool = False,
        det_states: torch.Tensor | None = None,
    ) -> LossBreakdown:
        """``decode_masks=False``: skip the mask decoder and the mask terms (cheap steps).
        ``grounding_only=True`` (the refit phase): the LM runs without autograd and only
        ``L_ground`` is backpropagated; the other terms are still reported. With
        ``det_states`` (``[B, d]``, the batch's ``h_det`` from a ``RefitStateCache``) the
        LM does not run at all and only ``L_ground`` is computed."""
        if det_states is not None and not grounding_only:
            raise ValueError("det_states are the grounding refit's input: pass grounding_only")
        if grounding_only:
            if self.model.grounding is None:
                raise ValueError("grounding_only needs a model with a grounding head")
            if det_states is not None:
                return self._refit_from_states(batch, det_states)
            decode_masks = False
            batch = through_last_candidate(batch, self.model.candidate_token_ids)
        prompt_boxes = None
        if self.mask_prompt == "target":
            prompt_boxes = batch["target_boxes"]
            if self.training and decode_masks and self.box_jitter > 0:
                prompt_boxes = jitter_boxes(prompt_boxes, self.box_jitter)
        out = self.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image_sizes"],
            pixel_values=batch.get("pixel_values"),
            image_embeddings=batch.get("image_embeddings"),
            prompt_boxes=prompt_boxes,
            decode_masks=decode_masks,
            language_grad=not grounding_only,
            logits_mask=next_token_supervised(batch["labels"]),
            # The loss reads the box decoder's boxes, never the answer boxes.
            answer_boxes=False,
        )
        reasoning_map = label_map = None
        if self.stage == "finetune" and not grounding_only:
            if "label_input_ids" not in batch:
                raise ValueError(
                    "the finetune stage needs label queries (dataset with_label_query=True)"
                )
            reasoning_map = self.model.similarity(out.image_states, out.seg_state)
            with torch.no_grad():
                label_map = self.model.similarity_map(
                    batch["label_input_ids"],
                    batch["label_attention_mask"],
                    pixel_values=batch.get("pixel_values"),
                    image_embeddings=batch.get("image_embeddings"),
                )
        losses = end_to_end_loss(
            text_logits=out.logits,
            labels=batch["labels"],
            mask_logits=out.mask_logits,
            target_masks=batch["target_masks"],
            pred_boxes=out.decoder_boxes,
            target_boxes=batch["target_boxes"],
            weights=self.weights,
            reasoning_map=reasoning_map,
            label_map=label_map,
            grounding_logits=out.grounding_logits,
            answer_end=out.candidate_positions[:, -1],
        )
        if grounding_only:
            if losses.ground is None:
                raise RuntimeError("grounding_only: the model returned no grounding logits")
            losses.total = losses.ground
        return losses

    def _refit_from_states(
        self, batch: dict[str, torch.Tensor], det_states: torch.Tensor
    ) -> LossBreakdown:
        embeddings = self.model.image_embeddings(
            batch.get("pixel_values"), batch.get("image_embeddings")
        )
        logits = self.model.grounding_map(det_states.to(embeddings.dtype), embeddings)
        ground = grounding_loss(logits, batch["target_masks"], self.weights).mean()
        return LossBreakdown(total=ground, ground=ground)


def through_last_candidate(
    batch: dict[str, torch.Tensor], candidate_ids: list[int]
) -> dict[str, torch.Tensor]:
    """The batch's token columns up to the last candidate token of any row.

    The LM is causal, so ``h_seg``/``h_det`` do not depend on what follows them; the
    refit phase reads only those states and can skip the explanation (~40 % of the
    tokens of a reasoning example here). The text loss it reports then covers the
    answer sentence only."""
    positions = candidate_positions(batch["input_ids"], candidate_ids)
    keep = int(positions.max()) + 1
    columns = ("input_ids", "attention_mask", "labels")
    return {k: v[:, :keep] if k in columns else v for k, v in batch.items()}
