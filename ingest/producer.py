"""Kafka side of a camera: an idempotent producer that never drops a frame silently, and the size guard."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from linewatch.common.settings import KafkaSettings
from linewatch.ingest.metrics import DROP_UNSENT, CameraMetrics
from linewatch.ingest.wire import EncodedFrame

log = logging.getLogger(__name__)

# Keep librdkafka's own buffer small enough that a stalled broker shows up as BufferError
# (back-pressure) long before memory does: 64 MiB is ~60 full-HD JPEG frames.
DEFAULT_BUFFER_KBYTES = 65_536
MIN_SIDE = 16
RESIZE_ATTEMPTS = 6


def frame_size(frame: EncodedFrame) -> int:
    """Bytes a frame takes in a record: value, key and headers."""
    return len(frame.value) + len(frame.key) + sum(len(name) + len(value) for name, value in frame.headers)


def fit_to_limit(image: np.ndarray, encode: Callable[[np.ndarray], EncodedFrame], limit: int,
                 policy: str) -> tuple[EncodedFrame | None, str]:
    """Encode ``image`` so the record stays within ``limit`` bytes.

    ``policy`` ``resize`` shrinks the image (area interpolation, aspect kept) until it fits;
    ``reject`` refuses it. Returns the frame (None when refused) and a note for the log line.
    """
    frame = encode(image)
    size = frame_size(frame)
    if size <= limit:
        return frame, ""
    first = f"{frame.meta.width}x{frame.meta.height} is {size} bytes, over the {limit}-byte limit"
    if policy != "resize":
        return None, f"{first}; rejected"
    for _ in range(RESIZE_ATTEMPTS):
        scale = min(0.9, 0.95 * (limit / size) ** 0.5)
        height, width = image.shape[:2]
        new_w, new_h = max(MIN_SIDE, int(width * scale)), max(MIN_SIDE, int(height * scale))
        if (new_w, new_h) == (width, height):
            break
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        frame = encode(image)
        size = frame_size(frame)
        if size <= limit:
            return frame, f"{first}; resized to {new_w}x{new_h} ({size} bytes)"
    return None, f"{first}; still {size} bytes after resizing, rejected"


class FrameProducer:
    """Publishes encoded frames with acks=all and idempotence; counts every outcome per camera.

    ``acked``/``acked_bytes``/``failed`` are this instance's own totals (the metrics registry may be
    shared by several runs). Delivery callbacks run inside :meth:`poll`/:meth:`flush`.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, metrics: CameraMetrics, *, client_id: str = "linewatch-camera",
                 max_message_bytes: int = 1_000_000, extra_config: dict[str, Any] | None = None) -> None:
        config: dict[str, Any] = {
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "none",  # images are already compressed
            "queue.buffering.max.kbytes": DEFAULT_BUFFER_KBYTES,
            "message.max.bytes": max(max_message_bytes + 65_536, 1_000_000),
            "error_cb": self._on_error,
        }
        config.update(kafka.client_config())
        config.update(extra_config or {})
        self.topic = topic
        self.metrics = metrics
        self.acked = 0
        self.acked_bytes = 0
        self.failed = 0
        self.last_error: str | None = None
        self.buffer_full_waits = 0
        self._last_full_log = -1e9
        self._closed = False
        self._producer = Producer(config)

    def _on_error(self, error: KafkaError) -> None:
        level = logging.ERROR if error.fatal() else logging.WARNING
        log.log(level, "kafka client error: %s", error)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if self._closed:  # purged by close(): the caller flushed first and counted what was left
            return
        key = message.key()
        camera = key.decode(errors="replace") if isinstance(key, bytes) else str(key or "")
        if error is not None:
            self.failed += 1
            self.last_error = str(error)
            self.metrics.delivery_errors.labels(camera=camera).inc()
            seq = dict(message.headers() or []).get("lw-seq")
            log.error("camera %s: frame seq=%r NOT delivered to %s: %s", camera, seq, self.topic, error)
            return
        size = len(message.value() or b"")
        self.acked += 1
        self.acked_bytes += size
        self.metrics.sent.labels(camera=camera).inc()
        self.metrics.bytes_sent.labels(camera=camera).inc(size)

    def send(self, frame: EncodedFrame, stop_event: threading.Event | None = None,
             give_up_after_stop_s: float = 30.0) -> bool:
        """Queue ``frame`` for delivery. When librdkafka's buffer is full, poll and retry (never drop);
        only once ``stop_event`` is set and ``give_up_after_stop_s`` passed is it counted as unsent.
        Returns False when the frame was not queued (counted and logged)."""
        camera = frame.meta.camera_id
        waited_since: float | None = None
        stop_since: float | None = None
        while True:
            try:
                self._producer.produce(self.topic, key=frame.key, value=frame.value, headers=list(frame.headers),
                                       on_delivery=self._on_delivery)
                return True
            except BufferError:
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    self.buffer_full_waits += 1
                    if now - self._last_full_log > 10:  # one line per 10 s of sustained back-pressure
                        self._last_full_log = now
                        log.warning("camera %s: producer buffer full (%d in flight, %d waits so far); "
                                    "waiting for the broker", camera, len(self._producer), self.buffer_full_waits)
                if stop_event is not None and stop_event.is_set():
                    stop_since = stop_since or now
                    if now - stop_since > give_up_after_stop_s:
                        self.metrics.dropped.labels(camera=camera, reason=DROP_UNSENT).inc()
                        log.error("camera %s: stopping; frame seq=%d still unsent after %.0fs, counted as %s",
                                  camera, frame.meta.sequence, give_up_after_stop_s, DROP_UNSENT)
                        return False
                self._producer.poll(0.1)
            except KafkaException as exc:
                self.failed += 1
                self.last_error = str(exc)
                self.metrics.delivery_errors.labels(camera=camera).inc()
                log.error("camera %s: frame seq=%d refused by the client: %s", camera, frame.meta.sequence, exc)
                return False

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still in flight."""
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        """Shut the client down now: frames still queued are discarded (flush and count them first; a plain
        librdkafka close would wait up to message.timeout.ms for them while the broker is down)."""
        self._closed = True
        self._producer.purge()
        self._producer.close()

    def __len__(self) -> int:
        return len(self._producer)
