"""Spatial facts about the targets of one image, computed from their masks.

All directions here are **image** directions: "left" is the left of the stored image
(smaller column index), "above" is toward row 0. Turning them into patient sides is the
caller's job and depends on ``Record.display`` (see :func:`patient_side`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A dominant direction needs its component this many times the other one.
DIRECTION_RATIO = 1.5
#: Image thirds: centroids left of 40 % of the width are "left", right of 60 % "right".
SIDE_BAND = (0.4, 0.6)


def region_phrase(vertical: str, horizontal: str) -> str:
    """``("upper", "left")`` -> ``"upper left"``, ``("middle", "centre")`` -> ``"central"``,
    ``("lower", "centre")`` -> ``"lower central"``: how a target's third of the image is
    said in "lies in the ... part of the image"."""
    if horizontal == "centre":
        return "central" if vertical == "middle" else f"{vertical} central"
    return f"{vertical} {horizontal}"


def mask_region(mask: np.ndarray) -> str | None:
    """The :func:`region_phrase` of a ``H x W`` mask's centroid, the thirds of the image
    read as :class:`Layout` reads a target's; ``None`` for an empty mask."""
    if not np.any(mask):
        return None
    layout = Layout(["mask"], [mask])
    return region_phrase(layout.vertical(0), layout.horizontal(0))


@dataclass(frozen=True)
class Shape:
    """Geometry of one target mask; ``centroid`` is ``(x, y)`` in pixel-edge coordinates."""

    index: int
    label: str
    area: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]


def patient_side(image_side: str, display: str | None) -> str | None:
    """The patient's side shown on ``image_side`` ("left"/"right") under ``display``.

    Radiological display shows the patient's right on the image's left; neurological
    display shows it on the image's right; without a display convention there is none.
    """
    if image_side not in ("left", "right"):
        raise ValueError(f"image_side must be 'left' or 'right', got {image_side!r}")
    if display == "radiological":
        return "right" if image_side == "left" else "left"
    if display == "neurological":
        return image_side
    return None


def image_side_of(patient: str, display: str | None) -> str | None:
    """Inverse of :func:`patient_side`: where the patient's ``patient`` side appears."""
    if display == "radiological":
        return "right" if patient == "left" else "left"
    if display == "neurological":
        return patient
    return None


