"""Prometheus metrics of ``linewatch verdicts``, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# capture -> publish; the deadlines of interest are a few hundred ms to a few seconds
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class VerdictsMetrics:
    """Verdicts published, late ones, capture-to-publish latency, sink failures and skipped redeliveries."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.published = Counter("linewatch_verdicts_published_total", "Verdicts every sink took.",
                                 ["line", "camera", "verdict"], registry=self.registry)
        self.late = Counter("linewatch_verdicts_late_total",
                            "Verdicts published after their camera's deadline (given the late policy's verdict).",
                            ["line", "camera"], registry=self.registry)
        self.latency = Histogram("linewatch_verdicts_latency_seconds", "Capture to verdict published.",
                                 ["line", "camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.sink_errors = Counter("linewatch_verdicts_sink_errors_total", "Failed sends (the batch is retried).",
                                   ["sink"], registry=self.registry)
        self.skipped = Counter("linewatch_verdicts_skipped_total",
                               "Results not published: redelivered (already published) or invalid.",
                               ["reason"], registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, 0 when absent."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)
