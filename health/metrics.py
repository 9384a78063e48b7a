"""Prometheus metrics of ``linewatch camera-health``, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DECODE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class HealthMetrics:
    """One gauge per check's measured value, the unhealthy state per check, alert counts, decode cost."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.unhealthy = Gauge("linewatch_camera_health_unhealthy", "1 while a camera-health check fires.",
                               ["line", "camera", "check"], registry=r)
        self.alerts = Counter("linewatch_camera_health_alerts_total", "Camera-health alerts fired.",
                              ["line", "camera", "check"], registry=r)
        self.frames = Counter("linewatch_camera_health_frames_total", "Frames the health checks read.",
                              ["line", "camera"], registry=r)
        self.scores = Counter("linewatch_camera_health_scores_total", "Detector results the drift check read.",
                              ["line", "camera"], registry=r)
        self.unreadable = Counter("linewatch_camera_health_unreadable_total", "Records skipped (bad frame/result).",
                                  ["topic"], registry=r)
        self.identical = Gauge("linewatch_camera_identical_frames", "Identical frames in a row (frozen check).",
                               ["line", "camera"], registry=r)
        self.brightness = Gauge("linewatch_camera_brightness", "Mean grey level of the latest frame (0-255).",
                                ["line", "camera"], registry=r)
        self.saturated = Gauge("linewatch_camera_saturated_fraction", "Share of pixels >= 250 in the latest frame.",
                               ["line", "camera"], registry=r)
        self.dark = Gauge("linewatch_camera_dark_fraction", "Share of pixels <= 10 in the latest frame.",
                          ["line", "camera"], registry=r)
        self.focus_ratio = Gauge("linewatch_camera_focus_ratio", "Laplacian variance / the camera's baseline.",
                                 ["line", "camera"], registry=r)
        self.silence = Gauge("linewatch_camera_seconds_since_frame", "Seconds since the camera's last frame.",
                             ["line", "camera"], registry=r)
        self.drift = Gauge("linewatch_camera_score_drift", "Median log-score shift in calibration sd (drift check).",
                           ["line", "camera"], registry=r)
        self.decode_seconds = Histogram("linewatch_camera_health_decode_seconds",
                                        "Downscaled decode plus statistics of one frame.",
                                        buckets=_DECODE_BUCKETS, registry=r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, 0 when absent."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)
