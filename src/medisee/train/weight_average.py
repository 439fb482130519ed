"""An exponential moving average (EMA) of the trained weights, one per training phase.

The weights a run ends on are those of its last few batches; an average over the last
few hundred steps is the usual cure for that noise (Polyak averaging; ``timm``'s
``ModelEmaV2`` and ``torch.optim.swa_utils.AveragedModel`` do the same). Here the average
is kept beside the parameters themselves (no second model), reset at each phase's start
(the joint steps, then the grounding refit, which starts from the joint phase's average),
and written into the model when the phase ends. It is saved and restored with the run's
checkpoints (``state_dict`` / ``load_state_dict``, as ``Accelerator.register_for_checkpointing``
asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def check_decay(decay: float) -> None:
    """Raise ``ValueError`` unless ``0 < decay < 1``."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"an EMA decay must be in (0, 1), got {decay!r}")


class WeightAverage:
    """EMA of ``parameters``: after each optimizer step ``update()`` moves the average
    ``a`` towards the weights ``w`` as ``a <- d a + (1 - d) w`` with
    ``d = min(decay, (1 + n) / (10 + n))`` at the phase's ``n``-th update, so the first
    updates follow the weights closely instead of dragging the start point along. The
    horizon is about ``1 / (1 - decay)`` steps."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        check_decay(decay)
        self.parameters = list(parameters)
        self.decay = decay
        self.updates = 0
        self.average = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        """The decay the next ``update`` uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after ``optimizer.step()``)."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [p.detach() for p in self.parameters], weight)
        self.updates += 1

    @torch.no_grad()
    def write_to_model(self) -> None:
        """Copy the average into the parameters."""
        torch._foreach_copy_([p.data for p in self.parameters], self.average)

    @torch.no_grad()
    def restart(self) -> None:
        """Start a new phase: the average becomes the current weights, with no updates."""
        torch._foreach_copy_(self.average, [p.detach() for p in self.parameters])
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "average": list(self.average)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state["average"]
        if len(average) != len(self.average) or any(
            saved.shape != mine.shape for saved, mine in zip(average, self.average)
        ):
            raise ValueError(
                "the checkpoint's weight average does not match this model's trainable "
                f"parameters ({len(average)} tensors saved, {len(self.average)} here)"
            )
        for mine, saved in zip(self.average, average):
            mine.copy_(saved)
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
