"""Binary masks: COCO RLE (pycocotools) and PNG files.

A mask is an ``H x W`` ``bool`` array in the image's pixel grid (row ``r``, column ``c``);
see :mod:`medisee.data.schema` for the coordinate convention.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class MaskError(ValueError):
    """A mask file or RLE that cannot be read, or that does not fit its image."""


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``H x W`` bool/0-1 mask -> JSON-ready compressed COCO RLE ``{"size", "counts"}``."""
    from pycocotools import mask as mask_utils

    if mask.ndim != 2:
        raise MaskError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> ``H x W`` bool mask."""
    from pycocotools import mask as mask_utils

    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, list):
            # Uncompressed RLE, as COCO's "iscrowd" annotations store it.
            compressed = mask_utils.frPyObjects(
                {"size": [height, width], "counts": counts}, height, width
            )
        else:
            compressed = {
                "size": [height, width],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        decoded = mask_utils.decode(compressed)
    except (KeyError, TypeError, ValueError) as error:
        raise MaskError(f"invalid RLE: {error}") from error
    if decoded.shape != (height, width):
        raise MaskError(f"RLE decodes to {decoded.shape}, declared size {(height, width)}")
    return decoded.astype(bool)


def read_mask_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask image (any PIL mode); non-zero pixels are inside. Returns ``H x W`` bool."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MaskError(f"cannot read mask {path}: {error}") from error
    if array.ndim == 3:
        # RGB(A) masks: any non-zero colour channel counts as inside; alpha is ignored.
        array = np.asarray(array[..., :3].any(axis=-1))
    return array != 0


def write_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write an ``H x W`` bool mask as an 8-bit PNG with values 0/255."""
    from PIL import Image

    if mask.ndim != 2:
        raise MaskError(f"write_mask_png expects a 2-D mask, got shape {mask.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask.astype(bool) * np.uint8(255)).astype(np.uint8), mode="L").save(
        path, compress_level=1
    )


def load_mask(
    mask: str | Mapping[str, Any],
    root: str | os.PathLike[str] | None = None,
    *,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Load a target's mask (a PNG path relative to ``root``, or an RLE dict) as ``H x W`` bool.

    If ``shape = (H, W)`` is given, a mask of another size raises :class:`MaskError`.
    """
    if isinstance(mask, str):
        path = Path(mask)
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        array = read_mask_png(path)
    else:
        array = decode_rle(mask)
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise MaskError(
            f"mask is {array.shape[0]}x{array.shape[1]} (HxW), image is {shape[0]}x{shape[1]}"
        )
    return array
