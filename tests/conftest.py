"""Shared fixtures: the ``tiny`` preset and batches for it."""

from __future__ import annotations

import pytest
import torch

from medisee.losses import LossBreakdown, LossWeights, end_to_end_loss
from medisee.model.medisee import build_model
from medisee.model.presets import tiny
from medisee.model.tokenizer import default_corpus

TINY_CORPUS = (
    default_corpus()
    + ["Which organ filters the blood? It is the liver. The kidney sits below it on the left."] * 4
)


@pytest.fixture(autouse=True)
def _leave_the_test_process_allocator_alone(monkeypatch):
    """Tests call ``medisee.cli.main`` in this process, which would set glibc's thresholds
    for the whole test session (``medisee.allocator``); the allocator tests set the
    variable themselves or run a child process."""
    monkeypatch.setenv("MEDISEE_MALLOC_TUNING", "0")


def spy_language(model, monkeypatch, read) -> list:
    """Patch ``model.language.forward`` to append ``read(input_ids)`` on every call, then
    run as before; returns the list the calls fill."""
    seen: list = []
    forward = model.language.forward

    def spy(input_ids, *args, **kwargs):
        seen.append(read(input_ids))
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model.language, "forward", spy)
    return seen


def make_batch(model, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A teacher-forced batch for ``model``: one QA with the candidate tokens per image,
    right-padded, plus random pixels, image sizes and targets in the right frames."""
    generator = torch.Generator().manual_seed(seed)
    builder = model.prompt_builder()
    questions = ["Which organ filters the blood?", "What lies below the liver on the left?"]
    encoded = [
        builder.encode(
            [(questions[i % 2], builder.answer_text("It is the liver.", "It filters blood."))]
        )
        for i in range(batch_size)
    ]
    length = max(len(e.input_ids) for e in encoded)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((batch_size, length), pad, dtype=torch.long)
    labels = torch.full((batch_size, length), -100, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    for row, item in enumerate(encoded):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    size = model.config.mask.image_size
    low_res = model.config.mask.low_res_mask_size
    masks = torch.zeros(batch_size, low_res, low_res)
    masks[:, low_res // 4 : low_res // 2, low_res // 4 : 3 * low_res // 4] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.rand(batch_size, 3, size, size, generator=generator),
        "image_sizes": torch.tensor([[size, size]] * batch_size),
        "target_masks": masks,
        "target_boxes": torch.tensor([[0.5, 0.375, 0.5, 0.25]] * batch_size),
    }


#: The keys of a ``make_batch`` batch that ``MediSee.forward`` takes.
MODEL_KEYS = ("input_ids", "attention_mask", "image_sizes", "pixel_values")


def batch_loss(batch: dict[str, torch.Tensor], out) -> LossBreakdown:
    """``end_to_end_loss`` of the model's ``out`` on a ``make_batch`` batch (default weights)."""
    return end_to_end_loss(
        text_logits=out.logits,
        labels=batch["labels"],
        mask_logits=out.mask_logits,
        target_masks=batch["target_masks"],
        pred_boxes=out.boxes,
        target_boxes=batch["target_boxes"],
        weights=LossWeights(),
    )


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny(), corpus=TINY_CORPUS)
