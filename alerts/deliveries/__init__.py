"""Where alerts go: Alertmanager, a signed webhook, Grafana annotations and the alerts topic.

Every channel has a ``name`` and a ``send(event)`` that raises :class:`DeliveryError` on
failure (``permanent`` when retrying cannot help); :func:`attempt` sends once and classifies the
outcome. The service retries through its outbox (see :mod:`alerts.outbox`), so that a failing channel
never blocks the others.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol
from urllib.parse import quote

from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.rules import Alert, AlertEvent
from linewatch.errors import BrokerError

log = logging.getLogger(__name__)

Attempt = Literal["delivered", "transient", "permanent"]


class DeliveryError(BrokerError):
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
