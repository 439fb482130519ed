"""Box decoder (paper §4.1): an MLP ``d -> 512 -> 512 -> 4`` with a sigmoid."""

from __future__ import annotations

import torch
from torch import nn

from medisee.model.config import BoxDecoderConfig


class BoxDecoder(nn.Module):
    """``h_det [B, d] -> [B, 4]`` normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the
    original image (see ``medisee.boxes``)."""

    def __init__(self, input_size: int, config: BoxDecoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for _ in range(config.num_layers - 1):
            layers += [nn.Linear(width, config.hidden_size), nn.ReLU()]
            width = config.hidden_size
        layers.append(nn.Linear(width, 4))
        self.mlp = nn.Sequential(*layers)

    def forward(self, det_state: torch.Tensor) -> torch.Tensor:
        return self.mlp(det_state).sigmoid()
