"""Writing predictions: mask PNG / RLE, box JSON, overlay PNG, explanation text.

Everything here is in the **original frame** of the image (``medisee.boxes``): masks are
``H x W``, boxes pixel-edge ``(x0, y0, x1, y1)`` with ``x`` along columns.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Tint of the mask and colour of the box in overlays (RGB).
MASK_COLOR = (255, 64, 64)
BOX_COLOR = (64, 255, 64)
#: Overlays narrower than this are upscaled (nearest) so their caption stays readable.
MIN_OVERLAY_WIDTH = 384


def complete_sentences(text: str) -> str:
    """``text`` cut after its last sentence end, when it has one: a reply that ran into
    ``max_new_tokens`` ends mid-sentence ("... It is found inside the skull,")."""
    text = text.strip()
    ends = [match.end() for match in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    """``H x W`` bool -> 8-bit grey PNG bytes (0 background, 255 target)."""
    from PIL import Image

    if mask.ndim != 2:
        raise ValueError(f"a mask must be H x W, got {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def image_to_png_bytes(pixels: np.ndarray) -> bytes:
    """``H x W x 3`` uint8 -> RGB PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``H x W`` bool -> uncompressed COCO RLE ``{"size": [H, W], "counts": [...]}``.

    Counts are run lengths over the mask in column-major (Fortran) order, starting with
    a run of zeros (possibly of length 0), as pycocotools' uncompressed form: it decodes
    with ``pycocotools.mask.frPyObjects`` and ``medisee.data.masks.decode_rle``. Written
    with numpy only, so the server needs no pycocotools.
    """
    if mask.ndim != 2:
        raise ValueError(f"a mask must be H x W, got {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of ``encode_rle`` (uncompressed counts only)."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {height * width}")
    values = np.arange(counts.size) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def box_payload(
    box: Sequence[float] | None,
    image_size: tuple[int, int],
    box_normalized: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The box JSON: pixel-edge ``xyxy`` in the original frame (``None`` if no target)."""
    height, width = image_size
    return {
        "box_xyxy": None if box is None else [round(float(v), 3) for v in box],
        "box_cxcywh_normalized": None
        if box_normalized is None
        else [round(float(v), 6) for v in box_normalized],
        "image_size": {"height": int(height), "width": int(width)},
        "frame": "original image, pixel edges: x along columns, y along rows, origin top-left",
    }


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    box: Sequence[float] | None,
    question: str = "",
    text: str = "",
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """Image + mask tint + box + a caption panel (question and explanation) below it.

    Args:
        image: ``H x W x 3`` uint8, original frame.
        mask: ``H x W`` bool or ``None``.
        box: pixel-edge ``(x0, y0, x1, y1)`` in the original frame, or ``None``.

    Returns:
        ``H' x W' x 3`` uint8: the image upscaled by an integer factor when it is narrower
        than ``MIN_OVERLAY_WIDTH`` (nearest neighbour, so pixels stay pixels), with the
        caption under it (the caption never hides anatomy).
    """
    from PIL import Image, ImageDraw

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay image must be H x W x 3, got {image.shape}")
    height, width = image.shape[:2]
    canvas = image.astype(np.float32)
    if mask is not None:
        if mask.shape != (height, width):
            raise ValueError(f"mask {mask.shape} does not match image {(height, width)}")
        tint = np.asarray(MASK_COLOR, dtype=np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * tint
    factor = max(1, -(-MIN_OVERLAY_WIDTH // width))
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    if factor > 1:
        picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    out_width = picture.width
    font_size = max(12, min(28, out_width // 40))
    font = _font(font_size)
    chars_per_line = max(20, int(out_width / (font_size * 0.55)))
    lines: list[str] = []
    if question:
        lines += textwrap.wrap(f"Q: {question}", chars_per_line) or [""]
    if text:
        lines += textwrap.wrap(f"A: {text}", chars_per_line)
    if box is None:
        lines.append("(no target found)")
    line_height = int(font_size * 1.3)
    panel = line_height * len(lines) + (line_height // 2 if lines else 0)
    result = Image.new("RGB", (out_width, picture.height + panel), (20, 20, 20))
    result.paste(picture, (0, 0))
    draw = ImageDraw.Draw(result)
    if box is not None:
        x0, y0, x1, y1 = (float(v) * factor for v in box)
        # ImageDraw's rectangle covers both end pixels: pixel edges x1/y1 map to x1-1/y1-1.
        thickness = max(1, out_width // 200)
        draw.rectangle(
            (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=BOX_COLOR, width=thickness
        )
    y = picture.height + line_height // 4
    for line in lines:
        draw.text((line_height // 4, y), line, fill=(235, 235, 235), font=font)
        y += line_height
    return np.asarray(result)
