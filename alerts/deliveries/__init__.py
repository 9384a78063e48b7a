"""Where alerts go: Alertmanager, a signed webhook, Grafana annotations and the alerts topic.

Every channel has a ``name`` and a ``send(event)`` that raises :class:`DeliveryError` on
failure; :func:`deliver` adds retries with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Literal, Protocol

from alerts.metrics import AlertsMetrics
from alerts.rules import Alert, AlertEvent
from alerts.settings import RetrySettings

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed", "interrupted"]


class DeliveryError(Exception):
    """A delivery failed; ``permanent`` failures (e.g. HTTP 400) are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Channel(Protocol):
    """A delivery target."""

    name: str
    kinds: tuple[str, ...]

    def send(self, event: AlertEvent) -> None:
        """Deliver one transition or raise :class:`DeliveryError`."""


def alert_links(public_base_url: str, alert: Alert) -> dict[str, str]:
    """Links an operator follows from a notification (the API ones need the bearer token)."""
    base = public_base_url.rstrip("/")
    return {"alert_url": f"{base}/#/alert/{alert.alert_id}",
            "heatmap_url": f"{base}/api/alerts/{alert.alert_id}/heatmap.png"}


def deliver(channel: Channel, event: AlertEvent, retry: RetrySettings, metrics: AlertsMetrics,
            stop_event: threading.Event | None = None) -> tuple[Outcome, str]:
    """Send with retries and exponential backoff; returns the outcome and the last error."""
    stop_event = stop_event or threading.Event()
    error = ""
    for attempt in range(retry.attempts):
        if attempt:
            metrics.retries.labels(channel.name).inc()
            if stop_event.wait(min(retry.backoff_s * 2 ** (attempt - 1), retry.max_backoff_s)):
                return "interrupted", error
        try:
            channel.send(event)
        except DeliveryError as exc:
            error = str(exc)
            metrics.deliveries.labels(channel.name, "failure").inc()
            log.warning("delivery to %s of %s failed (attempt %d/%d): %s", channel.name, event.event_id,
                        attempt + 1, retry.attempts, error)
            if exc.permanent:
                break
            continue
        metrics.deliveries.labels(channel.name, "success").inc()
        return "delivered", ""
    return "failed", error
