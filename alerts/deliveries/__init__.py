"""Where alerts go: Alertmanager, a signed webhook, Grafana annotations and the alerts topic.

Every channel has a ``name`` and a ``send(event)`` that raises :class:`DeliveryError` on
failure (``permanent`` when retrying cannot help); :func:`attempt` sends once and classifies the
outcome, :func:`deliver` is the blocking retry loop for one-off sends. The service retries through
its outbox instead (see :mod:`alerts.outbox`), so that a failing channel never blocks the others.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal, Protocol
from urllib.parse import quote

from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.rules import Alert, AlertEvent
from linewatch.alerts.settings import RetrySettings

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed", "interrupted"]
Attempt = Literal["delivered", "transient", "permanent"]


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
    base, alert_id = public_base_url.rstrip("/"), quote(alert.alert_id, safe="")
    return {"alert_url": f"{base}/#/alert/{alert_id}", "heatmap_url": f"{base}/api/alerts/{alert_id}/heatmap.png"}


def attempt(channel: Channel, event: AlertEvent, metrics: AlertsMetrics) -> tuple[Attempt, str]:
    """Send once: ``delivered``, ``transient`` (worth retrying) or ``permanent``, with the error."""
    try:
        channel.send(event)
    except DeliveryError as exc:
        metrics.deliveries.labels(channel.name, "failure").inc()
        log.warning("delivery to %s of %s failed (%s): %s", channel.name, event.event_id[:200],
                    "permanent" if exc.permanent else "will retry", str(exc)[:500])
        return ("permanent" if exc.permanent else "transient"), str(exc)
    metrics.deliveries.labels(channel.name, "success").inc()
    return "delivered", ""


def deliver(channel: Channel, event: AlertEvent, retry: RetrySettings, metrics: AlertsMetrics,
            stop_event: threading.Event | None = None) -> tuple[Outcome, str]:
    """Blocking send with retries (for one-off sends; the service retries through its outbox instead).

    Tries until delivered, refused permanently, ``retry.attempts`` tries (when not 0) or
    ``retry.give_up_after_s`` spent; returns the outcome and the last error.
    """
    stop_event = stop_event or threading.Event()
    deadline = time.monotonic() + retry.give_up_after_s
    tries = 0
    while True:
        if tries:
            metrics.retries.labels(channel.name).inc()
        result, error = attempt(channel, event, metrics)
        tries += 1
        if result == "delivered":
            return "delivered", ""
        wait = retry.delay(tries)
        if result == "permanent" or (retry.attempts and tries >= retry.attempts) \
                or time.monotonic() + wait > deadline:
            return "failed", error
        if stop_event.wait(wait):
            return "interrupted", error
