"""Redis heatmap cache (key and field schema in :mod:`common.cache_keys`), written off the result path.

Batches of heatmaps go through a bounded queue to one writer thread that encodes each frame's map
(16-bit PNG) and downscaled frame (JPEG), about 0.5 ms per frame, and writes each batch in one
pipeline. No overlay is rendered here: readers render one from these fields when someone looks
(:mod:`common.heatmap_codec`). Results never wait for Redis. A result carries a
``heatmap_key`` only when its batch was queued to a healthy writer; a queued batch is written
even across a Redis outage (the writer retries it with exponential backoff and full jitter, so
detectors do not reconnect in lockstep). While Redis is down, the writer is stuck on one write
for ``stall_after_s``, or the queue is full, new batches are skipped and counted, and their keys
are reported by :meth:`HeatmapCache.take_skipped` so their results go out without a key. Only
frames downscaled to the overlay size wait in the queue, never full-resolution ones.
Memory stays bounded: the latest N heatmaps per camera (older non-breach heatmaps are deleted
when they fall off the list), a TTL on every heatmap, a longer TTL for breaches, and a TTL on
every per-camera key (``latest``, ``recent``) and the cameras set, refreshed on each write, so
the keys of a camera that stops sending go away.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import redis

from linewatch.common import cache_keys
from linewatch.common.heatmap_codec import encode_frame_jpeg, encode_map_png
from linewatch.common.redis_settings import RedisSettings
from linewatch.detector.service.metrics import DetectorMetrics

log = logging.getLogger(__name__)

# Delete evicted heatmaps unless they are breaches (those live on until breach_ttl_s).
_EVICT_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, '""" + cache_keys.FIELD_ANOMALOUS + """') ~= '1' then redis.call('UNLINK', key) end
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


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` with its longer side at most ``max_side`` (area interpolation, aspect kept)."""
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if factor >= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class HeatmapCache:
    """Background writer of heatmaps; ``available`` says whether keys are worth announcing."""

    def __init__(self, settings: RedisSettings, metrics: DetectorMetrics, *, per_camera: int, ttl_s: int,
                 breach_ttl_s: int, map_size: int = 64, overlay_max_side: int = 256, colour_scale: float = 1.0,
                 queue_batches: int = 8, backoff_initial_s: float = 0.25, backoff_max_s: float = 5.0,
                 camera_ttl_s: int = 86_400, stall_after_s: float = 1.0, rng: random.Random | None = None) -> None:
        self.prefix = settings.key_prefix
        self._camera_ttl_s = camera_ttl_s
        self._rng = rng or random.Random()
        self._stall_after_s = stall_after_s
        self._writing_since: float | None = None
        self._skipped: set[str] = set()
        self._skipped_lock = threading.Lock()
        self._client: Any = settings.client()
        self._metrics = metrics
        self._per_camera = per_camera
        self._ttl_s, self._breach_ttl_s = ttl_s, breach_ttl_s
        self._map_size, self._overlay_max_side = map_size, overlay_max_side
        self.colour_scale = colour_scale
        self._queue: queue.Queue[list[HeatmapEntry] | None] = queue.Queue(maxsize=queue_batches)
        self._backoff_initial_s, self._backoff_max_s = backoff_initial_s, backoff_max_s
        self._backoff_s = backoff_initial_s
        self._closing = threading.Event()
        self.available = True
        self._evict = self._client.register_script(_EVICT_LUA)
        self._thread = threading.Thread(target=self._run, name="detector-heatmaps", daemon=True)

    def start(self) -> HeatmapCache:
        """Start the writer thread."""
        self._thread.start()
        return self

    def key_for(self, camera_id: str, sequence: int) -> str | None:
        """The heatmap key a result should carry: None while Redis is down (probing) or the writer stalled."""
        return cache_keys.heatmap_key(self.prefix, camera_id, sequence) if self._accepting() else None

    def _accepting(self) -> bool:
        """Whether a submitted batch would be queued: Redis answering and the writer not stuck on a batch."""
        since = self._writing_since
        return self.available and (since is None or time.monotonic() - since <= self._stall_after_s)

    def submit(self, entries: list[HeatmapEntry]) -> None:
        """Queue a batch (frames downscaled first); never blocks.

        A full queue, a down Redis or a stalled writer skips the batch: counted, and its keys
        reported by :meth:`take_skipped`.
        """
        if not entries:
            return
        if self._accepting():
            small = [replace(e, image=downscale(e.image, self._overlay_max_side)) for e in entries]
            try:
                self._queue.put_nowait(small)
                return
            except queue.Full:
                pass
        self._skip(entries)

    def _skip(self, entries: list[HeatmapEntry]) -> None:
        self._metrics.heatmap_writes_skipped.inc(len(entries))
        with self._skipped_lock:
            self._skipped.update(cache_keys.heatmap_key(self.prefix, e.camera_id, e.sequence) for e in entries)

    def take_skipped(self) -> set[str]:
        """Heatmap keys skipped since the last call (their results must not announce them)."""
        with self._skipped_lock:
            skipped, self._skipped = self._skipped, set()
        return skipped

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``) and stop the thread."""
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            entries = self._queue.get()
            if entries is None:
                return
            self._write_until_done(entries)

    def _write_until_done(self, entries: list[HeatmapEntry]) -> None:
        """Write a queued batch, retrying while Redis fails: its keys were announced in results.

        Meanwhile (writer stalled or Redis down) :meth:`submit` skips new batches, so only the
        batches already queued wait; they are written once Redis answers again. Only a bug in
        encoding, or stopping the detector, drops a queued batch (its keys are then reported).
        """
        self._writing_since = time.monotonic()
        try:
            while True:
                try:
                    self.write(entries)
                except (redis.RedisError, OSError) as exc:
                    self._metrics.redis_errors.inc()
                    if self.available:
                        log.warning("heatmap cache unavailable (%s); results continue without heatmaps", exc)
                    self.available = False
                    # Full jitter (AWS architecture blog): wait uniformly in [0, backoff] so a fleet
                    # of detectors does not retry in lockstep once Redis is back.
                    delay = self._rng.uniform(0, self._backoff_s)
                    self._backoff_s = min(self._backoff_max_s, self._backoff_s * 2)
                    if self._closing.wait(delay):
                        self._skip(entries)
                        return
                    continue
                except Exception:  # an encoding bug: skip the batch, never stop the writer
                    log.exception("could not encode %d heatmaps; skipped", len(entries))
                    self._metrics.redis_errors.inc()
                    self._skip(entries)
                    return
                if not self.available:
                    log.info("heatmap cache reachable again")
                self.available = True
                self._backoff_s = self._backoff_initial_s
                return
        finally:
            self._writing_since = None

    def write(self, entries: list[HeatmapEntry]) -> None:
        """Encode and write one batch in one pipeline (plus one eviction call when lists overflow)."""
        now_ns = time.time_ns()
        pipe = self._client.pipeline(transaction=False)
        by_camera: dict[str, list[HeatmapEntry]] = {}
        encode_start = time.perf_counter()
        for entry in entries:
            by_camera.setdefault(entry.camera_id, []).append(entry)
            key = cache_keys.heatmap_key(self.prefix, entry.camera_id, entry.sequence)
            map_png, scale = encode_map_png(entry.anomaly_map, self._map_size)
            pipe.hset(key, mapping={
                cache_keys.FIELD_FRAME: encode_frame_jpeg(entry.image),  # downscaled in submit()
                cache_keys.FIELD_MAP: map_png, cache_keys.FIELD_MAP_SCALE: repr(scale),
                cache_keys.FIELD_COLOUR_SCALE: repr(self.colour_scale),
                cache_keys.FIELD_IMAGE_SCORE: repr(entry.image_score),
                cache_keys.FIELD_NORMALISED_SCORE: repr(entry.normalised_score),
                cache_keys.FIELD_ANOMALOUS: int(entry.anomalous), cache_keys.FIELD_CAPTURE_NS: entry.capture_ns,
                cache_keys.FIELD_LINE_ID: entry.line_id,
            })
            pipe.expire(key, self._breach_ttl_s if entry.anomalous else self._ttl_s)
        self._metrics.stage_seconds.labels(stage="heatmap_encode").observe(time.perf_counter() - encode_start)
        for camera, cam_entries in by_camera.items():
            cam_entries.sort(key=lambda e: e.sequence)
            newest = cam_entries[-1]
            recent, latest = cache_keys.recent_key(self.prefix, camera), cache_keys.latest_key(self.prefix, camera)
            pipe.lpush(recent, *(cache_keys.heatmap_key(self.prefix, camera, e.sequence) for e in cam_entries))
            pipe.lrange(recent, self._per_camera, -1)
            pipe.ltrim(recent, 0, self._per_camera - 1)
            pipe.expire(recent, self._camera_ttl_s)
            pipe.hset(latest, mapping={
                cache_keys.FIELD_LINE_ID: newest.line_id, cache_keys.FIELD_SEQUENCE: newest.sequence,
                cache_keys.FIELD_CAPTURE_NS: newest.capture_ns, cache_keys.FIELD_IMAGE_SCORE: repr(newest.image_score),
                cache_keys.FIELD_NORMALISED_SCORE: repr(newest.normalised_score),
                cache_keys.FIELD_ANOMALOUS: int(newest.anomalous),
                cache_keys.FIELD_HEATMAP_KEY: cache_keys.heatmap_key(self.prefix, camera, newest.sequence),
                cache_keys.FIELD_UPDATED_NS: now_ns,
            })
            pipe.expire(latest, self._camera_ttl_s)
            pipe.sadd(cache_keys.cameras_key(self.prefix), camera)
        pipe.expire(cache_keys.cameras_key(self.prefix), self._camera_ttl_s)
        replies = pipe.execute()
        # Each camera block is 7 replies; its LRANGE (the evicted keys) is the 2nd.
        tail = replies[2 * len(entries):-1]
        evicted = [key for i in range(0, len(tail), 7) for key in tail[i + 1]]
        if evicted:
            self._evict(keys=evicted)
