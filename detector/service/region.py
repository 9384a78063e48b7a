"""Defect region summary: the anomaly map thresholded at the model's pixel threshold."""

from __future__ import annotations

import numpy as np

from linewatch.detector.events import DefectRegion


def summarise_region(anomaly_map: np.ndarray, pixel_threshold: float, image_size: tuple[int, int]) -> DefectRegion:
    """Area fraction, bounding box and peak of ``anomaly_map`` (S_h, S_w) in image pixels.

    Args:
        anomaly_map: the model's map at its own resolution.
        pixel_threshold: map values >= this are defective.
        image_size: (width, height) of the original frame; coordinates are scaled to it.
    """
    if anomaly_map.ndim != 2 or anomaly_map.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {anomaly_map.shape}")
    map_h, map_w = anomaly_map.shape
    width, height = image_size
    sx, sy = width / map_w, height / map_h
    mask = anomaly_map >= pixel_threshold
    area = float(mask.mean())
    bbox: tuple[int, int, int, int] | None = None
    if mask.any():
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        bbox = (int(np.floor(cols[0] * sx)), int(np.floor(rows[0] * sy)),
                min(width, int(np.ceil((cols[-1] + 1) * sx))), min(height, int(np.ceil((rows[-1] + 1) * sy))))
    peak_row, peak_col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    peak_xy = (min(width - 1, int((peak_col + 0.5) * sx)), min(height - 1, int((peak_row + 0.5) * sy)))
    return DefectRegion(area_fraction=area, bbox=bbox, peak_xy=peak_xy,
                        peak_value=float(anomaly_map[peak_row, peak_col]))
