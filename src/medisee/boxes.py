"""Box coordinate conventions, in one place.

medisee uses one convention everywhere:

* **Pixel boxes** are ``(x0, y0, x1, y1)`` in the original image's pixel-edge frame:
  the pixel in column ``c``, row ``r`` covers ``[c, c+1) x [r, r+1)``, so the box of a
  mask is ``(min col, min row, max col + 1, max row + 1)`` and a one-pixel mask has
  width 1. ``x`` runs along columns (image width ``W``), ``y`` along rows (height ``H``).
* **Normalised boxes** (what the box decoder predicts) are ``(cx, cy, w, h)`` divided by
  ``(W, H, W, H)`` of the *original* image, so they are right for non-square images.
* The SAM input frame is the original frame scaled by ``image_size / max(H, W)``
  (longest side resized, padding at the bottom/right), see ``SamTransform``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: data tools that only need mask_to_box start fast
    import torch


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight pixel-edge box ``(x0, y0, x1, y1)`` of a 2-D mask, or ``None`` if it is empty."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_box expects a 2-D mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` corners to centre/size, same units."""
    import torch

    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` centre/size to corners, same units."""
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def jitter_boxes(boxes: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[..., 4]`` normalised cxcywh -> the same boxes with each side moved by up to
    ``fraction`` of the box's width (left, right) or height (top, bottom), uniformly and
    independently (the torch global RNG), then kept inside ``[0, 1]`` and at least
    1e-3 wide and high. MedSAM perturbs its training boxes the same way, so the decoder
    follows boxes that are a little off."""
    import torch

    if fraction <= 0:
        return boxes
    corners = cxcywh_to_xyxy(boxes)
    size = torch.cat((boxes[..., 2:], boxes[..., 2:]), dim=-1)  # w h w h, as x0 y0 x1 y1
    noise = (torch.rand(corners.shape, device=boxes.device, dtype=boxes.dtype) * 2 - 1) * fraction
    moved = (corners + noise * size).clamp(0.0, 1.0)
    x0, x1 = (
        torch.minimum(moved[..., 0], moved[..., 2]),
        torch.maximum(moved[..., 0], moved[..., 2]),
    )
    y0, y1 = (
        torch.minimum(moved[..., 1], moved[..., 3]),
        torch.maximum(moved[..., 1], moved[..., 3]),
    )
    x1 = torch.maximum(x1, (x0 + 1e-3).clamp(max=1.0))
    y1 = torch.maximum(y1, (y0 + 1e-3).clamp(max=1.0))
    x0, y0 = torch.minimum(x0, x1 - 1e-3), torch.minimum(y0, y1 - 1e-3)
    return xyxy_to_cxcywh(torch.stack((x0, y0, x1, y1), dim=-1))


def _size_tensor(image_size: torch.Tensor | tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` per box (``[..., 2]`` or a pair) -> ``[..., 4]`` scale ``(W, H, W, H)``."""
    import torch

    size = torch.as_tensor(image_size, dtype=like.dtype, device=like.device)
    h, w = size[..., 0], size[..., 1]
    return torch.stack((w, h, w, h), dim=-1)


def normalize_box(
    boxes_xyxy: torch.Tensor, image_size: torch.Tensor | tuple[int, int]
) -> torch.Tensor:
    """Pixel ``xyxy`` -> normalised ``cxcywh``; ``image_size`` is ``(H, W)`` (or ``[B, 2]``)."""
    return xyxy_to_cxcywh(boxes_xyxy) / _size_tensor(image_size, boxes_xyxy)


def denormalize_box(
    boxes_cxcywh: torch.Tensor, image_size: torch.Tensor | tuple[int, int]
) -> torch.Tensor:
    """Normalised ``cxcywh`` -> pixel ``xyxy`` in the image of ``image_size = (H, W)``."""
    return cxcywh_to_xyxy(boxes_cxcywh * _size_tensor(image_size, boxes_cxcywh))


def clip_box(boxes_xyxy: torch.Tensor, image_size: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Clamp pixel ``xyxy`` boxes to ``[0, W] x [0, H]``."""
    import torch

    scale = _size_tensor(image_size, boxes_xyxy)
    return torch.minimum(boxes_xyxy.clamp(min=0), scale)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of ``[..., 4]`` xyxy boxes; 0 where the union is empty."""
    import torch

    ix0 = torch.maximum(a[..., 0], b[..., 0])
    iy0 = torch.maximum(a[..., 1], b[..., 1])
    ix1 = torch.minimum(a[..., 2], b[..., 2])
    iy1 = torch.minimum(a[..., 3], b[..., 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
