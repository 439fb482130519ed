"""Losses of MediSee (SPEC §2), outside the model.

``L_end = L_txt + L_mask + L_bbox`` with ``L_mask = w_bce·BCE + w_dice·Dice`` and
``L_bbox = w_l1·L1 + w_giou·GIoU``; the fine-tuning stage adds
``L_sim = w_js·JS + w_mse·MSE`` between the similarity map of the reasoning query and the
one of the plain-label query (the target, no gradient). Models with a grounding head
(``lite``) add ``L_ground = w_ground_bce·BCE + w_ground_dice·Dice`` between its map and the
ground-truth mask brought to the map's grid (area-averaged: soft targets keep thin parts).

Every per-sample loss returns a ``[B]`` tensor; the criterion averages over targets.
All of them are finite, with a gradient, on empty masks and degenerate boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medisee.boxes import cxcywh_to_xyxy


@dataclass
class LossWeights:
    """Weights of the terms (paper §5.1; the released code used 2.0 for the box terms)."""

    text: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    l1: float = 1.0
    giou: float = 1.0
    js: float = 2.0
    mse: float = 1.0
    ground_bce: float = 1.0
    ground_dice: float = 1.0
    # Weight of the answer sentence's tokens (up to the candidate tokens: "It is the
    # liver. <cand_0><cand_1>") against the explanation's in L_txt; 1 is the paper's plain
    # mean. The answer names the target, and its few tokens otherwise carry ~1/10 of L_txt.
    answer_tokens: float = 1.0
    # Not a weight: the grounding map's target for a grid cell is the share of it inside
    # the mask, and a cell at least this share inside is a target of 1 instead (0: the
    # share everywhere). A thin target (a rib, 4-8 px across) covers under half of any
    # 8-px cell, and BCE towards a share of 0.3 has its optimum at logit -0.85, below the
    # seeded regions' threshold. Measured and not used: 0.25 in the lite recipe lowered
    # the test split's Dice from 0.725 to 0.686 (docs/training.md, "Real scans").
    ground_cover: float = 0.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LossWeights.{name} must be finite and >= 0, got {value!r}")
        if self.ground_cover > 1:
            raise ValueError(
                f"LossWeights.ground_cover is a share in [0, 1], got {self.ground_cover!r}"
            )


def sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over pixels.

    Args: ``logits``, ``targets`` ``[B, H, W]`` (targets in {0, 1}). Returns ``[B]``.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2·Σpg + s) / (Σp + Σg + s)`` with ``p = sigmoid(logits)``.

    ``smooth`` keeps both-empty at loss 0 and gives a finite gradient on empty targets.
    Args: ``[B, H, W]``. Returns ``[B]``.
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.to(probs.dtype).flatten(1)
    intersection = (probs * targets).sum(1)
    total = probs.sum(1) + targets.sum(1)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def box_l1(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the 4 normalised coordinates. ``[B, 4]`` -> ``[B]``."""
    return (pred_cxcywh - target_cxcywh).abs().mean(-1)


def generalized_box_iou(
    a_xyxy: torch.Tensor, b_xyxy: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Element-wise generalised IoU of ``[..., 4]`` xyxy boxes, in ``[-1, 1]``.

    ``eps`` keeps degenerate (zero-area) boxes finite: two identical points give 0/eps = 0
    for IoU and no enclosing-area penalty, with a defined gradient.
    """
    ix0 = torch.maximum(a_xyxy[..., 0], b_xyxy[..., 0])
    iy0 = torch.maximum(a_xyxy[..., 1], b_xyxy[..., 1])
    ix1 = torch.minimum(a_xyxy[..., 2], b_xyxy[..., 2])
    iy1 = torch.minimum(a_xyxy[..., 3], b_xyxy[..., 3])
    intersection = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_a = (a_xyxy[..., 2] - a_xyxy[..., 0]).clamp(min=0) * (
        a_xyxy[..., 3] - a_xyxy[..., 1]
    ).clamp(min=0)
    area_b = (b_xyxy[..., 2] - b_xyxy[..., 0]).clamp(min=0) * (
        b_xyxy[..., 3] - b_xyxy[..., 1]
    ).clamp(min=0)
    union = area_a + area_b - intersection
    iou = intersection / (union + eps)
    ex0 = torch.minimum(a_xyxy[..., 0], b_xyxy[..., 0])
    ey0 = torch.minimum(a_xyxy[..., 1], b_xyxy[..., 1])
    ex1 = torch.maximum(a_xyxy[..., 2], b_xyxy[..., 2])
    ey1 = torch.maximum(a_xyxy[..., 3], b_xyxy[..., 3])
    enclosing = (ex1 - ex0).clamp(min=0) * (ey1 - ey0).clamp(min=0)
    return iou - (enclosing - union) / (enclosing + eps)


def giou_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of normalised ``cxcywh`` boxes. ``[B, 4]`` -> ``[B]`` in ``[0, 2]``."""
    return 1.0 - generalized_box_iou(cxcywh_to_xyxy(pred_cxcywh), cxcywh_to_xyxy(target_cxcywh))


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between ``softmax`` over the last dim. Returns ``[B]``."""
    log_p = logits_p.log_softmax(-1)
    log_q = logits_q.log_softmax(-1)
    log_m = torch.logsumexp(torch.stack((log_p, log_q)), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def similarity_loss(
    reasoning_map: torch.Tensor, label_map: torch.Tensor, weights: LossWeights
) -> torch.Tensor:
    """``L_sim = w_js·JS + w_mse·MSE`` of ``[B, N]`` similarity logits; the label map is
    the target and gets no gradient. Returns ``[B]``."""
    target = label_map.detach()
    js = js_divergence(reasoning_map, target)
    mse = (reasoning_map - target).pow(2).mean(-1)
    return weights.js * js + weights.mse * mse


def next_token_supervised(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[B, T]`` bool: positions ``t`` whose next label ``labels[t+1]`` is supervised, i.e.
    the logits ``text_loss`` reads (the last column is always False)."""
    supervised = torch.zeros_like(labels, dtype=torch.bool)
    supervised[:, :-1] = labels[:, 1:] != ignore_index
    return supervised


def text_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    answer_end: torch.Tensor | None = None,
    answer_weight: float = 1.0,
) -> torch.Tensor:
    """Autoregressive CE: position t predicts ``labels[t+1]``; ``ignore_index`` marks prompt
    and image positions. ``logits`` ``[B, T, V]``, or ``[N, V]``: only the rows at
    ``next_token_supervised(labels)``, row-major (same loss, without the LM head's work at
    prompt positions); ``labels`` ``[B, T]``. Returns a scalar: the mean over answer
    tokens, weighted when ``answer_end`` ``[B]`` (the position of each row's last candidate
    token) is given: tokens at or before it count ``answer_weight``, later ones (the
    explanation) 1. 0 with a gradient if there are no answer tokens."""
    supervised = next_token_supervised(labels, ignore_index)  # [B, T] logit positions
    if logits.dim() == 2:
        if logits.shape[0] != int(supervised.sum()):
            raise ValueError(
                f"packed logits have {logits.shape[0]} rows but labels supervise "
                f"{int(supervised.sum())} positions"
            )
        packed = logits.float()
    else:
        packed = logits[supervised].float()  # select first: no float copy of prompt rows
    if packed.shape[0] == 0:
        return logits.sum() * 0.0
    targets = labels[:, 1:][supervised[:, :-1]]  # [N], row-major like ``packed``
    if answer_end is None or answer_weight == 1.0:
        return F.cross_entropy(packed, targets)
    per_token = F.cross_entropy(packed, targets, reduction="none")
    label_index = torch.arange(1, labels.shape[1] + 1, device=labels.device)  # of t + 1
    in_answer = label_index[None, :] <= answer_end[:, None]  # [B, T]
    weights = torch.where(in_answer[supervised], answer_weight, 1.0)
    return (per_token * weights).sum() / weights.sum()


@dataclass
class LossBreakdown:
    """Scalar terms of one batch, for logging; ``total`` is what gets backpropagated."""

    total: torch.Tensor
    # None where a step does not compute a term: the mask terms on steps that skip the
    # mask decoder; all but ``ground`` in the grounding refit on cached states.
    text: torch.Tensor | None = None
    bce: torch.Tensor | None = None
    dice: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    giou: torch.Tensor | None = None
    sim: torch.Tensor | None = None
    ground: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items() if v is not None}