class Layout:
    """Pairwise relations between the targets of one ``H x W`` image."""

    def __init__(self, labels: Sequence[str], masks: Sequence[np.ndarray]) -> None:
        if len(labels) != len(masks):
            raise ValueError(f"{len(labels)} labels for {len(masks)} masks")
        if not masks:
            raise ValueError("a layout needs at least one mask")
        self.height, self.width = (int(v) for v in masks[0].shape)
        # Imported here: medisee.boxes imports torch, which commands that never touch masks
        # (generate --engine llm, stats) should not pay for at start-up.
        from medisee.boxes import mask_to_box

        self.masks = [np.asarray(m, dtype=bool) for m in masks]
        self.shapes: list[Shape] = []
        for index, (label, mask) in enumerate(zip(labels, self.masks)):
            if mask.shape != (self.height, self.width):
                raise ValueError(
                    f"mask {index} has shape {mask.shape}, expected {(self.height, self.width)}"
                )
            box = mask_to_box(mask)
            if box is None:
                raise ValueError(f"mask {index} ({label!r}) is empty")
            rows, cols = np.nonzero(mask)
            centroid = (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5)
            self.shapes.append(Shape(index, label, int(rows.size), box, centroid))
        self._distance: dict[tuple[int, int], np.ndarray] = {}
        self.scattered = [self._is_scattered(mask) for mask in self.masks]
        self._overlaps: dict[tuple[int, int], int] = {}

    @staticmethod
    def _is_scattered(mask: np.ndarray) -> bool:
        """Several separate pieces with no dominant one (exudates, MS plaques): a centroid
        says little about where such a target is, so it takes no part in directions."""
        from scipy import ndimage

        labels, count = ndimage.label(mask)
        if count <= 1:
            return False
        sizes = np.bincount(labels.ravel())[1:]
        return bool(sizes.max() < 0.7 * sizes.sum())

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def scale(self) -> float:
        return float(max(self.height, self.width))

    def horizontal(self, i: int) -> str:
        """``"left"``, ``"centre"`` or ``"right"`` third of the image (by centroid)."""
        x = self.shapes[i].centroid[0] / self.width
        return "left" if x < SIDE_BAND[0] else "right" if x > SIDE_BAND[1] else "centre"

    def half(self, i: int) -> str:
        """``"left"``/``"right"`` half of the image (centroid at least 3 % of the width
        off the vertical midline), else ``"centre"``."""
        x = self.shapes[i].centroid[0] / self.width
        return "left" if x < 0.47 else "right" if x > 0.53 else "centre"

    def vertical(self, i: int) -> str:
        """``"upper"``, ``"middle"`` or ``"lower"`` third of the image (by centroid)."""
        y = self.shapes[i].centroid[1] / self.height
        return "upper" if y < SIDE_BAND[0] else "lower" if y > SIDE_BAND[1] else "middle"

    def direction(self, a: int, b: int) -> str | None:
        """Where ``a`` lies relative to ``b`` in the image: ``"above"``, ``"below"``,
        ``"left"``, ``"right"``; ``None`` if they overlap, are too close or diagonal."""
        if a == b or self.scattered[a] or self.scattered[b]:
            return None
        if self.contains(b, a) or self.contains(a, b):
            return None
        ax, ay = self.shapes[a].centroid
        bx, by = self.shapes[b].centroid
        dx, dy = ax - bx, ay - by
        # Too close to tell, or too far apart for "above X" to help find the target.
        if max(abs(dx), abs(dy)) < 0.04 * self.scale or np.hypot(dx, dy) > 0.45 * self.scale:
            return None
        if abs(dy) >= DIRECTION_RATIO * abs(dx):
            return "above" if dy < 0 else "below"
        if abs(dx) >= DIRECTION_RATIO * abs(dy):
            return "left" if dx < 0 else "right"
        return None

    def overlap(self, a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in self._overlaps:
            ax0, ay0, ax1, ay1 = self.shapes[a].box
            bx0, by0, bx1, by1 = self.shapes[b].box
            x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
            if x0 >= x1 or y0 >= y1:
                self._overlaps[key] = 0
            else:
                window = (slice(y0, y1), slice(x0, x1))
                self._overlaps[key] = int(
                    np.count_nonzero(self.masks[a][window] & self.masks[b][window])
                )
        return self._overlaps[key]

    def contains(self, outer: int, inner: int) -> bool:
        """True if at least 90 % of ``inner`` lies inside the (clearly larger) ``outer``."""
        if outer == inner:
            return False
        a_in, a_out = self.shapes[inner].area, self.shapes[outer].area
        if a_in >= 0.8 * a_out:
            return False
        return self.overlap(outer, inner) >= 0.9 * a_in

    def within(self, a: int, b: int, gap: float) -> bool:
        """True if some pixel of ``a`` is at most ``gap`` px from ``b`` (Euclidean)."""
        from scipy import ndimage

        ax0, ay0, ax1, ay1 = self.shapes[a].box
        bx0, by0, bx1, by1 = self.shapes[b].box
        reach = int(np.ceil(gap)) + 1
        # Only a window around b's box can be within the gap: no full-image transform.
        x0, y0 = max(0, bx0 - reach), max(0, by0 - reach)
        x1, y1 = min(self.width, bx1 + reach), min(self.height, by1 + reach)
        if ax1 <= x0 or ax0 >= x1 or ay1 <= y0 or ay0 >= y1:
            return False
        key = (b, reach)
        if key not in self._distance:
            self._distance[key] = ndimage.distance_transform_edt(~self.masks[b][y0:y1, x0:x1])
        values = self._distance[key][self.masks[a][y0:y1, x0:x1]]
        return bool(values.size) and float(values.min()) <= gap

    def adjacent(self, a: int, b: int) -> bool:
        """Masks within ``max(3 px, 3 %)`` of each other, neither containing the other."""
        if a == b or self.contains(a, b) or self.contains(b, a):
            return False
        return self.within(a, b, max(3.0, 0.03 * self.scale))

    def between(self, a: int, b: int, c: int) -> str | None:
        """``"horizontal"``/``"vertical"`` if ``a``'s centroid lies between ``b`` and ``c``
        along that axis while all three share a band across it; else ``None``."""
        if len({a, b, c}) < 3 or any(self.scattered[i] for i in (a, b, c)):
            return None
        for i, j in ((a, b), (a, c), (b, c)):
            smaller = min(self.shapes[i].area, self.shapes[j].area)
            if self.overlap(i, j) > 0.1 * smaller:
                return None  # nested or overlapping: "between" would be misleading
        (ax, ay), (bx, by), (cx, cy) = (self.shapes[i].centroid for i in (a, b, c))
        band = 0.15 * self.scale
        if min(bx, cx) < ax < max(bx, cx) and abs(bx - cx) > 0.1 * self.scale:
            if abs(ay - by) < band and abs(ay - cy) < band:
                return "horizontal"
        if min(by, cy) < ay < max(by, cy) and abs(by - cy) > 0.1 * self.scale:
            if abs(ax - bx) < band and abs(ax - cx) < band:
                return "vertical"
        return None

    def rank_by_area(self, indices: Sequence[int]) -> list[int]:
        """``indices`` sorted by area, largest first."""
        return sorted(indices, key=lambda i: -self.shapes[i].area)
