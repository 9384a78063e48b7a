"""Prometheus metrics of the camera producers, on the service's own registry."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

ENCODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Reasons for linewatch_camera_frames_dropped_total{reason}.
DROP_QUEUE_FULL = "queue_full"  # drop-oldest policy: the producer was slower than the camera
DROP_OVERSIZE = "oversize"  # size guard rejected the frame
DROP_UNREADABLE = "unreadable"  # the source could not read this one frame
DROP_ENCODE_ERROR = "encode_error"
DROP_UNSENT = "unsent_at_shutdown"  # still queued/in flight when the camera stopped


class CameraMetrics:
    """The camera metric family set; one instance per registry, labelled per camera."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.captured = Counter("linewatch_camera_frames_captured", "Frames read from the source.",
                                ["camera"], registry=self.registry)
        self.sent = Counter("linewatch_camera_frames_sent", "Frames the broker acknowledged.",
                            ["camera"], registry=self.registry)
        self.dropped = Counter("linewatch_camera_frames_dropped", "Frames not sent, by reason.",
                               ["camera", "reason"], registry=self.registry)
        self.delivery_errors = Counter("linewatch_camera_delivery_errors", "Frames the broker did not accept.",
                                       ["camera"], registry=self.registry)
        self.encode_seconds = Histogram("linewatch_camera_encode_seconds", "Time to resize and encode a frame.",
                                        ["camera"], buckets=ENCODE_BUCKETS, registry=self.registry)
        self.bytes_sent = Counter("linewatch_camera_bytes_sent", "Value bytes the broker acknowledged.",
                                  ["camera"], registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (e.g. ``linewatch_camera_frames_sent_total``), 0 when absent."""
        found = self.registry.get_sample_value(name, labels)
        return float(found or 0.0)


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> int:
    """Serve ``registry`` on http://addr:port/metrics in a daemon thread; returns the port."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound
