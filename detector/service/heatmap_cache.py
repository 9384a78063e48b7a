"""Redis heatmap cache (key schema in :mod:`detector.cache_keys`), written off the result path.

Batches of heatmaps go through a bounded queue to one writer thread that renders the PNGs and
writes each batch in one pipeline. Results never wait for Redis: when the queue is full or Redis
is down the batch is skipped and counted, and the writer retries with exponential backoff.
Memory stays bounded: the latest N heatmaps per camera (older non-breach heatmaps are deleted
when they fall off the list), a TTL on every heatmap, a longer TTL for breaches.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from linewatch.common import cache_keys
from linewatch.common.redis_settings import RedisSettings
from linewatch.detector.service.metrics import DetectorMetrics

log = logging.getLogger(__name__)

# Delete evicted heatmaps unless they are breaches (those live on until breach_ttl_s).
_EVICT_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'anomalous') ~= '1' then redis.call('UNLINK', key) end
end
return 0
"""


@dataclass
class HeatmapEntry:
    """One frame's heatmap and the numbers shown next to it."""

    camera_id: str
    line_id: str
    sequence: int
    capture_ns: int
    image_score: float
    normalised_score: float
    anomalous: bool
    anomaly_map: np.ndarray  # (S, S) float32 at model resolution
    image: np.ndarray  # uint8 RGB frame (any size)


