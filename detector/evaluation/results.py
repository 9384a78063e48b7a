"""What one evaluation produced: metrics plus the per-image data the HTML report draws."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from linewatch.common.images import ImageRecord


@dataclass
class Evaluation:
    """Everything the HTML report draws; ``metrics`` is what ``metrics.json`` holds."""

    metrics: dict[str, Any]
    records: list[ImageRecord]
    image_scores: np.ndarray
    labels: np.ndarray  # True = defective image
    maps: np.ndarray  # (N, S, S) model-size maps (a tiled model: part maps, see inference.Prediction.maps)
    shapes: list[tuple[int, int]]
    image_threshold: float
    resize_mode: str
    to_image: Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # (S, S) map -> (H, W) image coordinates
    image_roc: tuple[np.ndarray, np.ndarray]
    pixel_roc: tuple[np.ndarray, np.ndarray]
    pro_curve: tuple[np.ndarray, np.ndarray]
