"""Redis key schema of the heatmap cache (written by the detector, read by alerts).

With ``p`` the configured key prefix (default ``lw``):

- ``p:cameras``                    set of camera ids seen;
- ``p:cam:{camera}:latest``        hash: line_id, sequence, capture_ns, image_score,
                                   normalised_score, anomalous (0/1), heatmap_key, updated_ns;
- ``p:cam:{camera}:recent``        list of the latest N heatmap keys, newest first (LTRIM);
- ``p:hm:{camera}:{sequence}``     hash: ``frame`` (JPEG of the frame, downscaled),
                                   ``map`` (PNG, 16-bit grayscale low-resolution anomaly map),
                                   ``map_scale`` (float: map value = pixel / 65535 * map_scale),
                                   ``colour_scale`` (float: the map value drawn as full red),
                                   image_score, normalised_score, anomalous, capture_ns, line_id;
                                   (older detectors wrote a rendered ``overlay`` PNG
                                   instead of ``frame``/``colour_scale``; readers still accept it);
                                   expires after ``heatmap_ttl_s``, or ``breach_ttl_s`` for breaches;
- ``p:ov:{camera}:{sequence}``     hash: ``overlay`` (PNG rendered on request by the operator API from
                                   the heatmap hash, :mod:`common.heatmap_codec`) and the ``capture_ns``
                                   of the frame it was drawn from; kept ``OVERLAY_CACHE_TTL_S``.

Memory is bounded by N per camera, the TTLs, and the server's ``maxmemory`` policy.

Model refusals (written by the detector's hot swap, read by the operator page):

- ``p:model-refusals``                   set of the ``model-refused`` keys below;
- ``p:model-refused:{product}:{line}``   hash: product, line, version, reason, detail, since_ns, running_version
                                         of a promoted model a detector refuses (``line`` empty: the every-line
                                         assignment; ``running_version`` empty: no model of its own scores it).
                                         Both keys expire unless the detector refreshes them while the refusal
                                         stands; the hash is deleted once the registry moves on.
"""

from __future__ import annotations


def cameras_key(prefix: str) -> str:
    """Set of every camera id the detector has seen."""
    return f"{prefix}:cameras"


def latest_key(prefix: str, camera_id: str) -> str:
    """Hash with a camera's latest score and heatmap key."""
    return f"{prefix}:cam:{camera_id}:latest"


def recent_key(prefix: str, camera_id: str) -> str:
    """List of a camera's latest heatmap keys, newest first."""
    return f"{prefix}:cam:{camera_id}:recent"


def heatmap_key(prefix: str, camera_id: str, sequence: int) -> str:
    """Hash holding one frame's heatmap overlay and low-resolution map."""
    return f"{prefix}:hm:{camera_id}:{sequence}"


def overlay_cache_key(heatmap_key: str) -> str:
    """Where a reader caches the overlay it rendered from ``heatmap_key`` (``p:hm:..`` -> ``p:ov:..``)."""
    prefix, marker, rest = heatmap_key.rpartition(":hm:")
    return f"{prefix}:ov:{rest}" if marker else f"{heatmap_key}:ov"


def model_refusals_key(prefix: str) -> str:
    """Set of the :func:`model_refusal_key` keys of every standing model refusal."""
    return f"{prefix}:model-refusals"


def model_refusal_key(prefix: str, product: str, line: str) -> str:
    """Hash describing the model refused for (product, line); ``line`` empty: the every-line assignment."""
    return f"{prefix}:model-refused:{product}:{line}"


# A rendered overlay is kept this long: a page refresh or a second operator does not re-render it,
# and an operator who comes back later pays one render (a few ms) again.
OVERLAY_CACHE_TTL_S = 300


# Hash field names, shared by the writer (detector heatmap cache) and the readers (alerts API, demo report).
# Both hashes:
FIELD_LINE_ID = "line_id"
FIELD_CAPTURE_NS = "capture_ns"
FIELD_IMAGE_SCORE = "image_score"
FIELD_NORMALISED_SCORE = "normalised_score"
FIELD_ANOMALOUS = "anomalous"  # "1" or "0"
# ``latest`` hash only:
FIELD_SEQUENCE = "sequence"
FIELD_HEATMAP_KEY = "heatmap_key"
FIELD_UPDATED_NS = "updated_ns"
# heatmap hash only:
FIELD_OVERLAY = "overlay"  # a rendered PNG: only in hashes written by older detectors
FIELD_FRAME = "frame"
FIELD_COLOUR_SCALE = "colour_scale"
FIELD_MAP = "map"
FIELD_MAP_SCALE = "map_scale"
# model refusal hash:
FIELD_REFUSAL_PRODUCT = "product"
FIELD_REFUSAL_LINE = "line"
FIELD_REFUSAL_VERSION = "version"
FIELD_REFUSAL_REASON = "reason"  # a detector.registry.hotswap.RefusalReason value
FIELD_REFUSAL_DETAIL = "detail"
FIELD_REFUSAL_SINCE_NS = "since_ns"
FIELD_REFUSAL_RUNNING_VERSION = "running_version"  # the version still scoring; empty: none
