"""Camera-health alerts to Alertmanager (API v2), with labels of their own.

Labels: ``alertname=LinewatchCameraHealth``, ``kind=camera_health``, ``check`` (frozen, exposure, focus,
silence, drift), ``line``, ``camera``, ``severity=warning``; defect alerts use ``LinewatchDefect``, so
routes, silences and the pages keep the two apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from linewatch.health.checks import HealthEvent


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def health_payload(event: HealthEvent, alertname: str, start_ns: int) -> dict[str, Any]:
    """One Alertmanager alert for a health event (resolved = same labels with ``endsAt``)."""
    item: dict[str, Any] = {
        "labels": {"alertname": alertname, "kind": event.kind, "check": event.check, "line": event.line_id,
                   "camera": event.camera_id, "severity": "warning"},
        "annotations": {"summary": f"Camera {event.line_id}/{event.camera_id} unhealthy ({event.check}): "
                                   f"{event.detail}", "value": f"{event.value:.4g}",
                        "threshold": f"{event.threshold:.4g}"},
        "startsAt": _iso(start_ns),
    }
    if event.status == "resolved":
        item["endsAt"] = _iso(max(event.at_ns, start_ns + 1_000_000))
    return item


class HealthAlertmanager:
    """Posts health alerts; ``resend`` re-posts the open ones so Alertmanager does not time them out."""

    def __init__(self, url: str, alertname: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.alertname = alertname
        self.client = httpx.Client(timeout=timeout_s)
        self.open: dict[str, tuple[HealthEvent, int]] = {}

    def send(self, event: HealthEvent) -> None:
        """Post one transition; raises httpx.HTTPError when Alertmanager does not take it."""
        key = f"{event.camera_id}:{event.check}"
        start_ns = self.open[key][1] if key in self.open else event.at_ns
        if event.status == "firing":
            self.open[key] = (event, event.at_ns)
        else:
            self.open.pop(key, None)
        self._post([health_payload(event, self.alertname, start_ns)])

    def resend(self) -> None:
        """Re-post every open alert."""
        if self.open:
            self._post([health_payload(event, self.alertname, start) for event, start in self.open.values()])

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        response = self.client.post(self.url, json=alerts)
        response.raise_for_status()

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()
