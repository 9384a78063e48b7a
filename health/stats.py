"""Pixel statistics of one frame, from a downscaled greyscale decode.

Decoding at 1/2, 1/4 or 1/8 scale (``cv2.IMREAD_REDUCED_GRAYSCALE_*``) lets libjpeg skip most of
the inverse DCT, so the health consumer reads every frame for a fraction of the detector's decode
cost. Statistics are computed on that small image, so thresholds on focus are relative to the
camera's own baseline (absolute sharpness depends on the scale and the scene).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from linewatch.ingest.wire import MAX_PIXELS, MAX_SIDE, FrameMeta, WireFormatError, probe_dimensions

THUMB_SIDE = 32  # frozen-stream comparison: tiny, so JPEG noise and sensor noise average out
LAYOUT_SIDE = 8  # where the light and the scene's structure lie: coarse, so parts' details average out
_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


@dataclass(frozen=True)
class FrameStats:
    """What the health checks need from one frame."""

    mean: float  # grey level 0..255
    dark_fraction: float  # pixels <= 10
    saturated_fraction: float  # pixels >= 250
    focus: float  # variance of the Laplacian (sharpness)
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE float32 grey, for frame-to-frame differences


def reduction(width: int, height: int, min_side: int) -> int:
    """The largest decode reduction (1, 2, 4, 8) that keeps the long side at ``min_side`` pixels or more."""
    factor = 1
    while factor < 8 and max(width, height) // (factor * 2) >= min_side:
        factor *= 2
    return factor


def decode_grey(value: bytes, meta: FrameMeta, min_side: int = 160) -> np.ndarray:
    """The frame as a small greyscale uint8 image; refuses what the wire format refuses (bombs, mismatches)."""
    if not value:
        raise WireFormatError("empty", "the record has no image bytes")
    factor = reduction(meta.width, meta.height, min_side)
    if meta.encoding == "raw":
        expected = meta.width * meta.height * meta.channels
        if len(value) != expected:
            raise WireFormatError("dimension_mismatch", f"raw frame has {len(value)} bytes, headers say {expected}")
        pixels = np.frombuffer(value, np.uint8).reshape(meta.height, meta.width, meta.channels)[::factor, ::factor]
        grey = pixels[:, :, 0] if meta.channels == 1 else cv2.cvtColor(np.ascontiguousarray(pixels[:, :, :3]),
                                                                       cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(grey)
    width, height = probe_dimensions(value, meta.encoding)
    if (width, height) != (meta.width, meta.height) or max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise WireFormatError("dimension_mismatch", f"stream is {width}x{height}, headers say "
                                                    f"{meta.width}x{meta.height}")
    decoded = cv2.imdecode(np.frombuffer(value, np.uint8), _REDUCED[factor])
    if decoded is None or decoded.dtype != np.uint8:
        raise WireFormatError("undecodable", f"OpenCV could not decode the {meta.encoding} stream as 8-bit")
    return np.asarray(decoded)


def frame_stats(grey: np.ndarray) -> FrameStats:
    """Brightness, clipping, sharpness and a thumbnail of a greyscale uint8 image."""
    pixels = grey.size
    thumb = cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return FrameStats(mean=float(grey.mean()), dark_fraction=float(np.count_nonzero(grey <= 10) / pixels),
                      saturated_fraction=float(np.count_nonzero(grey >= 250) / pixels),
                      focus=float(cv2.Laplacian(grey, cv2.CV_64F).var()), thumb=thumb)


def thumb_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference of two thumbnails."""
    return float(np.abs(a - b).mean())


def layout(thumb: np.ndarray) -> np.ndarray:
    """The frame's coarse brightness layout divided by its mean: how light and structure lie in the view.

    Dividing by the mean leaves exposure to the exposure check; what remains moves when the camera's view
    moves (a shifted or turned camera, a new fixture in view), whatever the exposure.
    """
    coarse = cv2.resize(thumb, (LAYOUT_SIDE, LAYOUT_SIDE), interpolation=cv2.INTER_AREA)
    return (coarse / max(float(coarse.mean()), 1.0)).astype(np.float32)


def layout_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two layouts (fractions of the mean brightness)."""
    return float(np.abs(a - b).mean())


def robust_spread(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation: a few odd frames barely move it."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))
