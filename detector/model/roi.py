"""Regions of interest and ignore masks per camera: polygons -> which anomaly-map cells count.

A camera's :class:`~linewatch.ingest.regions.RoiConfig` (its camera config's ``roi``) lists polygons to
``include`` (none = the whole frame) and to ``exclude`` (fixtures, conveyor edges, labels).
:func:`cell_mask` turns them into a 0/1 mask over the model's (S, S) anomaly map, through the same
squash/letterbox geometry as the model input; a cell counts when at least ``min_cover`` of it lies
inside the region. Anomaly maps are non-negative, so multiplying a map by the mask removes the masked
cells from the image score (max or top-k), from the verdict, the breach region and the heatmap. That
product is taken in one place, ``CalibratedSTFPM.head``, which every backend runs (the exported graphs
take the masks as an input); :class:`CameraMasks` gives each frame its camera's mask.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from linewatch.detector.model.geometry import letterbox_box
from linewatch.ingest.regions import Point, RoiConfig, RoiError

__all__ = ["CameraMasks", "RoiConfig", "RoiError", "apply_cell_mask", "cell_mask", "image_mask", "masked_score",
           "pixel_polygons"]


def pixel_polygons(polygons: list[list[Point]], units: str, height: int, width: int) -> list[np.ndarray]:
    """Polygons in image pixel coordinates (int32 arrays for drawing, e.g. over the operator heatmap)."""
    scale = np.array([width, height], np.float64) if units == "normalised" else np.ones(2)
    return [np.round(np.asarray(p, np.float64) * scale).astype(np.int32) for p in polygons]


def image_mask(roi: RoiConfig, height: int, width: int) -> np.ndarray:
    """(H, W) bool: True where the image counts."""
    roi = roi.normalised()  # pixel regions scale with the frame they are applied to
    if not roi.include:
        mask = np.ones((height, width), np.uint8)
    else:
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, pixel_polygons(roi.include, roi.units, height, width), 1)
    if roi.exclude:
        cv2.fillPoly(mask, pixel_polygons(roi.exclude, roi.units, height, width), 0)
    return mask.astype(bool)


def cell_mask(roi: RoiConfig, image_hw: tuple[int, int], map_size: int, resize_mode: str = "squash") -> np.ndarray:
    """(S, S) float32 of 0/1: which cells of the model's anomaly map count for an (H, W) camera image."""
    height, width = int(image_hw[0]), int(image_hw[1])
    if roi.is_whole_frame:
        return np.ones((map_size, map_size), np.float32)
    cover = image_mask(roi, height, width).astype(np.float32)
    if resize_mode == "letterbox" and height != width:
        top, left, inner_h, inner_w = letterbox_box(height, width, map_size)
        square = np.zeros((map_size, map_size), np.float32)  # padding is not the image: it never counts
        square[top:top + inner_h, left:left + inner_w] = _area_resize(cover, inner_h, inner_w)
    else:
        square = _area_resize(cover, map_size, map_size)
    return (square >= roi.min_cover - 1e-6).astype(np.float32)


def _area_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Share of each target cell that is covered (area average)."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA), np.float32)


def apply_cell_mask(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Anomaly map(s) (S, S) or (N, S, S) with the cells outside the region set to 0."""
    return np.asarray(maps, np.float32) * mask


def masked_score(anomaly_map: np.ndarray, mask: np.ndarray, top_k: int = 1) -> float:
    """Image score of one map over the counted cells: the mean of the ``top_k`` largest (1: the maximum)."""
    values = np.sort(apply_cell_mask(anomaly_map, mask).ravel())[::-1]
    return float(values[:max(1, top_k)].mean())


class CameraMasks:
    """Each camera's cell mask, built once per (camera, frame size, model geometry) and then reused.

    Cameras without regions get no mask, and a batch in which no camera has one gets ``None``: the
    model then runs its unmasked path.
    """

    MAX_ENTRIES = 4096  # a camera whose frame size keeps changing cannot grow the cache without bound

    def __init__(self, regions: Mapping[str, RoiConfig]) -> None:
        self.regions = {camera: roi for camera, roi in regions.items() if not roi.is_whole_frame}
        self._cache: dict[tuple[str, int, int, int, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def mask(self, camera: str, image_hw: tuple[int, int], map_size: int, resize_mode: str) -> np.ndarray | None:
        """(S, S) 0/1 mask of one frame of ``camera``; None when the camera has no regions."""
        roi = self.regions.get(camera)
        if roi is None:
            return None
        key = (camera, int(image_hw[0]), int(image_hw[1]), map_size, resize_mode)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = cell_mask(roi, image_hw, map_size, resize_mode)
            found.setflags(write=False)  # shared by every later frame of this camera and size
            with self._lock:
                if len(self._cache) >= self.MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key] = found
        return found

    def batch(self, frames: Sequence[tuple[str, tuple[int, int]]], map_size: int,
              resize_mode: str) -> np.ndarray | None:
        """(N, S, S) masks of (camera, (H, W)) frames; None when none of their cameras has regions."""
        masks = [self.mask(camera, hw, map_size, resize_mode) for camera, hw in frames]
        if all(m is None for m in masks):
            return None
        ones = np.ones((map_size, map_size), np.float32)
        return np.stack([ones if m is None else m for m in masks])
