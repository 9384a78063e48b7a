"""How a frame's heatmap is stored in Redis and turned back into an overlay picture.

The detector stores only what is cheap to produce per frame (about 0.5 ms of CPU against about
6-10 ms for a rendered overlay PNG): the low-resolution anomaly map as a 16-bit PNG with its scale,
the frame downscaled and JPEG-encoded, and the map value drawn as full red. Readers (the operator
API, the feedback route, the demo report) render the overlay only when someone looks
(:func:`overlay_from_fields`). Field names are in :mod:`common.cache_keys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from linewatch.common import cache_keys as ck
from linewatch.errors import DataError

FRAME_JPEG_QUALITY = 85  # the overlay is a picture for people; 85 keeps part edges clean at ~6 KB (256 px)
OVERLAY_PNG_COMPRESSION = 1  # fastest zlib level: the PNG is rendered on request and cached briefly


class HeatmapDataError(DataError, ValueError):
    """A stored heatmap hash cannot be turned into an overlay (fields missing or unreadable)."""


def encode_map_png(anomaly_map: np.ndarray, size: int) -> tuple[bytes, float]:
    """16-bit grayscale PNG of the map resized to ``size`` along its long side (a tiled model's map of a long
    part keeps its aspect ratio); value = pixel / 65535 * scale."""
    height, width = anomaly_map.shape[:2]
    shrink = size / max(height, width)
    target = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    small = cv2.resize(anomaly_map.astype(np.float32), target, interpolation=cv2.INTER_AREA)
    scale = float(max(float(small.max()), 1e-12))
    pixels = np.clip(np.rint(small / scale * 65535), 0, 65535).astype(np.uint16)
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("OpenCV could not encode the map PNG")
    return bytes(buf.tobytes()), scale


def decode_map_png(data: bytes, scale: float) -> np.ndarray:
    """The float32 map stored by :func:`encode_map_png`."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise HeatmapDataError("the stored map is not a 16-bit grayscale PNG")
    return pixels.astype(np.float32) * np.float32(scale / 65535)


def encode_frame_jpeg(image_rgb: np.ndarray) -> bytes:
    """JPEG of an RGB uint8 frame (already downscaled by the caller)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode the frame JPEG")
    return bytes(buf.tobytes())


def render_overlay_png(frame_bgr: np.ndarray, anomaly_map: np.ndarray, colour_scale: float) -> bytes:
    """PNG of the frame with the map in JET colours blended on top (map / colour_scale clipped to [0, 1])."""
    size = (frame_bgr.shape[1], frame_bgr.shape[0])
    heat = cv2.resize(anomaly_map.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.clip(heat / max(colour_scale, 1e-12) * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(frame_bgr, 0.6, colour, 0.4, 0)
    ok, buf = cv2.imencode(".png", blended, [cv2.IMWRITE_PNG_COMPRESSION, OVERLAY_PNG_COMPRESSION])
    if not ok:
        raise ValueError("OpenCV could not encode the overlay PNG")
    return bytes(buf.tobytes())


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    """A hash field whether the client decodes responses or not."""
    value = fields.get(name)
    return fields.get(name.encode()) if value is None else value


def overlay_from_fields(fields: Mapping[Any, Any]) -> bytes | None:
    """The overlay PNG of a heatmap hash (as HGETALL returns it); None when the hash is empty (expired).

    A hash written by an older detector carries a rendered ``overlay``: that one is returned as is.
    Raises :class:`HeatmapDataError` when the hash exists but cannot make an overlay.
    """
    if not fields:
        return None
    rendered = _field(fields, ck.FIELD_OVERLAY)
    if rendered is not None:
        return bytes(rendered)
    frame_jpeg, map_png = _field(fields, ck.FIELD_FRAME), _field(fields, ck.FIELD_MAP)
    if frame_jpeg is None or map_png is None:
        raise HeatmapDataError("the heatmap has no frame or no map")
    try:
        map_scale = float(_field(fields, ck.FIELD_MAP_SCALE))
        colour_scale = float(_field(fields, ck.FIELD_COLOUR_SCALE))
    except (TypeError, ValueError):
        raise HeatmapDataError("the heatmap's map_scale or colour_scale is missing or not a number") from None
    frame = cv2.imdecode(np.frombuffer(frame_jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise HeatmapDataError("the stored frame is not a readable image")
    return render_overlay_png(frame, decode_map_png(map_png, map_scale), colour_scale)


OVERLAY_FIELDS = (ck.FIELD_OVERLAY, ck.FIELD_FRAME, ck.FIELD_MAP, ck.FIELD_MAP_SCALE, ck.FIELD_COLOUR_SCALE)


def read_overlay(redis: Any, key: str) -> bytes | None:
    """Render the overlay of heatmap hash ``key`` straight from Redis (no caching); None once it expired."""
    values = redis.hmget(key, list(OVERLAY_FIELDS))
    fields = {name: value for name, value in zip(OVERLAY_FIELDS, values, strict=True) if value is not None}
    return overlay_from_fields(fields)
