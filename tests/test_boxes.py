import numpy as np
import pytest
import torch

from medisee import boxes


def test_mask_to_box_uses_pixel_edges():
    mask = np.zeros((5, 8), bool)
    mask[1:3, 2:7] = True
    assert boxes.mask_to_box(mask) == (2, 1, 7, 3)
    single = np.zeros((4, 4), bool)
    single[0, 0] = True
    assert boxes.mask_to_box(single) == (0, 0, 1, 1)
    assert boxes.mask_to_box(np.zeros((3, 3), bool)) is None
    with pytest.raises(ValueError, match="2-D"):
        boxes.mask_to_box(np.zeros((2, 2, 2)))


def test_normalisation_round_trip_on_non_square_image():
    size = (100, 300)  # H, W
    xyxy = torch.tensor([[30.0, 10.0, 150.0, 60.0]])
    normalised = boxes.normalize_box(xyxy, size)
    # cx = 90/300, cy = 35/100, w = 120/300, h = 50/100
    torch.testing.assert_close(normalised, torch.tensor([[0.3, 0.35, 0.4, 0.5]]))
    torch.testing.assert_close(boxes.denormalize_box(normalised, size), xyxy)
    per_box_sizes = torch.tensor([[100, 300]])
    torch.testing.assert_close(boxes.normalize_box(xyxy, per_box_sizes), normalised)


def test_box_iou_and_clip():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(boxes.box_iou(a, b), torch.tensor([1 / 7, 0.0, 0.0]))
    clipped = boxes.clip_box(torch.tensor([[-5.0, 2.0, 40.0, 90.0]]), (50, 30))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 2.0, 30.0, 50.0]]))


def test_jitter_boxes_moves_each_side_within_its_share_and_stays_in_the_image():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.05, 0.95, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]])
    assert boxes.jitter_boxes(cxcywh, 0.0) is cxcywh
    corners = boxes.cxcywh_to_xyxy(cxcywh)
    # Hand-computed bounds: box 0 spans x 0.4-0.6 (w 0.2) and y 0.3-0.7 (h 0.4), so with
    # 0.1 its left edge stays in 0.38-0.42 and its top in 0.26-0.34.
    torch.manual_seed(0)
    draws = torch.stack([boxes.cxcywh_to_xyxy(boxes.jitter_boxes(cxcywh, 0.1)) for _ in range(200)])
    first = draws[:, 0]
    assert (first[:, 0] >= 0.38 - 1e-6).all() and (first[:, 0] <= 0.42 + 1e-6).all()
    assert (first[:, 1] >= 0.26 - 1e-6).all() and (first[:, 1] <= 0.34 + 1e-6).all()
    # Both directions occur, and every box stays inside [0, 1] with a positive size.
    assert (first[:, 0] < 0.399).any() and (first[:, 0] > 0.401).any()
    assert (draws >= 0).all() and (draws <= 1).all()
    assert (draws[..., 2] > draws[..., 0]).all() and (draws[..., 3] > draws[..., 1]).all()
    # The whole image: a side moved outward is clamped to the edge, one moved inward is not.
    assert (draws[:, 2] != corners[2]).any(dim=-1).float().mean() > 0.8
    torch.manual_seed(0)
    again = boxes.cxcywh_to_xyxy(boxes.jitter_boxes(cxcywh, 0.1))
    torch.testing.assert_close(again, draws[0])
