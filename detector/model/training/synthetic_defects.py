"""Synthetic defects drawn on good images: how a recipe is chosen when a plant has no labelled defects.

Each defect is drawn at the image's own resolution, before any model resizes it, so a recipe that shrinks
a long part loses a thin scratch the way it would lose a real crack. Four kinds, each seeded:

- ``scratch``: a thin polyline, 1 to 3 pixels wide, a little darker or brighter than the surface (cracks,
  scratches, fibres);
- ``blotch``: a large, soft-edged, low-contrast region, 15 to 40% of the short side (stains, uneven
  surfaces, the large low-contrast defects that fine maps miss);
- ``patch``: a rectangle cut from another good image and pasted elsewhere (CutPaste, Li et al., CVPR 2021):
  a region that is locally plausible but out of place;
- ``noise_blend``: a region shaped by thresholded smooth noise, blended with texture from elsewhere in
  another good image (as DRAEM's Perlin-noise anomalies, Zavrtanik et al., ICCV 2021).

Contrast is stated in units of the image's own grey-level spread, so the same defect is as subtle on a
dark tile as on a bright web. The mask marks the pixels the defect changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("scratch", "blotch", "patch", "noise_blend")


@dataclass(frozen=True)
class SyntheticDefect:
    """One good image with a drawn defect, its mask (bool, image size) and what was drawn."""

    image: np.ndarray
    mask: np.ndarray
    kind: str


def make_defects(goods: Sequence[np.ndarray], per_image: int = 1, seed: int = 0,
                 kinds: Sequence[str] = KINDS) -> list[SyntheticDefect]:
    """``per_image`` defects on each good RGB uint8 image, the kinds taken in turn; the same seed gives the same
    defects. ``patch`` and ``noise_blend`` take their texture from another image of ``goods`` (itself if alone)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown defect kinds {unknown}; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(goods):
        for j in range(per_image):
            kind = kinds[(i * per_image + j) % len(kinds)]
            donor = goods[(i + 1 + int(rng.integers(max(len(goods) - 1, 1)))) % len(goods)]
            out.append(_draw(kind, image, donor, rng))
    return out


def _draw(kind: str, image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> SyntheticDefect:
    h, w = image.shape[:2]
    for _ in range(8):  # a draw that changed no pixel (a blend of equal textures) is drawn again
        if kind == "scratch":
            mask, result = _scratch(image, rng)
        elif kind == "blotch":
            mask, result = _blotch(image, rng)
        elif kind == "patch":
            mask, result = _patch(image, cv2.resize(donor, (w, h)), rng)
        else:
            mask, result = _noise_blend(image, cv2.resize(donor, (w, h)), rng)
        changed = mask & (np.abs(result.astype(np.int16) - image.astype(np.int16)).max(axis=2) > 2)
        if changed.any():
            return SyntheticDefect(result, changed, kind)
    return SyntheticDefect(result, changed, kind)


def _spread(image: np.ndarray) -> float:
    """The image's grey-level spread (standard deviation), at least 8 levels so flat images still get a defect."""
    return max(float(image.astype(np.float32).mean(axis=2).std()), 8.0)


def _shift(image: np.ndarray, alpha: np.ndarray, delta: float) -> np.ndarray:
    """``image`` with ``delta`` grey levels added where ``alpha`` (0..1) says."""
    out = image.astype(np.float32) + alpha[..., None] * delta
    return np.clip(out, 0, 255).astype(np.uint8)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    length = rng.uniform(0.15, 0.5) * max(h, w)
    start = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
    angle = rng.uniform(0, np.pi)
    points = [start]
    for _ in range(4):  # a gently bending line
        angle += rng.normal(0, 0.25)
        points.append(points[-1] + length / 4 * np.array([np.cos(angle), np.sin(angle)]))
    line = np.zeros((h, w), np.uint8)
    polyline = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(line, [polyline], False, 255, thickness=int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    alpha = line.astype(np.float32) / 255.0
    return alpha > 0.25, _shift(image, alpha, _sign(rng) * rng.uniform(1.0, 2.5) * _spread(image))


def _blotch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    side = min(h, w)
    axes = (int(rng.uniform(0.15, 0.4) * side / 2) + 1, int(rng.uniform(0.15, 0.4) * side / 2) + 1)
    centre = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
    region = np.zeros((h, w), np.float32)
    cv2.ellipse(region, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(region, (0, 0), sigmaX=max(axes) / 3)  # soft edges: low contrast, no outline
    alpha = soft / max(float(soft.max()), 1e-6)
    return alpha > 0.3, _shift(image, alpha, _sign(rng) * rng.uniform(0.6, 1.2) * _spread(image))


def _patch(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph, pw = max(2, int(rng.uniform(0.05, 0.2) * h)), max(2, int(rng.uniform(0.05, 0.2) * w))
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    piece = donor[sy:sy + ph, sx:sx + pw]
    if rng.random() < 0.5:  # mirrored, so a pasted piece of a regular texture does not fit its new place
        piece = piece[::-1]
    out = image.copy()
    out[ty:ty + ph, tx:tx + pw] = piece
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return mask, out


def _noise_blend(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    noise = _smooth_noise(h, w, rng)
    region = noise > np.quantile(noise, 1.0 - rng.uniform(0.03, 0.12))
    shifted = np.roll(donor, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    opacity = rng.uniform(0.5, 1.0)
    alpha = region.astype(np.float32)[..., None] * opacity
    out = image.astype(np.float32) * (1 - alpha) + shifted.astype(np.float32) * alpha
    return region, np.clip(out, 0, 255).astype(np.uint8)


def _smooth_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Two octaves of value noise (random grids upsampled bicubically): blobs of organic outline."""
    total = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.5)):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        total += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return total
