"""Adaptive Democratic Candidate Fusion (paper §4.2).

Two light routers read all n candidate-token states and give n weights each; the fused
states ``h_seg = Σ_k R_s(h)_k·h_k`` and ``h_det = Σ_k R_d(h)_k·h_k`` feed the mask and
box decoders. ``soft`` uses softmax weights; ``hard`` picks the argmax candidate (the
forward value is exactly that candidate; the gradient reaches the router through a
straight-through estimator so hard routing stays trainable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medisee.model.config import FusionConfig


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly the one-hot weights; backward: the gradient goes to the softmax."""

    @staticmethod
    def forward(ctx, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return hard.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class Router(nn.Module):
    """2-layer MLP: ``[B, n, d]`` candidate states -> ``[B, n]`` routing logits.

    It reads the n states together (concatenated), so each weight can depend on all
    candidates: the "democratic" competition of the paper.
    """

    def __init__(self, hidden_size: int, num_candidates: int, router_hidden: int) -> None:
        super().__init__()
        self.num_candidates = num_candidates
        self.net = nn.Sequential(
            nn.Linear(hidden_size * num_candidates, router_hidden),
            nn.GELU(),
            nn.Linear(router_hidden, num_candidates),
        )

    def forward(self, candidate_states: torch.Tensor) -> torch.Tensor:
        if candidate_states.shape[1] != self.num_candidates:
            raise ValueError(
                f"router built for {self.num_candidates} candidates got {candidate_states.shape[1]}"
            )
        return self.net(candidate_states.flatten(1))


@dataclass
class FusionOutput:
    seg_state: torch.Tensor  # [B, d] h_seg, input of the seg projection
    det_state: torch.Tensor  # [B, d] h_det, input of the box decoder
    seg_weights: torch.Tensor  # [B, n] weights applied (one-hot for hard)
    det_weights: torch.Tensor  # [B, n]


class CandidateFusion(nn.Module):
    """R_s and R_d over n candidate states. ``forward([B, n, d]) -> FusionOutput``."""

    def __init__(self, hidden_size: int, num_candidates: int, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.seg_router = Router(hidden_size, num_candidates, config.router_hidden)
        self.det_router = Router(hidden_size, num_candidates, config.router_hidden)

    def _weights(self, logits: torch.Tensor) -> torch.Tensor:
        soft = logits.softmax(-1)
        if self.config.mode == "soft":
            return soft
        hard = nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return _StraightThrough.apply(hard, soft)

    def forward(self, candidate_states: torch.Tensor) -> FusionOutput:
        seg_weights = self._weights(self.seg_router(candidate_states))
        det_weights = self._weights(self.det_router(candidate_states))
        seg_state = torch.einsum(
            "bn,bnd->bd", seg_weights.to(candidate_states.dtype), candidate_states
        )
        det_state = torch.einsum(
            "bn,bnd->bd", det_weights.to(candidate_states.dtype), candidate_states
        )
        return FusionOutput(seg_state, det_state, seg_weights, det_weights)
