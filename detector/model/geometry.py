"""Where an image lands in the square model input, and back: the one copy of the letterbox geometry.

``squash`` resizes any (H, W) to (S, S). ``letterbox`` scales the long side to S, keeps the aspect ratio,
centres the picture and pads the rest (with edge pixels, so borders do not look like defects).
The model's pre-processing, its map-to-image mapping and the evaluation all call :func:`letterbox_box`.
"""

from __future__ import annotations

import cv2
import numpy as np

RESIZE_MODES = ("squash", "letterbox")


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, inner height, inner width) of an (H, W) picture letterboxed into an (S, S) square."""
    scale = size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w


def map_to_image(score_map: np.ndarray, shape: tuple[int, int], resize_mode: str = "squash") -> np.ndarray:
    """An (S, S) model-size anomaly map in the coordinates of an (H, W) image (float32)."""
    height, width = int(shape[0]), int(shape[1])
    m = np.asarray(score_map, np.float32)
    if resize_mode == "letterbox" and height != width:
        top, left, inner_h, inner_w = letterbox_box(height, width, int(m.shape[0]))
        m = m[top:top + inner_h, left:left + inner_w]
    if m.shape == (height, width):
        return m
    return cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
