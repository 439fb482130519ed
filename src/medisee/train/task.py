"""Model + criterion in one module, so the trainer (and DDP) wraps a single thing."""

from __future__ import annotations

import torch
from torch import nn

from medisee.losses import LossBreakdown, LossWeights, end_to_end_loss
from medisee.model.medisee import MediSee

STAGES = ("end2end", "finetune")


class MediSeeTask(nn.Module):
    """``forward(batch) -> LossBreakdown``.

    ``end2end``: ``L_end``. ``finetune``: ``L_end + L_sim``, where the target map is the
    similarity map of the plain-label query for the same image, computed without gradient.
    """

    def __init__(self, model: MediSee, weights: LossWeights, stage: str = "end2end") -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.model = model
        self.weights = weights
        self.stage = stage

    def forward(self, batch: dict[str, torch.Tensor]) -> LossBreakdown:
        out = self.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image_sizes"],
            pixel_values=batch.get("pixel_values"),
            image_embeddings=batch.get("image_embeddings"),
        )
        reasoning_map = label_map = None
        if self.stage == "finetune":
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
        return end_to_end_loss(
            text_logits=out.logits,
            labels=batch["labels"],
            mask_logits=out.mask_logits,
            target_masks=batch["target_masks"],
            pred_boxes=out.boxes,
            target_boxes=batch["target_boxes"],
            weights=self.weights,
            reasoning_map=reasoning_map,
            label_map=label_map,
        )