def grid_targets(target_masks: torch.Tensor, grid: int, cover: float = 0.0) -> torch.Tensor:
    """``[B, L, L]`` {0, 1} masks -> ``[B, g, g]`` fraction of each cell inside the mask;
    with ``cover`` > 0, 1 in the cells at least that fraction inside."""
    if target_masks.shape[-1] % grid or target_masks.shape[-2] % grid:
        raise ValueError(
            f"mask size {tuple(target_masks.shape[-2:])} is not a multiple of the grid {grid}"
        )
    share = F.adaptive_avg_pool2d(target_masks[:, None].float(), grid)[:, 0]
    if cover > 0:
        share = torch.where(share >= cover, torch.ones_like(share), share)
    return share


def grounding_loss(
    grounding_logits: torch.Tensor, target_masks: torch.Tensor, weights: LossWeights
) -> torch.Tensor:
    """``L_ground`` per sample ``[B]``: grounding map ``[B, g, g]`` vs masks ``[B, L, L]``."""
    targets = grid_targets(target_masks, grounding_logits.shape[-1], weights.ground_cover)
    targets = targets.to(grounding_logits.dtype)
    return weights.ground_bce * sigmoid_bce(
        grounding_logits, targets
    ) + weights.ground_dice * dice_loss(grounding_logits, targets)


def end_to_end_loss(
    *,
    text_logits: torch.Tensor,
    labels: torch.Tensor,
    mask_logits: torch.Tensor | None,
    target_masks: torch.Tensor,
    pred_boxes: torch.Tensor,
    target_boxes: torch.Tensor,
    weights: LossWeights,
    reasoning_map: torch.Tensor | None = None,
    label_map: torch.Tensor | None = None,
    grounding_logits: torch.Tensor | None = None,
    answer_end: torch.Tensor | None = None,
) -> LossBreakdown:
    """``L_end`` (and ``L_ft = L_end + L_sim`` when both similarity maps are given).

    Args:
        text_logits: ``[B, T, V]``, or ``[N, V]`` at ``next_token_supervised(labels)``;
            labels ``[B, T]`` with -100 outside the answer.
        mask_logits: ``[B, H, W]`` predicted logits, or ``None`` on steps that skip the mask
            decoder (the mask terms are then 0); target_masks ``[B, H, W]`` in {0, 1}, same
            frame and size.
        pred_boxes, target_boxes: ``[B, 4]`` normalised ``cxcywh``.
        reasoning_map, label_map: ``[B, N]`` similarity logits (fine-tuning stage).
        grounding_logits: ``[B, g, g]`` grounding map (models with a grounding head).
        answer_end: ``[B]`` position of each row's last candidate token (for
            ``weights.answer_tokens``; see ``text_loss``).
    """
    if (reasoning_map is None) != (label_map is None):
        raise ValueError("similarity loss needs both reasoning_map and label_map, or neither")
    if mask_logits is not None and mask_logits.shape != target_masks.shape:
        raise ValueError(
            f"mask logits {tuple(mask_logits.shape)} and targets {tuple(target_masks.shape)} "
            "must have the same shape"
        )
    txt = text_loss(text_logits, labels, answer_end=answer_end, answer_weight=weights.answer_tokens)
    bce: torch.Tensor | None = None
    dice: torch.Tensor | None = None
    if mask_logits is not None:
        bce = sigmoid_bce(mask_logits, target_masks).mean()
        dice = dice_loss(mask_logits, target_masks).mean()
    l1 = box_l1(pred_boxes, target_boxes).mean()
    giou = giou_loss(pred_boxes, target_boxes).mean()
    total = weights.text * txt + weights.l1 * l1 + weights.giou * giou
    if bce is not None and dice is not None:
        total = total + weights.bce * bce + weights.dice * dice
    sim = None
    if reasoning_map is not None and label_map is not None:
        sim = similarity_loss(reasoning_map, label_map, weights).mean()
        total = total + sim
    ground = None
    if grounding_logits is not None:
        ground = grounding_loss(grounding_logits, target_masks, weights).mean()
        total = total + ground
    return LossBreakdown(
        total=total, text=txt, bce=bce, dice=dice, l1=l1, giou=giou, sim=sim, ground=ground
    )
