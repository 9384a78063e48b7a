"""Prometheus metrics of the alerts service, in a registry of its own (several services per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertsMetrics:
    """The alert metrics named in the project's metric list."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.firing = Gauge("linewatch_alerts_firing", "Alerts firing now.", ["line", "camera"],
                            registry=self.registry)
        self.fired = Counter("linewatch_alerts_fired_total", "Alerts fired.", ["line", "camera", "severity"],
                             registry=self.registry)
        self.resolved = Counter("linewatch_alerts_resolved_total", "Alerts resolved.", ["line", "camera"],
                                registry=self.registry)
        self.deliveries = Counter("linewatch_alerts_deliveries_total",
                                  "Delivery attempts that ended: success, failure (retried) or dead_letter.",
                                  ["channel", "outcome"], registry=self.registry)
        self.retries = Counter("linewatch_alerts_delivery_retries_total", "Delivery retries.", ["channel"],
                               registry=self.registry)
