"""``h_det`` of each training example under the finished LM, for the grounding refit.

In the refit phase the LM and the routers are fixed, and the grounding head reads one
state per example (``h_det``) with the image embedding. Running the LM for it on every
refit step costs a forward pass per draw: ~0.1 s a step for ``lite``, ~1.4 s for the
135 M-parameter ``lite-smollm2`` on 2 CPU cores (docs/training.md). An example's state
does not change during the refit, so ``RefitStateCache`` computes it the first time the
example is drawn and reuses it on every later draw: the refit costs one LM pass per
distinct example, and each step after that only the grounding head.

The states are computed in eval mode (no LoRA dropout), the states the model gives at
inference. The cache lives in memory only: a run resumed inside the refit recomputes the
states it needs, which are the same ones.
"""

from __future__ import annotations

import time

import torch

from medisee.model.medisee import MediSee
from medisee.train.task import through_last_candidate

# What the LM pass needs of a batch: the token columns and the image input.
_LM_INPUTS = ("input_ids", "attention_mask", "image_embeddings", "pixel_values")


class RefitStateCache:
    """Example index -> ``h_det`` ``[d]`` (float32, CPU), filled on first draw."""

    def __init__(self) -> None:
        self._states: dict[int, torch.Tensor] = {}
        #: LM passes run so far (one per distinct example), and their wall seconds
        self.computed = 0
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self._states)

    def det_states(self, model: MediSee, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, d]`` ``h_det`` of the batch's rows (``batch["index"]``, the dataset's
        example indices), on the batch's device; runs the LM on the rows not seen yet."""
        indices = [int(i) for i in batch["index"]]
        missing: dict[int, int] = {}  # example index -> first row holding it
        for row, index in enumerate(indices):
            if index not in self._states and index not in missing:
                missing[index] = row
        if missing:
            started = time.perf_counter()
            rows = torch.tensor(list(missing.values()), device=batch["input_ids"].device)
            sub = {k: batch[k][rows] for k in _LM_INPUTS if k in batch}
            sub = through_last_candidate(sub, model.candidate_token_ids)
            was_training = model.training
            model.eval()
            try:
                fused = model.candidate_states(
                    sub["input_ids"],
                    sub["attention_mask"],
                    image_embeddings=sub.get("image_embeddings"),
                    pixel_values=sub.get("pixel_values"),
                )
            finally:
                model.train(was_training)
            for index, state in zip(missing, fused.det_state.float().cpu()):
                self._states[index] = state.clone()
            self.computed += len(missing)
            self.seconds += time.perf_counter() - started
        device = batch["input_ids"].device
        return torch.stack([self._states[i] for i in indices]).to(device)
