"""Image preprocessing for the SAM-family segmenter, and the frame mapping back.

LiteMedSAM/MedSAM preprocessing: resize the longest side to ``S`` (aspect kept), min-max
normalise to ``[0, 1]`` (over all channels together), pad bottom/right with zeros to
``S x S``, three channels. Normalising before padding makes the padding equal to the
image's minimum, as in the reference inference code.

Frames (see ``medisee.boxes``): the **original** frame is the caller's image, pixel-edge
coordinates; the **SAM input** frame is the original scaled by ``scale = S / max(H, W)``
with the same origin. The mask logits come at ``L x L`` (``L`` may differ from ``S``:
256 for both LiteMedSAM and MedSAM's 1024 px input) covering the whole padded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageFrame:
    """Geometry of one image through ``SamTransform.prepare``.

    Attributes:
        original_size: ``(H, W)`` of the original image.
        scale: ``input_size / max(H, W)``, original -> SAM input pixels.
        resized_size: ``(h, w)`` of the resized image inside the padded input.
        input_size: ``S``, side of the padded square input.
    """

    original_size: tuple[int, int]
    scale: float
    resized_size: tuple[int, int]
    input_size: int

    def box_to_input(self, boxes_xyxy: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[..., 4]`` xyxy boxes, original frame -> SAM input frame (float32)."""
        return torch.as_tensor(boxes_xyxy, dtype=torch.float32) * self.scale

    def box_to_original(self, boxes_xyxy: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[..., 4]`` xyxy boxes, SAM input frame -> original frame (float32)."""
        return torch.as_tensor(boxes_xyxy, dtype=torch.float32) / self.scale

    def mask_logits_to_original(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L, L]`` low-res logits (SAM input frame) -> ``[B, 1, H, W]`` logits.

        As segment-anything's ``postprocess_masks``: bring the logits to the input size
        ``S`` (a no-op when ``L == S``, as in LiteMedSAM), crop the un-padded ``h x w``
        region, then resize bilinearly to the original ``H x W``. Threshold at 0.
        """
        if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
            raise ValueError(f"expected square logits [B, C, L, L], got {tuple(logits.shape)}")
        size = self.input_size
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
        h, w = self.resized_size
        logits = logits[..., :h, :w]
        return F.interpolate(logits, self.original_size, mode="bilinear", align_corners=False)


class SamTransform:
    """Prepare any 2-D image for the segmenter's ``S x S`` input.

    ``prepare(image) -> (pixel_values [3, S, S] float32 in [0, 1], ImageFrame)``.
    """

    def __init__(self, image_size: int) -> None:
        if image_size <= 0:
            raise ValueError(f"SamTransform.image_size must be > 0, got {image_size}")
        self.image_size = image_size

    def frame(self, original_size: tuple[int, int]) -> ImageFrame:
        """Geometry for an original image of ``(H, W)`` (no pixels needed)."""
        height, width = original_size
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {original_size}")
        scale = self.image_size / max(height, width)
        # Round half up, as the reference's int(x + 0.5), and keep at least one pixel.
        resized = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        return ImageFrame((height, width), scale, resized, self.image_size)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, ImageFrame]:
        """``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` array of any dtype -> input.

        Grayscale is repeated to three channels; an alpha channel is dropped. A constant
        image gives zeros (never NaN).
        """
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(
                f"SamTransform.prepare expects HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}"
            )
        frame = self.frame((array.shape[0], array.shape[1]))
        pixels = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        pixels = pixels.permute(2, 0, 1)[None]  # [1, 3, H, W]
        if frame.resized_size != frame.original_size:
            pixels = F.interpolate(
                pixels, frame.resized_size, mode="bilinear", align_corners=False, antialias=True
            )
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / (high - low).clamp(min=1e-8)
        h, w = frame.resized_size
        pixels = F.pad(pixels, (0, self.image_size - w, 0, self.image_size - h), value=0.0)
        return pixels[0], frame
