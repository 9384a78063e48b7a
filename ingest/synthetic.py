"""Synthetic production line: textured parts with drawn defects and their masks.

Used for load tests of any size (the ``synthetic`` camera source) and for fast model
unit tests that must not need real data. Every sample is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "blob", "crack")


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered part: RGB image, defect mask (0/255) and the truth."""

    image: np.ndarray
    mask: np.ndarray
    label: str
    defect_type: str | None


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A brushed-metal-like texture: low-frequency shading, fine grain, faint stripes."""
    coarse = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.0)
    stripes = np.sin(np.linspace(0, 24 * np.pi, size, dtype=np.float32))[None, :] * np.ones((size, 1), np.float32)
    return 128 + 10 * coarse + 6 * grain + 3 * stripes


def _draw_defect(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, kind: str) -> None:
    size = image.shape[0]
    margin = size // 6
    x0, y0 = (int(v) for v in rng.integers(margin, size - margin, 2))
    shade = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(45, 80))
    layer = np.zeros_like(mask)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.2, 0.45) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        cv2.line(layer, (int(x0 - dx), int(y0 - dy)), (int(x0 + dx), int(y0 + dy)), 255,
                 max(2, size // 100))
    elif kind == "blob":
        axes = (int(rng.uniform(0.03, 0.08) * size), int(rng.uniform(0.03, 0.08) * size))
        cv2.ellipse(layer, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    else:  # crack: a jagged random walk
        points = [(x0, y0)]
        direction = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(6, 12))):
            direction += rng.normal(0, 0.6)
            step = rng.uniform(0.02, 0.05) * size
            x, y = points[-1]
            points.append((int(np.clip(x + np.cos(direction) * step, 0, size - 1)),
                           int(np.clip(y + np.sin(direction) * step, 0, size - 1))))
        cv2.polylines(layer, [np.array(points, np.int32)], False, 255, max(2, size // 128))
    image[layer > 0] += shade
    mask[layer > 0] = 255


def render_sample(seed: int, size: int = 256, defect_probability: float = 0.5,
                  defect_type: str | None = None) -> SyntheticSample:
    """Render one part. ``defect_type`` forces a defect of that kind; else one is drawn at random."""
    rng = np.random.default_rng(seed)
    canvas = _texture(rng, size)
    mask = np.zeros((size, size), np.uint8)
    kind = defect_type
    if kind is None and rng.random() < defect_probability:
        kind = str(rng.choice(DEFECT_TYPES))
    if kind is not None:
        if kind not in DEFECT_TYPES:
            raise ValueError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")
        _draw_defect(rng, canvas, mask, kind)
    gray = np.clip(canvas, 0, 255).astype(np.uint8)
    tint = np.array([1.0, 0.97, 0.92], np.float32)
    image = np.clip(gray[:, :, None].astype(np.float32) * tint, 0, 255).astype(np.uint8)
    return SyntheticSample(image=image, mask=mask, label="defect" if kind else "good", defect_type=kind)
