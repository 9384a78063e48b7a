"""A camera's producer is closed explicitly, at once, even with frames the broker never took."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from linewatch.common.settings import KafkaSettings
from linewatch.deploy.local import free_port
from linewatch.ingest.metrics import CameraMetrics
from linewatch.ingest.producer import FrameProducer
from linewatch.ingest.wire import encode_frame

pytestmark = pytest.mark.unit


def test_close_discards_undeliverable_frames_without_waiting_or_counting_them() -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    producer = FrameProducer(kafka, "frames", CameraMetrics(), extra_config={"message.timeout.ms": 300_000})
    frame = encode_frame(np.zeros((8, 8, 3), np.uint8), camera_id="cam-1", line_id="line-1", sequence=0,
                         capture_ns=1)
    assert producer.send(frame)
    assert producer.flush(0.2) == 1  # the caller flushes first and counts what is left as unsent
    closer = threading.Thread(target=producer.close, daemon=True)
    closer.start()
    closer.join(30)  # librdkafka's own close would wait message.timeout.ms (5 min) for the frame
    assert not closer.is_alive(), "close() waited for a frame the broker will never take"
    assert (producer.acked, producer.failed) == (0, 0), "a discarded frame is not a second delivery error"