def render_map_png(anomaly_map: np.ndarray, size: int) -> tuple[bytes, float]:
    """16-bit grayscale PNG of the map at ``size``; value = pixel / 65535 * scale."""
    small = cv2.resize(anomaly_map.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    scale = float(max(float(small.max()), 1e-12))
    pixels = np.clip(np.rint(small / scale * 65535), 0, 65535).astype(np.uint16)
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("OpenCV could not encode the map PNG")
    return bytes(buf.tobytes()), scale


def render_overlay_png(image: np.ndarray, anomaly_map: np.ndarray, colour_scale: float, max_side: int) -> bytes:
    """PNG of the frame with the map in JET colours blended on top (map / colour_scale clipped to [0, 1])."""
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    frame = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if factor < 1 else image
    heat = cv2.resize(anomaly_map.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.clip(heat / max(colour_scale, 1e-12) * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)  # BGR
    blended = cv2.addWeighted(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), 0.6, colour, 0.4, 0)
    ok, buf = cv2.imencode(".png", blended, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("OpenCV could not encode the overlay PNG")
    return bytes(buf.tobytes())


class HeatmapCache:
    """Background writer of heatmaps; ``available`` says whether keys are worth announcing."""

    def __init__(self, settings: RedisSettings, metrics: DetectorMetrics, *, per_camera: int, ttl_s: int,
                 breach_ttl_s: int, map_size: int = 64, overlay_max_side: int = 256, colour_scale: float = 1.0,
                 queue_batches: int = 8, backoff_initial_s: float = 0.25, backoff_max_s: float = 5.0) -> None:
        self.prefix = settings.key_prefix
        self._client: Any = settings.client()
        self._metrics = metrics
        self._per_camera = per_camera
        self._ttl_s, self._breach_ttl_s = ttl_s, breach_ttl_s
        self._map_size, self._overlay_max_side = map_size, overlay_max_side
        self.colour_scale = colour_scale
        self._queue: queue.Queue[list[HeatmapEntry] | None] = queue.Queue(maxsize=queue_batches)
        self._backoff_initial_s, self._backoff_max_s = backoff_initial_s, backoff_max_s
        self._backoff_s = backoff_initial_s
        self._down_until = 0.0
        self.available = True
        self._evict = self._client.register_script(_EVICT_LUA)
        self._thread = threading.Thread(target=self._run, name="detector-heatmaps", daemon=True)

    def start(self) -> HeatmapCache:
        """Start the writer thread."""
        self._thread.start()
        return self

    def key_for(self, camera_id: str, sequence: int) -> str | None:
        """The heatmap key a result should carry: None while Redis is known to be down."""
        return cache_keys.heatmap_key(self.prefix, camera_id, sequence) if self.available else None

    def submit(self, entries: list[HeatmapEntry]) -> None:
        """Queue a batch; never blocks (a full queue or a down Redis skips and counts it)."""
        if not entries:
            return
        if not self.available and time.monotonic() < self._down_until:
            self._metrics.heatmap_writes_skipped.inc(len(entries))
            return
        try:
            self._queue.put_nowait(entries)
        except queue.Full:
            self._metrics.heatmap_writes_skipped.inc(len(entries))

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``) and stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            entries = self._queue.get()
            if entries is None:
                return
            if not self.available and time.monotonic() < self._down_until:
                self._metrics.heatmap_writes_skipped.inc(len(entries))
                continue
            try:
                self.write(entries)
            except Exception as exc:  # redis errors, OSError, a render bug: skip the batch, never stop
                self._metrics.redis_errors.inc()
                self._metrics.heatmap_writes_skipped.inc(len(entries))
                if self.available:
                    log.warning("heatmap cache unavailable (%s); results continue without heatmaps", exc)
                self.available = False
                self._down_until = time.monotonic() + self._backoff_s
                self._backoff_s = min(self._backoff_max_s, self._backoff_s * 2)
            else:
                if not self.available:
                    log.info("heatmap cache reachable again")
                self.available = True
                self._backoff_s = self._backoff_initial_s

    def write(self, entries: list[HeatmapEntry]) -> None:
        """Render and write one batch in one pipeline (plus one eviction call when lists overflow)."""
        now_ns = time.time_ns()
        pipe = self._client.pipeline(transaction=False)
        by_camera: dict[str, list[HeatmapEntry]] = {}
        for entry in entries:
            by_camera.setdefault(entry.camera_id, []).append(entry)
            key = cache_keys.heatmap_key(self.prefix, entry.camera_id, entry.sequence)
            map_png, scale = render_map_png(entry.anomaly_map, self._map_size)
            pipe.hset(key, mapping={
                "overlay": render_overlay_png(entry.image, entry.anomaly_map, self.colour_scale,
                                              self._overlay_max_side),
                "map": map_png, "map_scale": repr(scale), "image_score": repr(entry.image_score),
                "normalised_score": repr(entry.normalised_score), "anomalous": int(entry.anomalous),
                "capture_ns": entry.capture_ns, "line_id": entry.line_id,
            })
            pipe.expire(key, self._breach_ttl_s if entry.anomalous else self._ttl_s)
        for camera, cam_entries in by_camera.items():
            cam_entries.sort(key=lambda e: e.sequence)
            newest = cam_entries[-1]
            recent = cache_keys.recent_key(self.prefix, camera)
            pipe.lpush(recent, *(cache_keys.heatmap_key(self.prefix, camera, e.sequence) for e in cam_entries))
            pipe.lrange(recent, self._per_camera, -1)
            pipe.ltrim(recent, 0, self._per_camera - 1)
            pipe.hset(cache_keys.latest_key(self.prefix, camera), mapping={
                "line_id": newest.line_id, "sequence": newest.sequence, "capture_ns": newest.capture_ns,
                "image_score": repr(newest.image_score), "normalised_score": repr(newest.normalised_score),
                "anomalous": int(newest.anomalous),
                "heatmap_key": cache_keys.heatmap_key(self.prefix, camera, newest.sequence), "updated_ns": now_ns,
            })
            pipe.sadd(cache_keys.cameras_key(self.prefix), camera)
        replies = pipe.execute()
        # Each camera block is 5 replies; its LRANGE (the evicted keys) is the 2nd.
        tail = replies[2 * len(entries):]
        evicted = [key for i in range(0, len(tail), 5) for key in tail[i + 1]]
        if evicted:
            self._evict(keys=evicted)
