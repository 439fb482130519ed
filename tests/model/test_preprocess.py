"""SamTransform: input preparation and the maps between original and SAM input frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medisee.boxes import mask_to_box
from medisee.model.preprocess import SamTransform


def test_prepare_non_square_uint16() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, size=(100, 60), dtype=np.uint16)
    pixels, frame = SamTransform(64).prepare(image)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert frame.original_size == (100, 60)
    assert frame.scale == pytest.approx(0.64)
    assert frame.resized_size == (64, 38)  # 60 * 0.64 = 38.4
    h, w = frame.resized_size
    content = pixels[:, :h, :w]
    assert content.min() == 0 and content.max() == 1
    assert torch.equal(pixels[:, :, w:], torch.zeros(3, 64, 64 - w))  # right padding
    assert torch.equal(pixels[0], pixels[2])  # grayscale repeated


def test_prepare_channels_and_constant_image() -> None:
    transform = SamTransform(32)
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255  # alpha must not count in the normalisation
    pixels, frame = transform.prepare(rgba)
    assert frame.resized_size == (16, 32)
    assert torch.allclose(pixels[0, :16], torch.ones(16, 32)) and pixels[1:].max() == 0
    for image in (np.full((10, 10), 7.0), np.ones((10, 10, 1), dtype=bool)):
        pixels, _ = transform.prepare(image)
        assert torch.isfinite(pixels).all() and pixels.abs().max() == 0
    with pytest.raises(ValueError, match="HxW"):
        transform.prepare(np.zeros((4, 4, 2)))


def test_box_round_trip_non_square() -> None:
    frame = SamTransform(256).frame((300, 170))
    boxes = torch.tensor([[10.0, 20.0, 150.0, 290.0], [0.0, 0.0, 170.0, 300.0]])
    inside = frame.box_to_input(boxes)
    assert torch.allclose(inside[1], torch.tensor([0.0, 0.0, 170 * 256 / 300, 256.0]))
    assert torch.allclose(frame.box_to_original(inside), boxes, atol=1e-4)


@pytest.mark.parametrize("low_res", [64, 16])
def test_mask_logits_go_back_to_the_right_place(low_res: int) -> None:
    # A 120 x 80 image with a known rectangle; logits drawn in the low-res SAM input frame.
    transform = SamTransform(64)
    frame = transform.frame((120, 80))
    rows, cols = (30, 90), (20, 60)
    truth = np.zeros((120, 80), dtype=bool)
    truth[rows[0] : rows[1], cols[0] : cols[1]] = True
    x0, y0, x1, y1 = frame.box_to_input(torch.tensor(mask_to_box(truth), dtype=torch.float32))
    step = transform.image_size / low_res  # input pixels per low-res cell
    centres = (torch.arange(low_res) + 0.5) * step
    inside_y = (centres >= y0) & (centres < y1)
    inside_x = (centres >= x0) & (centres < x1)
    logits = torch.where(inside_y[:, None] & inside_x[None, :], 10.0, -10.0)[None, None]

    back = frame.mask_logits_to_original(logits)
    assert back.shape == (1, 1, 120, 80)
    mask = (back[0, 0] > 0).numpy()
    x0b, y0b, x1b, y1b = mask_to_box(mask)
    tolerance = 120 / low_res  # one low-res cell, in original pixels
    assert abs(x0b - cols[0]) <= tolerance and abs(x1b - cols[1]) <= tolerance
    assert abs(y0b - rows[0]) <= tolerance and abs(y1b - rows[1]) <= tolerance
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > (0.97 if low_res == 64 else 0.85)


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        SamTransform(0)
    with pytest.raises(ValueError):
        SamTransform(64).frame((0, 10))
    with pytest.raises(ValueError, match="square logits"):
        SamTransform(64).frame((10, 10)).mask_logits_to_original(torch.zeros(1, 1, 8, 4))
