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
        self.rejected = Counter("linewatch_alerts_records_rejected_total",
                                "Result records not applied: dead-lettered (too_large, bad_camera_id, key_mismatch, "
                                "...) or refused by the frame guard (future, sequence_jump).", ["reason"],
                                registry=self.registry)
        self.poison = Counter("linewatch_alerts_outbox_poison_total",
                              "Outbox entries moved aside because they could be neither delivered nor dead-lettered.",
                              registry=self.registry)
        self.fenced = Counter("linewatch_alerts_fenced_total",
                              "Writes refused because the partition moved to a newer owner.", registry=self.registry)
        self.silent = Counter("linewatch_alerts_silent_total", "Open alerts closed because their camera went silent.",
                              ["line", "camera"], registry=self.registry)
        self.retries = Counter("linewatch_alerts_delivery_retries_total", "Delivery retries.", ["channel"],
                               registry=self.registry)
