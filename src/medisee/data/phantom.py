"""Procedural multi-modality phantoms with exact masks.

Each generator draws a plausible layout of organs and lesions for one modality (chest CT,
abdominal CT, pelvic CT, chest X-ray, brain MRI, fundus, thyroid ultrasound,
echocardiography, dermoscopy, colonoscopy, mammography), renders an image with
texture, partial-volume blur and modality-typical noise, and returns the exact mask of
every visible target. Anatomical sides follow the radiological display convention
(patient's right on the image's left) wherever ``display="radiological"``: e.g. the liver
is drawn on the image's left and labelled with the patient's side.

Masks are defined before rendering, so they are exact: a target's mask is its shape
minus whatever is drawn over it later ("replace" layers), plus the lesions it contains
(a liver mask includes its tumour). Overlapping projections (clavicles over lungs on a
radiograph, vessels over the optic disc) are "add" layers and hide nothing.

Everything is drawn from one ``numpy.random.Generator``: a generator called with the
same seed gives the same image and masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medisee.data.io import Window, apply_window

#: Targets smaller than this many pixels are dropped (the model could not see them).
MIN_TARGET_AREA = 12


@dataclass
class Phantom:
    """A generated image with its targets.

    ``image`` is ``H x W`` (grey) or ``H x W x 3`` uint8; ``targets`` are ``(label,
    H x W bool mask)`` pairs, every mask non-empty.
    """

    kind: str
    modality: str
    display: str | None
    image: np.ndarray
    targets: list[tuple[str, np.ndarray]]
    meta: dict = field(default_factory=dict)


@dataclass
class _Layer:
    label: str | None
    shape: np.ndarray
    value: float | tuple[float, ...]
    mode: str
    texture: float
    weights: tuple[float, float, float]
    parent: str | None


class Scene:
    """Paints layers in order and derives each target's visible mask."""

    def __init__(
        self, height: int, width: int, rng: np.random.Generator, channels: int = 1
    ) -> None:
        self.h, self.w, self.rng, self.channels = height, width, rng, channels
        self.layers: list[_Layer] = []
        self._fields: list[np.ndarray] | None = None
        self._interiors: dict[tuple[int, float], np.ndarray] = {}

    # -------------------------------------------------------------- shapes
    def blob(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        angle: float = 0.0,
        wobble: float = 0.0,
        harmonics: Sequence[int] = (2, 3, 4, 5),
    ) -> np.ndarray:
        """Ellipse centred at ``(cx, cy)`` (pixels) with radii ``rx, ry``, rotated by ``angle``
        radians, whose edge is perturbed by random harmonics of relative size ``wobble``."""
        rng = self.rng
        amps = [wobble * rng.uniform(0.3, 1.0) / max(1.0, k / 2) for k in harmonics]
        phases = [rng.uniform(0, 2 * math.pi) for _ in harmonics]
        reach = max(rx, ry) * (1 + wobble * 2.5) + 2
        y0, y1 = max(0, int(cy - reach)), min(self.h, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(self.w, int(cx + reach) + 1)
        mask = np.zeros((self.h, self.w), dtype=bool)
        if y0 >= y1 or x0 >= x1:
            return mask
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        c, s = math.cos(angle), math.sin(angle)
        u = (c * dx + s * dy) / max(rx, 1e-3)
        v = (-s * dx + c * dy) / max(ry, 1e-3)
        radius = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        edge = np.ones_like(radius)
        for k, a, p in zip(harmonics, amps, phases):
            edge += a * np.cos(k * theta + p)
        mask[y0:y1, x0:x1] = radius <= edge
        return mask

    def tube(self, polylines: Sequence[np.ndarray], radii: Sequence[np.ndarray]) -> np.ndarray:
        """Union of thick polylines: ``polylines[i]`` is ``N x 2`` ``(x, y)`` points,
        ``radii[i]`` the ``N`` radii (pixels) along it."""
        centre = np.zeros((self.h, self.w), dtype=bool)
        radius_map = np.zeros((self.h, self.w), dtype=np.float32)
        for points, rads in zip(polylines, radii):
            points = np.asarray(points, dtype=np.float64)
            rads = np.asarray(rads, dtype=np.float64)
            for (p, q), (rp, rq) in zip(zip(points[:-1], points[1:]), zip(rads[:-1], rads[1:])):
                steps = max(2, int(np.hypot(*(q - p)) * 2) + 1)
                t = np.linspace(0.0, 1.0, steps)
                xs = np.clip((p[0] + (q[0] - p[0]) * t).astype(int), 0, self.w - 1)
                ys = np.clip((p[1] + (q[1] - p[1]) * t).astype(int), 0, self.h - 1)
                rs = rp + (rq - rp) * t
                centre[ys, xs] = True
                np.maximum.at(radius_map, (ys, xs), rs.astype(np.float32))
        if not centre.any():
            return centre
        dist, (iy, ix) = ndimage.distance_transform_edt(~centre, return_indices=True)
        return dist <= radius_map[iy, ix]

    def polygon(self, xs: Sequence[float], ys: Sequence[float]) -> np.ndarray:
        from skimage.draw import polygon

        mask = np.zeros((self.h, self.w), dtype=bool)
        rr, cc = polygon(np.asarray(ys), np.asarray(xs), shape=(self.h, self.w))
        mask[rr, cc] = True
        return mask

    def point_in(self, region: np.ndarray, margin: float = 0.0) -> tuple[float, float] | None:
        """A random ``(x, y)`` inside ``region`` at least ``margin`` px from its edge."""
        if margin > 0:
            # Loops ask for points in the same region many times: cache the erosion.
            key = (hash(region.tobytes()), margin)
            if key not in self._interiors:
                self._interiors[key] = ndimage.distance_transform_edt(region) > margin
            region = self._interiors[key]
        ys, xs = np.nonzero(region)
        if ys.size == 0:
            return None
        i = int(self.rng.integers(ys.size))
        return float(xs[i]) + 0.5, float(ys[i]) + 0.5

    # -------------------------------------------------------------- layers
    def shape_of(self, label: str) -> np.ndarray:
        shape = np.zeros((self.h, self.w), dtype=bool)
        for layer in self.layers:
            if layer.label == label:
                shape |= layer.shape
        return shape

    def add(
        self,
        label: str | None,
        shape: np.ndarray,
        value: float | tuple[float, ...],
        *,
        mode: str = "replace",
        texture: float = 0.0,
        parent: str | None = None,
    ) -> np.ndarray:
        """Add a layer; ``label=None`` is unlabelled texture. With ``parent``, the shape is
        clipped to the parent's shape and counts as part of the parent's mask."""
        if mode not in ("replace", "add"):
            raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")
        if parent is not None:
            shape = shape & self.visible(parent)
        weights = tuple(float(v) for v in self.rng.dirichlet((1.0, 1.0, 1.0)))
        self.layers.append(_Layer(label, shape, value, mode, texture, weights, parent))  # type: ignore[arg-type]
        return shape

    def _texture_fields(self) -> list[np.ndarray]:
        if self._fields is None:
            fields = []
            for sigma, step in ((1.0, 1), (3.0, 2), (9.0, 4)):
                # Smooth fields are drawn at a lower resolution and upsampled: same look,
                # a fraction of the filtering cost.
                shape = (self.h // step + 2, self.w // step + 2)
                noise = self.rng.standard_normal(shape).astype(np.float32)
                noise = ndimage.gaussian_filter(noise, sigma / step, truncate=3.0)
                if step > 1:
                    noise = ndimage.zoom(noise, step, order=1)
                noise = noise[: self.h, : self.w]
                fields.append(noise / (noise.std() + 1e-6))
            self._fields = fields
        return self._fields

    def render(self, background: float | tuple[float, ...]) -> np.ndarray:
        """The float image (``H x W`` or ``H x W x C``) before noise and display mapping."""
        fields = self._texture_fields()
        shape = (self.h, self.w) if self.channels == 1 else (self.h, self.w, self.channels)
        image = np.empty(shape, dtype=np.float32)
        image[...] = background
        for layer in self.layers:
            if not layer.shape.any():
                continue
            value = np.asarray(layer.value, dtype=np.float32)
            if self.channels > 1 and value.ndim == 0:
                value = np.full(self.channels, float(value), dtype=np.float32)
            if layer.texture:
                mix = sum(w * f for w, f in zip(layer.weights, fields))
                if not isinstance(mix, np.ndarray):
                    raise ValueError("a textured layer needs the texture fields")
                tex = 1.0 + layer.texture * mix[layer.shape]
            else:
                tex = np.ones(int(layer.shape.sum()), dtype=np.float32)
            if self.channels == 1:
                contribution = value * tex
            else:
                contribution = value[None, :] * tex[:, None]
            if layer.mode == "replace":
                image[layer.shape] = contribution
            else:
                image[layer.shape] += contribution
        return image

    def _own(self, label: str) -> set[str]:
        """``label`` and the labels of everything drawn inside it (transitively)."""
        own, changed = {label}, True
        while changed:
            changed = False
            for layer in self.layers:
                if layer.label is not None and layer.parent in own and layer.label not in own:
                    own.add(layer.label)
                    changed = True
        return own

    def visible(self, label: str) -> np.ndarray:
        """Pixels of ``label`` not painted over by a later unrelated ``replace`` layer.

        Layers drawn inside the target (its lesions, or texture with ``parent=label``)
        do not hide it: a liver mask includes its tumour and its vessels' texture.
        """
        own = self._own(label)
        visible = np.zeros((self.h, self.w), dtype=bool)
        for i, layer in enumerate(self.layers):
            if layer.label != label:
                continue
            visible |= layer.shape
            for later in self.layers[i + 1 :]:
                if later.mode == "replace" and later.label not in own and later.parent not in own:
                    visible &= ~later.shape
        return visible

    def masks(self) -> list[tuple[str, np.ndarray]]:
        """Visible mask per target label (first-added order), empty or tiny ones dropped."""
        order: list[str] = []
        for layer in self.layers:
            if layer.label is not None and layer.label not in order:
                order.append(layer.label)
        result = []
        for label in order:
            visible = self.visible(label)
            if int(visible.sum()) >= MIN_TARGET_AREA:
                result.append((label, visible))
        return result


# ---------------------------------------------------------------------- helpers
def _size(rng: np.random.Generator, base_h: int, base_w: int, jitter: int = 16) -> tuple[int, int]:
    return (
        base_h + int(rng.integers(-jitter // 2, jitter // 2 + 1)) * 2,
        base_w + int(rng.integers(-jitter // 2, jitter // 2 + 1)) * 2,
    )


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if image.ndim == 3:
        return ndimage.gaussian_filter(image, (sigma, sigma, 0))
    return ndimage.gaussian_filter(image, sigma)


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(image * 255 + 0.5), 0, 255).astype(np.uint8)


def _vertebra(
    scene: Scene, cx: float, cy: float, size: float, hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertebra (body + arch + spinous process) and its spinal canal, axial CT."""
    rng = scene.rng
    body = scene.blob(cx, cy, size, size * _u(rng, 0.8, 0.95), wobble=0.03)
    canal_cy = cy + size * 1.45
    canal = scene.blob(cx, canal_cy, size * 0.5, size * 0.42, wobble=0.03)
    arch_outer = scene.blob(cx, canal_cy + size * 0.1, size * 0.95, size * 0.78, wobble=0.03)
    spinous = scene.blob(cx, canal_cy + size * 1.0, size * 0.22, size * 0.55, wobble=0.05)
    bone = (body | arch_outer | spinous) & ~canal
    scene.add("vertebra", bone, hu, texture=0.08)
    rim = bone & ~ndimage.binary_erosion(bone, iterations=2)
    scene.add(None, rim, hu * 1.5, parent="vertebra")
    scene.add("spinal canal", canal, 20.0, texture=0.1)
    return bone, canal


def _ct_finish(scene: Scene, image_hu: np.ndarray, window: Window, noise: float) -> np.ndarray:
    rng = scene.rng
    image_hu = _blur(image_hu, _u(rng, 0.5, 0.9))
    image_hu = image_hu + rng.normal(0.0, noise, image_hu.shape).astype(np.float32)
    return apply_window(image_hu, window)


def _ct_window(rng: np.random.Generator) -> Window:
    # Chest: a wide window that keeps air, lung, fat, soft tissue and bone all distinct.
    return Window(_u(rng, -200, -120), _u(rng, 1000, 1300))


def _soft_tissue_window(rng: np.random.Generator) -> Window:
    # Abdomen and pelvis: about the standard abdominal window (40/400), jittered.
    return Window(_u(rng, 30, 60), _u(rng, 350, 480))


# ---------------------------------------------------------------------- chest CT
def chest_ct(rng: np.random.Generator) -> Phantom:
    """Axial chest CT (radiological display): lungs, heart or trachea level, aorta, spine."""
    h, w = _size(rng, 240, 304)
    s = Scene(h, w, rng)
    upper = rng.random() < 0.3
    cx = w / 2 + _u(rng, -6, 6)
    body = s.blob(cx, h * 0.52, w * _u(rng, 0.42, 0.46), h * _u(rng, 0.38, 0.42), wobble=0.03)
    s.add(None, body, -100.0, texture=0.1)
    inner = s.blob(cx, h * 0.52, w * 0.40, h * 0.36, wobble=0.03) & body
    s.add(None, inner, 40.0, texture=0.1)
    lung_ry = h * (0.24 if upper else 0.29)
    lung_hu = _u(rng, -880, -820)
    for label, sx in (("right lung", -1), ("left lung", 1)):
        lx = cx + sx * w * _u(rng, 0.18, 0.2)
        lung = (
            s.blob(lx, h * 0.47, w * _u(rng, 0.13, 0.15), lung_ry, angle=sx * 0.1, wobble=0.05)
            & inner
        )
        s.add(label, lung, lung_hu, texture=0.03)
        # Vessel dots inside the lung: texture, part of the lung target.
        dots = np.zeros_like(lung)
        for _ in range(int(rng.integers(8, 16))):
            p = s.point_in(lung, margin=4)
            if p:
                dots |= s.blob(p[0], p[1], _u(rng, 1.0, 2.2), _u(rng, 1.0, 2.2))
        s.add(None, dots & lung, -450.0, parent=label)
    contrast = rng.random() < 0.6
    blood = _u(rng, 150, 220) if contrast else _u(rng, 35, 50)
    if upper:
        trachea = s.blob(cx, h * 0.40, w * 0.032, w * 0.03, wobble=0.03)
        s.add(None, s.blob(cx, h * 0.40, w * 0.042, w * 0.04), 30.0)
        s.add("trachea", trachea, -1000.0)
        esophagus = s.blob(cx + w * 0.02, h * 0.50, w * 0.02, w * 0.016)
        aorta = s.blob(cx + w * 0.1, h * 0.38, w * 0.065, w * 0.028, angle=-0.5, wobble=0.04)
        s.add("aorta", aorta, blood, texture=0.03)
    else:
        heart = s.blob(
            cx + w * 0.06,
            h * 0.44,
            w * _u(rng, 0.12, 0.14),
            h * _u(rng, 0.15, 0.18),
            angle=0.5,
            wobble=0.05,
        )
        s.add("heart", heart, blood * 0.85 if contrast else 45.0, texture=0.05)
        esophagus = s.blob(cx + w * 0.015, h * 0.62, w * 0.02, w * 0.016)
        aorta = s.blob(cx + w * 0.08, h * 0.62, w * 0.035, w * 0.035, wobble=0.02)
        s.add("aorta", aorta, blood, texture=0.03)
    s.add("esophagus", esophagus, 35.0, texture=0.05)
    if rng.random() < 0.5:
        s.add(None, s.blob(*_centroid(esophagus), 1.5, 1.5), -900.0, parent="esophagus")
    sternum = s.blob(cx, h * 0.52 - h * 0.36 + h * 0.035, w * 0.045, h * 0.02, wobble=0.05) & body
    s.add("sternum", sternum, 500.0, texture=0.1)
    _vertebra(s, cx, h * 0.73, w * 0.05, _u(rng, 450, 600))
    side = "right lung" if rng.random() < 0.5 else "left lung"
    if rng.random() < 0.5:
        p = s.point_in(s.visible(side), margin=12)
        if p:
            r = _u(rng, 4.5, 9.0)
            s.add(
                "lung nodule",
                s.blob(p[0], p[1], r, r * _u(rng, 0.8, 1.1), wobble=0.1),
                30.0,
                parent=side,
            )
    if rng.random() < 0.35:
        lung = s.visible("left lung" if side == "right lung" else "right lung")
        rows = np.nonzero(lung.any(axis=1))[0]
        if rows.size:
            cut = rows[-1] - (rows[-1] - rows[0]) * _u(rng, 0.2, 0.35)
            yy = np.arange(h)[:, None] + 0.5
            xx = np.arange(w)[None, :] + 0.5
            curve = cut + 6 * np.cos((xx - cx) / w * math.pi)
            s.add("pleural effusion", lung & (yy > curve), 12.0, texture=0.05)
    image = _ct_finish(s, s.render(-1000.0), _ct_window(rng), _u(rng, 8, 20))
    return Phantom(
        "chest_ct", "CT", "radiological", image, s.masks(), {"level": "upper" if upper else "heart"}
    )


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by ``(dx, dy)`` pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


# ---------------------------------------------------------------------- abdominal CT
def abdominal_ct(rng: np.random.Generator) -> Phantom:
    """Axial abdominal CT, portal venous or plain phase, at a random craniocaudal level."""
    h, w = _size(rng, 240, 320)
    s = Scene(h, w, rng)
    level = _u(rng, 0.0, 1.0)  # 0: dome of the liver, 1: lower poles of the kidneys
    portal = rng.random() < 0.8
    cx = w / 2 + _u(rng, -6, 6)
    body = s.blob(cx, h * 0.5, w * _u(rng, 0.43, 0.47), h * _u(rng, 0.40, 0.44), wobble=0.03)
    s.add(None, body, -100.0, texture=0.1)
    wall = s.blob(cx, h * 0.5, w * 0.41, h * 0.37, wobble=0.03) & body
    s.add(None, wall, 45.0, texture=0.1)
    cavity = s.blob(cx, h * 0.5, w * 0.38, h * 0.33, wobble=0.03) & body
    s.add(None, cavity, -70.0, texture=0.3)
    for _ in range(int(rng.integers(4, 9))):  # bowel loops: clutter, not targets
        p = s.point_in(cavity, margin=10)
        if p:
            r = _u(rng, 5, 11)
            s.add(
                None,
                s.blob(p[0], p[1], r, r * _u(rng, 0.6, 1.0), angle=_u(rng, 0, 3), wobble=0.1),
                _u(rng, 10, 60),
                texture=0.1,
            )
    hu = {
        "liver": 110.0 if portal else 60.0,
        "spleen": 120.0 if portal else 48.0,
        "kidney": 170.0 if portal else 32.0,
        "vessel": 160.0 if portal else 40.0,
        "ivc": 140.0 if portal else 38.0,
        "pancreas": 100.0 if portal else 42.0,
    }
    liver_scale = 1.0 - 0.45 * level
    liver = s.blob(
        w * 0.31,
        h * 0.44,
        w * 0.19 * liver_scale + 8,
        h * 0.25 * liver_scale + 8,
        angle=-0.2,
        wobble=0.05,
    )
    if level < 0.6:
        liver |= s.blob(
            w * 0.45,
            h * 0.33,
            w * 0.11 * liver_scale,
            h * 0.08 * liver_scale,
            angle=-0.3,
            wobble=0.08,
        )
    s.add("liver", liver & cavity, hu["liver"], texture=0.04)
    if level < 0.8:
        spleen = s.blob(
            w * 0.75, h * 0.47, w * 0.065, h * 0.13 * (1.1 - level), angle=0.45, wobble=0.06
        )
        s.add("spleen", spleen & cavity, hu["spleen"], texture=0.04)
    if level < 0.6:
        stomach = s.blob(w * 0.63, h * 0.30, w * 0.10, h * 0.085, angle=0.3, wobble=0.08) & cavity
        s.add("stomach", stomach, 50.0, texture=0.05)
        lumen = ndimage.binary_erosion(stomach, iterations=3)
        rows = np.nonzero(lumen.any(axis=1))[0]
        if rows.size:
            level_row = rows[0] + (rows[-1] - rows[0]) * _u(rng, 0.3, 0.6)
            yy = np.arange(h)[:, None] + 0.5
            s.add(None, lumen & (yy < level_row), -950.0, parent="stomach")
            s.add(None, lumen & (yy >= level_row), 15.0, parent="stomach")
    if 0.2 < level < 0.85:
        pancreas = s.blob(w * 0.55, h * 0.47, w * 0.13, h * 0.032, angle=-0.3, wobble=0.12) & cavity
        s.add("pancreas", pancreas, hu["pancreas"], texture=0.12)
    if 0.3 < level < 0.8 and rng.random() < 0.7:
        gall = s.blob(w * 0.40, h * 0.50, w * 0.032, h * 0.05, angle=0.3, wobble=0.05) & cavity
        s.add("gallbladder", gall, 12.0, texture=0.03)
    s.add(
        "aorta",
        s.blob(cx + w * 0.035, h * 0.61, w * 0.028, w * 0.028, wobble=0.02),
        hu["vessel"],
        texture=0.03,
    )
    s.add(
        "inferior vena cava",
        s.blob(cx - w * 0.06, h * 0.59, w * 0.032, w * 0.022, wobble=0.04),
        hu["ivc"],
        texture=0.03,
    )
    if level > 0.3:
        for label, sx in (("right kidney", -1), ("left kidney", 1)):
            kx, ky = cx + sx * w * 0.17, h * (0.64 if sx < 0 else 0.62)
            angle = -sx * 0.35
            kidney = s.blob(kx, ky, w * 0.05, h * 0.09, angle=angle, wobble=0.04)
            s.add(label, kidney, hu["kidney"], texture=0.04)
            medulla = s.blob(kx, ky, w * 0.028, h * 0.055, angle=angle, wobble=0.1)
            s.add(None, medulla, hu["kidney"] * 0.6, parent=label)
            s.add(None, s.blob(kx - sx * w * 0.03, ky, w * 0.015, h * 0.025), -80.0, parent=label)
        for label, sx in (("right psoas muscle", -1), ("left psoas muscle", 1)):
            s.add(
                label,
                s.blob(cx + sx * w * 0.075, h * 0.72, w * 0.03, h * 0.045, wobble=0.05),
                50.0,
                texture=0.06,
            )
    _vertebra(s, cx, h * 0.71, w * 0.045, _u(rng, 400, 550))
    if rng.random() < 0.45:
        liver_now = s.visible("liver")
        for _ in range(int(rng.integers(1, 3))):
            p = s.point_in(liver_now, margin=10)
            if p:
                r = _u(rng, 5, 12)
                s.add(
                    "liver tumor",
                    s.blob(p[0], p[1], r, r * _u(rng, 0.8, 1.1), wobble=0.1),
                    hu["liver"] - _u(rng, 45, 70),
                    parent="liver",
                    texture=0.05,
                )
    kidneys = [lab for lab in ("right kidney", "left kidney") if s.visible(lab).any()]
    if kidneys and rng.random() < 0.4:
        kid = s.visible(kidneys[int(rng.integers(len(kidneys)))])
        edge = kid & ~ndimage.binary_erosion(kid, iterations=2)
        p = s.point_in(edge)
        if p:
            r = _u(rng, 5, 9)
            s.add("kidney cyst", s.blob(p[0], p[1], r, r, wobble=0.03), 8.0)
    image = _ct_finish(s, s.render(-1000.0), _soft_tissue_window(rng), _u(rng, 8, 18))
    return Phantom(
        "abdominal_ct",
        "CT",
        "radiological",
        image,
        s.masks(),
        {"phase": "portal" if portal else "plain", "level": round(level, 2)},
    )


# ---------------------------------------------------------------------- pelvic CT
def pelvic_ct(rng: np.random.Generator) -> Phantom:
    """Axial pelvic CT at the level of the femoral heads (male or female pelvis)."""
    h, w = _size(rng, 224, 320)
    s = Scene(h, w, rng)
    cx = w / 2 + _u(rng, -6, 6)
    male = rng.random() < 0.5
    body = s.blob(cx, h * 0.5, w * _u(rng, 0.44, 0.48), h * _u(rng, 0.40, 0.44), wobble=0.03)
    s.add(None, body, -100.0, texture=0.1)
    s.add(None, s.blob(cx, h * 0.52, w * 0.40, h * 0.34, wobble=0.04) & body, 45.0, texture=0.1)
    pelvis = s.blob(cx, h * 0.5, w * 0.17, h * 0.28, wobble=0.04)
    s.add(None, pelvis, -80.0, texture=0.2)
    for label, sx in (("right femoral head", -1), ("left femoral head", 1)):
        fx = cx + sx * w * _u(rng, 0.26, 0.29)
        r = w * _u(rng, 0.055, 0.065)
        s.add(
            None, s.blob(fx + sx * 4, h * 0.52, r * 1.45, r * 1.5, wobble=0.05), 380.0, texture=0.1
        )  # acetabulum
        s.add(None, s.blob(fx, h * 0.52, r * 1.12, r * 1.12), 10.0)  # joint space
        s.add(label, s.blob(fx, h * 0.52, r, r, wobble=0.02), _u(rng, 350, 450), texture=0.12)
    bladder_r = _u(rng, 0.09, 0.14)
    bladder = s.blob(cx, h * 0.38, w * bladder_r, h * bladder_r * 1.2, wobble=0.05)
    s.add("urinary bladder", bladder, 8.0, texture=0.03)
    if male:
        s.add(
            "prostate",
            s.blob(cx, h * 0.38 + h * bladder_r * 1.2 + h * 0.05, w * 0.05, h * 0.055, wobble=0.05),
            45.0,
            texture=0.06,
        )
    else:
        uterus = s.blob(
            cx + _u(rng, -10, 10),
            h * 0.38 + h * bladder_r * 1.2 + h * 0.06,
            w * 0.085,
            h * 0.065,
            wobble=0.06,
        )
        s.add("uterus", uterus, 85.0, texture=0.06)
        if rng.random() < 0.4:
            p = s.point_in(uterus, margin=7)
            if p:
                r = _u(rng, 5, 9)
                s.add(
                    "uterine fibroid",
                    s.blob(p[0], p[1], r, r, wobble=0.05),
                    45.0,
                    parent="uterus",
                    texture=0.04,
                )
    rectum = s.blob(cx, h * 0.72, w * 0.045, h * 0.05, wobble=0.06)
    s.add("rectum", rectum, 40.0, texture=0.05)
    s.add(None, s.blob(cx, h * 0.72, w * 0.022, h * 0.025, wobble=0.2), -900.0, parent="rectum")
    s.add(
        "sacrum",
        s.blob(cx, h * 0.86, w * 0.08, h * 0.045, wobble=0.05),
        _u(rng, 350, 450),
        texture=0.12,
    )
    image = _ct_finish(s, s.render(-1000.0), _soft_tissue_window(rng), _u(rng, 8, 18))
    return Phantom(
        "pelvic_ct", "CT", "radiological", image, s.masks(), {"sex": "male" if male else "female"}
    )


# ---------------------------------------------------------------------- chest X-ray
def chest_xray(rng: np.random.Generator) -> Phantom:
    """PA chest radiograph (patient's right on the image's left)."""
    h, w = _size(rng, 256, 240)
    s = Scene(h, w, rng)
    cx = w / 2 + _u(rng, -5, 5)
    trunk = s.blob(cx, h * 0.62, w * 0.47, h * 0.55, wobble=0.02)
    s.add(None, trunk, 0.55, texture=0.05)
    for label, sx in (("right lung", -1), ("left lung", 1)):
        lung = s.blob(
            cx + sx * w * _u(rng, 0.19, 0.21),
            h * 0.47,
            w * _u(rng, 0.13, 0.15),
            h * _u(rng, 0.28, 0.31),
            angle=-sx * 0.08,
            wobble=0.04,
        )
        s.add(label, lung, _u(rng, 0.16, 0.22), texture=0.12)
    s.add(None, s.blob(cx, h * 0.3, w * 0.06, h * 0.25), 0.58, texture=0.05)  # mediastinum
    s.add("trachea", s.blob(cx, h * 0.2, w * 0.022, h * 0.14, wobble=0.02), 0.32, texture=0.05)
    heart = s.blob(
        cx + w * 0.05,
        h * 0.64,
        w * _u(rng, 0.15, 0.18),
        h * _u(rng, 0.12, 0.14),
        angle=0.3,
        wobble=0.04,
    )
    s.add("heart", heart, 0.62, texture=0.04)
    ribs_lines, ribs_r = [], []
    for i in range(7):
        y = h * (0.22 + i * 0.085)
        for sx in (-1, 1):
            xs = cx + sx * np.linspace(w * 0.04, w * 0.36, 12)
            ys = y + h * 0.05 * np.sin(np.linspace(0, math.pi * 0.8, 12)) - h * 0.02
            ribs_lines.append(np.stack([xs, ys], axis=1))
            ribs_r.append(np.full(12, 2.2))
    s.add(None, s.tube(ribs_lines, ribs_r) & trunk, 0.09, mode="add")
    for label, sx in (("right clavicle", -1), ("left clavicle", 1)):
        xs = cx + sx * np.linspace(w * 0.05, w * 0.38, 10)
        ys = (
            h * 0.15
            - h * 0.05 * np.linspace(0, 1, 10) ** 1.3
            + h * 0.01 * np.sin(np.linspace(0, math.pi, 10))
        )
        s.add(
            label,
            s.tube([np.stack([xs, ys], axis=1)], [np.full(10, _u(rng, 3.0, 4.0))]),
            0.25,
            mode="add",
        )
    lungs = [("right lung", -1), ("left lung", 1)]
    label, sx = lungs[int(rng.integers(2))]
    finding = rng.random()
    lung = s.visible(label)
    if finding < 0.25:
        p = s.point_in(lung, margin=10)
        if p:
            r = _u(rng, 5, 9)
            s.add(
                "lung nodule", s.blob(p[0], p[1], r, r, wobble=0.05), 0.22, mode="add", parent=label
            )
    elif finding < 0.5:
        rows = np.nonzero(lung.any(axis=1))[0]
        p = s.point_in(
            lung & (np.arange(h)[:, None] > rows[0] + 0.55 * (rows[-1] - rows[0])), margin=6
        )
        if p:
            s.add(
                "pneumonia",
                s.blob(p[0], p[1], w * 0.07, h * 0.06, wobble=0.25),
                0.22,
                mode="add",
                parent=label,
                texture=0.3,
            )
    elif finding < 0.7:
        rows = np.nonzero(lung.any(axis=1))[0]
        yy = np.arange(h)[:, None] + 0.5
        xx = np.arange(w)[None, :] + 0.5
        lateral = np.abs(xx - cx) / (w * 0.4)
        meniscus = rows[-1] - (rows[-1] - rows[0]) * (_u(rng, 0.12, 0.22) + 0.18 * lateral)
        s.add("pleural effusion", lung & (yy > meniscus), 0.6, texture=0.03)
    elif finding < 0.85:
        rows = np.nonzero(lung.any(axis=1))[0]
        yy = np.arange(h)[:, None] + 0.5
        apex = lung & (yy < rows[0] + (rows[-1] - rows[0]) * _u(rng, 0.45, 0.6))
        shift = int(rng.integers(6, 11))
        # The collapsed lung: the lung moved toward the hilum (medially and down).
        collapsed = _shift(lung, -sx * shift, shift // 2)
        s.add("pneumothorax", apex & ~collapsed, 0.1)
    image = s.render(0.04)
    image = _blur(image, _u(rng, 0.8, 1.3))
    image = image + rng.normal(0.0, _u(rng, 0.01, 0.025), image.shape).astype(np.float32)
    gamma = _u(rng, 0.85, 1.15)
    image = np.clip(image, 0, 1) ** gamma
    return Phantom(
        "chest_xray", "X-ray", "radiological", _to_uint8_rgb(image), s.masks(), {"view": "PA"}
    )


# ---------------------------------------------------------------------- brain MRI
def brain_mri(rng: np.random.Generator) -> Phantom:
    """Axial brain MRI (T1, T2 or FLAIR contrast) with an optional tumour, infarct or MS lesions."""
    h, w = _size(rng, 256, 216)
    s = Scene(h, w, rng)
    weighting = str(rng.choice(["T1", "T2", "FLAIR"]))
    tissue = {
        "T1": {
            "scalp": 0.8,
            "skull": 0.05,
            "csf_out": 0.15,
            "gm": 0.45,
            "wm": 0.65,
            "csf": 0.1,
            "lesion": 0.3,
            "edema": 0.38,
        },
        "T2": {
            "scalp": 0.6,
            "skull": 0.05,
            "csf_out": 0.85,
            "gm": 0.55,
            "wm": 0.38,
            "csf": 0.95,
            "lesion": 0.8,
            "edema": 0.72,
        },
        "FLAIR": {
            "scalp": 0.6,
            "skull": 0.05,
            "csf_out": 0.1,
            "gm": 0.5,
            "wm": 0.4,
            "csf": 0.08,
            "lesion": 0.9,
            "edema": 0.78,
        },
    }[weighting]
    cx, cy = w / 2 + _u(rng, -4, 4), h / 2 + _u(rng, -4, 4)
    rx, ry = w * _u(rng, 0.42, 0.45), h * _u(rng, 0.43, 0.46)
    head = s.blob(cx, cy, rx, ry, wobble=0.02)
    s.add(None, head, tissue["scalp"], texture=0.05)
    skull_outer = s.blob(cx, cy, rx * 0.95, ry * 0.95, wobble=0.01)
    skull_inner = s.blob(cx, cy, rx * 0.88, ry * 0.89, wobble=0.01)
    s.add("skull", skull_outer & ~skull_inner, tissue["skull"], texture=0.2)
    s.add(None, skull_inner, tissue["csf_out"])
    brain = (
        s.blob(cx, cy, rx * 0.85, ry * 0.86, wobble=0.015, harmonics=(2, 3, 17, 23, 29))
        & skull_inner
    )
    s.add("brain", brain, tissue["gm"], texture=0.05)
    wm = ndimage.binary_erosion(brain, iterations=int(rng.integers(5, 8)))
    wm &= s.blob(cx, cy, rx * 0.8, ry * 0.8, wobble=0.06, harmonics=(11, 13, 19, 21))
    s.add(None, wm, tissue["wm"], parent="brain", texture=0.04)
    fissure = s.blob(cx, cy - ry * 0.55, 1.5, ry * 0.3) | s.blob(cx, cy + ry * 0.6, 1.5, ry * 0.25)
    s.add(None, fissure & brain, tissue["csf_out"], parent="brain")
    spread = _u(rng, 0.9, 1.4)  # ventricle size: atrophy widens them
    for label, sx in (("right lateral ventricle", -1), ("left lateral ventricle", 1)):
        vx = cx + sx * w * 0.055 * spread
        horn = s.blob(vx, cy - h * 0.09, w * 0.03 * spread, h * 0.08, angle=sx * 0.25, wobble=0.05)
        body_ = s.blob(
            vx + sx * w * 0.015,
            cy + h * 0.06,
            w * 0.025 * spread,
            h * 0.09,
            angle=-sx * 0.2,
            wobble=0.05,
        )
        s.add(label, (horn | body_) & brain, tissue["csf"], parent="brain")
    s.add(
        "third ventricle",
        s.blob(cx, cy + h * 0.02, 2.2, h * 0.035) & brain,
        tissue["csf"],
        parent="brain",
    )
    finding = rng.random()
    meta = {"weighting": weighting}
    hemi = -1 if rng.random() < 0.5 else 1
    if finding < 0.4:
        tx, ty = cx + hemi * w * _u(rng, 0.17, 0.24), cy + h * _u(rng, -0.2, 0.2)
        r = w * _u(rng, 0.05, 0.09)
        edema = s.blob(tx, ty, r * _u(rng, 1.6, 2.1), r * _u(rng, 1.6, 2.1), wobble=0.2) & brain
        s.add("peritumoral edema", edema, tissue["edema"], parent="brain", texture=0.05)
        tumor = s.blob(tx, ty, r, r * _u(rng, 0.8, 1.1), wobble=0.1) & brain
        s.add("brain tumor", tumor, tissue["lesion"], parent="brain", texture=0.12)
        meta["finding"] = "tumor"
    elif finding < 0.6:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        angle = np.arctan2(yy - cy, (xx - cx) * hemi)
        centre_angle = _u(rng, -0.9, 0.9)
        sector = np.abs(angle - centre_angle) < _u(rng, 0.25, 0.45)
        radial = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 > _u(rng, 0.3, 0.45)
        infarct = sector & radial & brain & ~s.blob(cx, cy, w * 0.12, h * 0.2)
        s.add(
            "ischemic stroke lesion",
            infarct,
            tissue["lesion"] * (0.35 if weighting == "T1" else 1.0)
            + (0.1 if weighting == "T1" else 0.0),
            parent="brain",
            texture=0.05,
        )
        meta["finding"] = "infarct"
    elif finding < 0.8 and weighting != "T1":
        spots = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(3, 7))):
            side = -1 if rng.random() < 0.5 else 1
            sx_ = cx + side * w * _u(rng, 0.09, 0.16)
            sy_ = cy + h * _u(rng, -0.18, 0.18)
            spots |= s.blob(
                sx_, sy_, _u(rng, 2.0, 4.0), _u(rng, 3.0, 6.0), angle=_u(rng, -0.5, 0.5)
            )
        s.add("multiple sclerosis lesion", spots & brain, tissue["lesion"], parent="brain")
        meta["finding"] = "ms"
    image = _blur(s.render(0.0), _u(rng, 0.5, 0.9))
    sigma = _u(rng, 0.015, 0.035)
    image = np.sqrt(
        (image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2
    )
    image = image * _u(rng, 0.85, 1.1)
    return Phantom(
        "brain_mri", "MRI", "radiological", _to_uint8_rgb(np.clip(image, 0, 1)), s.masks(), meta
    )


# ---------------------------------------------------------------------- fundus
def fundus(rng: np.random.Generator) -> Phantom:
    """Colour fundus photograph: optic disc and cup, macula, vessels, diabetic lesions."""
    h = w = 256
    s = Scene(h, w, rng, channels=3)
    cx, cy, fov_r = w / 2, h / 2, w * 0.47
    fov = s.blob(cx, cy, fov_r, fov_r)
    base = np.array([_u(rng, 0.75, 0.9), _u(rng, 0.3, 0.42), _u(rng, 0.1, 0.2)])
    s.add(None, fov, tuple(base), texture=0.06)
    eye = -1 if rng.random() < 0.5 else 1  # which side the optic disc is on
    dx_, dy_ = cx + eye * w * _u(rng, 0.2, 0.25), cy + _u(rng, -10, 10)
    disc_r = w * _u(rng, 0.06, 0.075)
    mx, my = dx_ - eye * w * _u(rng, 0.26, 0.3), cy + _u(rng, 0, 8)
    macula_r = w * _u(rng, 0.06, 0.08)
    s.add(
        "macula",
        s.blob(mx, my, macula_r, macula_r, wobble=0.03),
        tuple(base * _u(rng, 0.55, 0.7)),
        texture=0.03,
    )
    s.add(None, s.blob(mx, my, 2.5, 2.5), tuple(base * 0.45), parent="macula")
    s.add(
        "optic disc",
        s.blob(dx_, dy_, disc_r, disc_r * _u(rng, 1.0, 1.15), wobble=0.03),
        (1.0, 0.82, 0.52),
        texture=0.04,
    )
    cup_ratio = _u(rng, 0.3, 0.65)
    s.add(
        "optic cup",
        s.blob(dx_ + eye * 1.5, dy_, disc_r * cup_ratio, disc_r * cup_ratio * 1.1, wobble=0.05),
        (1.0, 0.95, 0.82),
        parent="optic disc",
    )
    lines, radii, arcades = [], [], []
    for vertical in (-1, 1):
        for k in range(2):  # temporal arcades: artery and vein
            t = np.linspace(0, 1, 30)
            span = abs(mx - dx_) * _u(rng, 1.3, 1.7)
            xs = dx_ - eye * span * t
            # Rise around the macula, then fan out temporally without closing back in.
            lift = vertical * h * _u(rng, 0.15, 0.2) * np.sin(np.pi * 0.72 * t)
            ys = dy_ + lift + vertical * k * 4
            arcades.append(np.stack([xs, ys], axis=1))
            lines.append(arcades[-1])
            radii.append(np.linspace(3.2 if k else 2.6, 1.0, 30))
        for _ in range(2):  # nasal branches
            t = np.linspace(0, 1, 15)
            ang = _u(rng, -1.2, 1.2) + (0 if eye > 0 else math.pi)
            xs = dx_ + np.cos(ang) * w * 0.35 * t
            ys = dy_ + np.sin(ang) * w * 0.35 * t + vertical * 15 * t**2
            lines.append(np.stack([xs, ys], axis=1))
            radii.append(np.linspace(2.2, 0.8, 15))
    for _ in range(int(rng.integers(4, 8))):  # small branches off the arcades
        parent_line = arcades[int(rng.integers(len(arcades)))]
        start = parent_line[int(rng.integers(8, 24))]
        ang = _u(rng, 0, 2 * math.pi)
        t = np.linspace(0, 1, 10)
        xs = start[0] + np.cos(ang) * w * _u(rng, 0.08, 0.16) * t
        ys = start[1] + np.sin(ang) * w * _u(rng, 0.08, 0.16) * t
        lines.append(np.stack([xs, ys], axis=1))
        radii.append(np.linspace(1.4, 0.7, 10))
    vessels = s.tube(lines, radii) & fov
    s.add("retinal vessels", vessels, tuple(-base * np.array([0.35, 0.55, 0.4])), mode="add")
    meta: dict[str, object] = {"eye_disc_side": "right" if eye > 0 else "left"}
    if rng.random() < 0.55:
        exudates = np.zeros((h, w), dtype=bool)
        ex_c = (mx + _u(rng, -25, 25), my + _u(rng, -25, 25))
        for _ in range(int(rng.integers(6, 18))):
            exudates |= s.blob(
                ex_c[0] + rng.normal(0, 12),
                ex_c[1] + rng.normal(0, 12),
                _u(rng, 1.2, 3.0),
                _u(rng, 1.2, 3.0),
                wobble=0.1,
            )
        s.add("hard exudate", exudates & fov & ~vessels, (0.95, 0.85, 0.35))
        hem = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(2, 6))):
            p = s.point_in(fov & ~s.visible("optic disc"), margin=20)
            if p:
                hem |= s.blob(p[0], p[1], _u(rng, 3, 7), _u(rng, 3, 7), wobble=0.15)
        s.add("retinal hemorrhage", hem & fov, tuple(base * np.array([0.55, 0.2, 0.3])))
        if rng.random() < 0.4:
            p = s.point_in(fov & ~s.visible("macula"), margin=30)
            if p:
                s.add(
                    "cotton wool spot",
                    s.blob(p[0], p[1], _u(rng, 5, 9), _u(rng, 4, 7), wobble=0.2),
                    (0.92, 0.82, 0.7),
                    texture=0.1,
                )
        meta["retinopathy"] = True
    image = s.render((0.0, 0.0, 0.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    vignette = 1.0 - 0.35 * (((xx - cx) ** 2 + (yy - cy) ** 2) / fov_r**2)
    image = _blur(image * vignette[..., None], 0.7)
    image = image + rng.normal(0, 0.012, image.shape).astype(np.float32)
    image[~fov] = 0.0
    return Phantom("fundus", "fundus", None, _to_uint8_rgb(np.clip(image, 0, 1)), s.masks(), meta)


# ---------------------------------------------------------------------- thyroid ultrasound
def _speckle(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    speckle = rng.rayleigh(1.0, image.shape).astype(np.float32) / 1.2533
    speckle = ndimage.gaussian_filter(speckle, (1.2, 0.6))
    return image * (1 + strength * (speckle / speckle.mean() - 1))


def thyroid_ultrasound(rng: np.random.Generator) -> Phantom:
    """Transverse neck ultrasound through the thyroid (patient's right on the image's left)."""
    h, w = _size(rng, 224, 320)
    s = Scene(h, w, rng)
    cx = w / 2 + _u(rng, -8, 8)
    yy = np.arange(h)[:, None] + 0.5
    full = np.ones((h, w), dtype=bool)
    s.add(None, full & (yy < h * 0.035), 0.85)
    s.add(None, full & (yy >= h * 0.035) & (yy < h * 0.16), 0.42, texture=0.2)
    s.add(None, full & (yy >= h * 0.16) & (yy < h * 0.21), 0.28, texture=0.2)  # strap muscles
    s.add(None, full & (yy > h * 0.64) & (yy < h * 0.82), 0.22, texture=0.3)  # longus colli
    s.add(None, full & (yy >= h * 0.82) & (yy < h * 0.85), 0.75)  # vertebral surface
    s.add(None, full & (yy >= h * 0.85), 0.04)  # its acoustic shadow
    lobe_y = h * _u(rng, 0.38, 0.43)
    gland_value = _u(rng, 0.58, 0.7)
    for sx in (-1, 1):
        lobe = s.blob(
            cx + sx * w * 0.17,
            lobe_y,
            w * _u(rng, 0.11, 0.14),
            h * _u(rng, 0.13, 0.16),
            angle=-sx * 0.2,
            wobble=0.05,
        )
        s.add("thyroid gland", lobe, gland_value, texture=0.05)
    isthmus = s.blob(cx, h * 0.265, w * 0.11, h * 0.035, wobble=0.05)
    s.add("thyroid gland", isthmus, gland_value, texture=0.05)
    tr_r = w * 0.065
    tr_y = h * 0.4
    trachea = s.blob(cx, tr_y, tr_r, tr_r * 0.9)
    s.add("trachea", trachea, 0.12)
    arc = trachea & ~ndimage.binary_erosion(trachea, iterations=3) & (yy < tr_y)
    s.add(None, arc, 0.9, parent="trachea")
    xs = np.arange(w)[None, :] + 0.5
    shadow = (np.abs(xs - cx) < tr_r * 0.8) & (yy > tr_y + tr_r * 0.9)
    s.add(None, shadow, 0.06)
    s.add(
        "esophagus",
        s.blob(cx + w * 0.1, h * 0.58, w * 0.035, h * 0.04, wobble=0.05),
        0.35,
        texture=0.15,
    )
    for side, sx in (("right", -1), ("left", 1)):
        ax = cx + sx * w * _u(rng, 0.34, 0.37)
        r = w * _u(rng, 0.04, 0.05)
        s.add(None, s.blob(ax, h * 0.47, r + 2, r + 2), 0.8)
        s.add(f"{side} common carotid artery", s.blob(ax, h * 0.47, r, r), 0.03)
        s.add(
            f"{side} internal jugular vein",
            s.blob(ax + sx * w * 0.06, h * 0.33, w * 0.05, h * 0.03, wobble=0.1),
            0.05,
        )
    if rng.random() < 0.6:
        lobe_side = -1 if rng.random() < 0.5 else 1
        gland = s.visible("thyroid gland") & ((xs - cx) * lobe_side > w * 0.08)
        p = s.point_in(gland, margin=8)
        if p:
            r = _u(rng, 6, 12)
            s.add(
                "thyroid nodule",
                s.blob(p[0], p[1], r * 1.2, r, wobble=0.08),
                _u(rng, 0.22, 0.35),
                parent="thyroid gland",
                texture=0.15,
            )
    depth_gain = 1.0 - 0.35 * (yy / h)
    image = s.render(0.3) * depth_gain
    image = _speckle(rng, image, 0.55)
    image = _blur(image, 0.6)
    return Phantom(
        "thyroid_ultrasound",
        "ultrasound",
        "radiological",
        _to_uint8_rgb(np.clip(image, 0, 1)),
        s.masks(),
        {"view": "transverse"},
    )


# ---------------------------------------------------------------------- echocardiography
def echocardiography(rng: np.random.Generator) -> Phantom:
    """Apical four-chamber echocardiogram: ventricles, atria, left ventricular myocardium."""
    h, w = _size(rng, 240, 288)
    s = Scene(h, w, rng)
    apex_x, apex_y = w / 2, 2.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    radius = np.hypot(xx - apex_x, yy - apex_y)
    half = _u(rng, 0.6, 0.7)
    sector = (np.abs(angle) < half) & (radius < h * 0.97)
    s.add(None, sector, 0.32, texture=0.25)
    tilt = _u(rng, -0.08, 0.08)
    lv_c = (w * 0.57, h * 0.40)
    lv_outer = s.blob(
        lv_c[0],
        lv_c[1],
        w * _u(rng, 0.12, 0.14),
        h * _u(rng, 0.27, 0.3),
        angle=0.2 + tilt,
        wobble=0.03,
    )
    lv_inner = s.blob(
        lv_c[0] - 2,
        lv_c[1] + 4,
        w * _u(rng, 0.075, 0.09),
        h * _u(rng, 0.21, 0.24),
        angle=0.2 + tilt,
        wobble=0.04,
    )
    rv = s.blob(
        w * 0.39,
        h * 0.44,
        w * _u(rng, 0.065, 0.085),
        h * _u(rng, 0.17, 0.21),
        angle=-0.2 + tilt,
        wobble=0.06,
    )
    la = s.blob(w * 0.58, h * 0.79, w * _u(rng, 0.075, 0.095), h * _u(rng, 0.09, 0.11), wobble=0.06)
    ra = s.blob(w * 0.39, h * 0.78, w * _u(rng, 0.065, 0.08), h * _u(rng, 0.08, 0.1), wobble=0.06)
    s.add(None, ndimage.binary_dilation(rv, iterations=4) & sector & ~lv_outer, 0.5, texture=0.2)
    lv_inner &= ndimage.binary_erosion(lv_outer, iterations=3)
    s.add("myocardium", lv_outer & ~lv_inner & sector, 0.55, texture=0.2)
    s.add("left ventricle", lv_inner & sector, 0.04, texture=0.3)
    s.add("right ventricle", rv & sector & ~lv_outer, 0.04, texture=0.3)
    s.add(
        None,
        ndimage.binary_dilation(la | ra, iterations=4) & sector & ~(lv_outer | rv),
        0.5,
        texture=0.2,
    )
    s.add("left atrium", la & sector & ~lv_outer, 0.05, texture=0.3)
    s.add("right atrium", ra & sector & ~(rv | lv_outer), 0.05, texture=0.3)
    image = s.render(0.0)
    image = _speckle(rng, image, 0.7)
    image = _blur(image, 0.8) * sector
    return Phantom(
        "echocardiography",
        "ultrasound",
        None,
        _to_uint8_rgb(np.clip(image, 0, 1)),
        s.masks(),
        {"view": "apical four-chamber"},
    )


# ---------------------------------------------------------------------- dermoscopy
def dermoscopy(rng: np.random.Generator) -> Phantom:
    """Dermoscopic photograph of one pigmented skin lesion, with hairs and vignetting."""
    h, w = _size(rng, 224, 288)
    s = Scene(h, w, rng, channels=3)
    tone = _u(rng, 0.7, 1.0)
    skin = np.array([0.92, 0.74, 0.62]) * tone
    s.add(None, np.ones((h, w), dtype=bool), tuple(skin), texture=0.04)
    cx, cy = w / 2 + _u(rng, -30, 30), h / 2 + _u(rng, -20, 20)
    r = min(h, w) * _u(rng, 0.18, 0.32)
    irregular = rng.random() < 0.5
    lesion = s.blob(
        cx, cy, r, r * _u(rng, 0.7, 1.0), angle=_u(rng, 0, 3.1), wobble=0.22 if irregular else 0.07
    )
    brown = np.array([0.48, 0.3, 0.2]) * _u(rng, 0.6, 1.1)
    s.add("skin lesion", lesion, tuple(brown), texture=0.25 if irregular else 0.12)
    core = s.blob(cx + _u(rng, -8, 8), cy + _u(rng, -8, 8), r * 0.45, r * 0.4, wobble=0.2)
    s.add(None, core, tuple(brown * 0.6), parent="skin lesion", texture=0.2)
    if irregular and rng.random() < 0.6:
        p = s.point_in(lesion, margin=6)
        if p:
            s.add(
                None,
                s.blob(p[0], p[1], r * 0.3, r * 0.25, wobble=0.3),
                (0.42, 0.45, 0.55),
                parent="skin lesion",
            )
    hairs, radii = [], []
    for _ in range(int(rng.integers(0, 6))):
        x0, y0 = _u(rng, 0, w), _u(rng, 0, h)
        ang = _u(rng, 0, 2 * math.pi)
        t = np.linspace(0, 1, 20)
        length = _u(rng, 60, 200)
        xs = x0 + np.cos(ang) * length * t
        ys = y0 + np.sin(ang) * length * t + _u(rng, -20, 20) * t**2
        hairs.append(np.stack([xs, ys], axis=1))
        radii.append(np.full(20, _u(rng, 0.6, 1.2)))
    if hairs:
        s.add(None, s.tube(hairs, radii), (-0.6, -0.5, -0.42), mode="add")
    image = s.render(tuple(skin))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    vignette = np.clip(1.15 - 0.6 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2.2, 0, 1)
    image = _blur(image * vignette[..., None], 0.8) + rng.normal(0, 0.01, (h, w, 3)).astype(
        np.float32
    )
    return Phantom(
        "dermoscopy",
        "dermoscopy",
        None,
        _to_uint8_rgb(np.clip(image, 0, 1)),
        s.masks(),
        {"irregular": irregular},
    )


# ---------------------------------------------------------------------- colonoscopy
def colonoscopy(rng: np.random.Generator) -> Phantom:
    """Colonoscopy frame with a dark lumen, haustral folds and one polyp."""
    h = w = 256
    s = Scene(h, w, rng, channels=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    fov = (
        (np.abs(xx - w / 2) + np.abs(yy - h / 2) < w * 0.68)
        & (np.abs(xx - w / 2) < w * 0.49)
        & (np.abs(yy - h / 2) < h * 0.49)
    )
    mucosa = np.array([0.86, 0.48, 0.42]) * _u(rng, 0.85, 1.05)
    s.add(None, fov, tuple(mucosa), texture=0.08)
    lx, ly = w / 2 + _u(rng, -50, 50), h / 2 + _u(rng, -50, 50)
    for k in range(4, 0, -1):
        fold = s.blob(lx, ly, w * 0.1 * k, h * 0.09 * k, angle=_u(rng, 0, 3), wobble=0.08)
        ring = fold & ~s.blob(lx, ly, w * 0.1 * k - 4, h * 0.09 * k - 4, wobble=0.08)
        s.add(None, ring & fov, 0.08, mode="add")
    s.add(
        None,
        s.blob(lx, ly, w * _u(rng, 0.06, 0.1), h * _u(rng, 0.06, 0.1), wobble=0.15),
        (0.12, 0.04, 0.04),
    )
    away = fov & (np.hypot(xx - lx, yy - ly) > w * 0.22)
    p = s.point_in(away, margin=40) or (w / 2, h / 2)
    r = w * _u(rng, 0.08, 0.16)
    polyp = s.blob(p[0], p[1], r, r * _u(rng, 0.75, 1.0), angle=_u(rng, 0, 3), wobble=0.08) & fov
    red = np.array([0.9, 0.36, 0.3]) * _u(rng, 0.85, 1.05)
    s.add("polyp", polyp, tuple(red), texture=0.12)
    s.add(
        None,
        s.blob(p[0] - r * 0.3, p[1] - r * 0.3, r * 0.6, r * 0.5),
        0.1,
        mode="add",
        parent="polyp",
    )
    for _ in range(int(rng.integers(1, 4))):
        q = s.point_in(polyp, margin=3)
        if q:
            s.add(
                None,
                s.blob(q[0], q[1], _u(rng, 1, 2.5), _u(rng, 1, 2.5)),
                (1.0, 1.0, 1.0),
                parent="polyp",
            )
    image = s.render((0.0, 0.0, 0.0))
    light = np.clip(1.1 - 0.5 * np.hypot(xx - w / 2, yy - h / 2) / w * 1.6, 0.3, 1)
    image = _blur(image * light[..., None], 0.9) + rng.normal(0, 0.012, (h, w, 3)).astype(
        np.float32
    )
    image[~fov] = 0.0
    return Phantom(
        "colonoscopy", "endoscopy", None, _to_uint8_rgb(np.clip(image, 0, 1)), s.masks(), {}
    )


# ---------------------------------------------------------------------- mammography
def mammography(rng: np.random.Generator) -> Phantom:
    """Mediolateral oblique mammogram: breast, pectoral muscle, optional mass."""
    h, w = _size(rng, 288, 224)
    s = Scene(h, w, rng)
    wall_right = rng.random() < 0.5
    edge = float(w) if wall_right else 0.0
    sign = -1 if wall_right else 1
    breast = s.blob(
        edge, h * _u(rng, 0.48, 0.55), w * _u(rng, 0.7, 0.85), h * _u(rng, 0.42, 0.47), wobble=0.03
    )
    s.add("breast", breast, 0.35, texture=0.1)
    fields = s._texture_fields()
    dense = (
        breast & (fields[2] > _u(rng, -0.2, 0.6)) & ~(ndimage.distance_transform_edt(breast) < 12)
    )
    s.add(None, dense, 0.55, parent="breast", texture=0.15)
    top = h * _u(rng, 0.35, 0.5)
    muscle = s.polygon([edge, edge + sign * w * _u(rng, 0.3, 0.42), edge], [0, 0, top])
    s.add("pectoral muscle", muscle, 0.72, texture=0.05)
    if rng.random() < 0.6:
        region = s.visible("breast")
        p = s.point_in(region, margin=18)
        if p:
            r = _u(rng, 8, 16)
            mass = s.blob(
                p[0], p[1], r, r * _u(rng, 0.8, 1.1), wobble=0.12, harmonics=(2, 3, 9, 13, 17)
            )
            s.add("breast mass", mass, 0.82, parent="breast", texture=0.05)
    image = _blur(s.render(0.03), 0.9)
    image = image + rng.normal(0, 0.015, image.shape).astype(np.float32)
    return Phantom(
        "mammography",
        "mammography",
        None,
        _to_uint8_rgb(np.clip(image, 0, 1)),
        s.masks(),
        {"chest_wall": "right" if wall_right else "left"},
    )


#: Phantom kinds by name, in the order the bundled builder cycles through them.
GENERATORS: dict[str, Callable[[np.random.Generator], Phantom]] = {
    "chest_ct": chest_ct,
    "abdominal_ct": abdominal_ct,
    "pelvic_ct": pelvic_ct,
    "chest_xray": chest_xray,
    "brain_mri": brain_mri,
    "fundus": fundus,
    "thyroid_ultrasound": thyroid_ultrasound,
    "echocardiography": echocardiography,
    "dermoscopy": dermoscopy,
    "colonoscopy": colonoscopy,
    "mammography": mammography,
}


def generate(kind: str, seed: int | Sequence[int]) -> Phantom:
    """One phantom of ``kind`` (a key of :data:`GENERATORS`) from ``seed``."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown phantom kind {kind!r}; kinds: {', '.join(GENERATORS)}")
    rng = np.random.default_rng(seed)
    phantom = GENERATORS[kind](rng)
    if phantom.image.dtype != np.uint8:
        raise AssertionError(f"{kind} produced {phantom.image.dtype}")
    return phantom
