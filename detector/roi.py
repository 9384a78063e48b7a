"""Regions of interest and ignore masks per camera: polygons -> which anomaly-map cells count.

A camera's :class:`RoiConfig` lists polygons to ``include`` (none = the whole frame) and to
``exclude`` (fixtures, conveyor edges, labels), in normalised (0..1) or pixel coordinates of the
camera image. :func:`cell_mask` turns them into a 0/1 mask over the model's (S, S) anomaly map, through
the same squash/letterbox geometry as the model input; a cell counts when at least ``min_cover`` of
it lies inside the region. Anomaly maps are non-negative, so multiplying a map by the mask removes the
masked cells from the image score (max or top-k), from the breach region and from the heatmap.

The hook in the model output path (``CalibratedSTFPM.head``, before ``image_scores``) is one line::

    maps = maps if masks is None else maps * masks.to(maps)   # masks: (N, S, S) from cell_mask
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from linewatch.detector.geometry import letterbox_box

Point = tuple[float, float]


class RoiError(ValueError):
    """A region configuration that cannot describe a region (the message says which polygon and why)."""


class RoiConfig(BaseModel):
    """One camera's regions: polygons of (x, y) points."""

    units: Literal["normalised", "pixels"] = "normalised"
    include: list[list[Point]] = Field(default_factory=list, description="Regions that count; none = all.")
    exclude: list[list[Point]] = Field(default_factory=list, description="Ignore masks, applied after include.")
    min_cover: float = Field(default=0.5, gt=0.0, le=1.0, description="Share of a map cell inside that counts it.")

    @model_validator(mode="after")
    def _valid_polygons(self) -> RoiConfig:
        for kind, polygons in (("include", self.include), ("exclude", self.exclude)):
            for i, polygon in enumerate(polygons):
                if len(polygon) < 3:
                    raise RoiError(f"{kind}[{i}] has {len(polygon)} points; a polygon needs at least 3")
                if self.units == "normalised" and any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in polygon):
                    raise RoiError(f"{kind}[{i}] has points outside 0..1 (units are normalised)")
                if self.units == "pixels" and any(x < 0 or y < 0 for x, y in polygon):
                    raise RoiError(f"{kind}[{i}] has negative pixel coordinates")
        return self

    @property
    def is_whole_frame(self) -> bool:
        """Whether the regions change nothing."""
        return not self.include and not self.exclude


def pixel_polygons(polygons: list[list[Point]], units: str, height: int, width: int) -> list[np.ndarray]:
    """Polygons in image pixel coordinates (int32 arrays for drawing, e.g. over the operator heatmap)."""
    scale = np.array([width, height], np.float64) if units == "normalised" else np.ones(2)
    return [np.round(np.asarray(p, np.float64) * scale).astype(np.int32) for p in polygons]


def image_mask(roi: RoiConfig, height: int, width: int) -> np.ndarray:
    """(H, W) bool: True where the image counts."""
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
