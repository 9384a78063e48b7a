"""Prometheus Alertmanager, API v2: ``POST /api/v2/alerts``.

Alerts are told apart by their labels (alertname, line, camera, severity, alert_id, suspect); a
resolved alert is the same labels sent again with ``endsAt``; so is an alert whose camera went silent, with
annotation ``state: silent`` (its webhook/topic event is the distinct kind ``silent``). Alertmanager resolves a firing
alert by itself after its ``resolve_timeout`` unless it is re-sent, so the service calls
:meth:`AlertmanagerChannel.resend` for open alerts periodically.

``suspect="true"`` marks a defect alert raised while its camera was unhealthy (annotation
``suspect_checks``), so that routes and inhibitions can treat it apart. When an open alert turns suspect
(event kind ``suspect``) its label set changes, which for Alertmanager is another alert: the old label
set is sent ended and the new one firing, so nothing is left to time out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from linewatch.alerts.deliveries import alert_links
from linewatch.alerts.deliveries.http import post
from linewatch.alerts.rules import Alert, AlertEvent


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def payload(alert: Alert, *, alertname: str, public_base_url: str) -> dict[str, Any]:
    """The Alertmanager v2 representation of one alert."""
    links = alert_links(public_base_url, alert)
    item: dict[str, Any] = {
        "labels": {"alertname": alertname, "line": alert.line_id, "camera": alert.camera_id,
                   "severity": alert.severity, "alert_id": alert.alert_id,
                   "suspect": "true" if alert.suspect else "false"},
        "annotations": {
            "summary": f"Defect on {alert.line_id}/{alert.camera_id}: {alert.frame_count} breaching frames, "
                       f"peak score {alert.peak_score:.2f}",
            "peak_score": f"{alert.peak_score:.4f}", "frame_count": str(alert.frame_count),
            "worst_sequence": str(alert.worst_sequence), **links,
        },
        "startsAt": _iso(alert.start_ns),
        "generatorURL": links["alert_url"],
    }
    if alert.suspect:
        checks = ", ".join(alert.suspect_checks)
        item["annotations"]["suspect_checks"] = checks
        item["annotations"]["summary"] = f"SUSPECT (camera unhealthy: {checks}): " + item["annotations"]["summary"]
    if alert.state == "silent":
        item["annotations"]["state"] = "silent"
        item["annotations"]["summary"] += "; the camera went silent, the alert cannot resolve by itself"
    if alert.state in ("resolved", "silent") and alert.end_ns is not None:
        item["endsAt"] = _iso(max(alert.end_ns, alert.start_ns + 1_000_000))
    return item


class AlertmanagerChannel:
    """Sends alert transitions to one Alertmanager."""

    name = "alertmanager"
    kinds: tuple[str, ...] = ("firing", "resolved", "silent", "suspect")

    def __init__(self, url: str, *, alertname: str, public_base_url: str, timeout_s: float = 5.0) -> None:
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self.alertname, self.public_base_url = alertname, public_base_url
        self.client = httpx.Client(timeout=timeout_s)

    def send(self, event: AlertEvent) -> None:
        """POST one alert (firing, or resolved with endsAt); a turn to suspect ends the unmarked label set."""
        if event.kind != "suspect":
            self.resend([event.alert])
            return
        unmarked = payload(event.alert.model_copy(update={"suspect": False, "suspect_checks": []}),
                           alertname=self.alertname, public_base_url=self.public_base_url)
        unmarked["endsAt"] = _iso(time.time_ns())
        marked = payload(event.alert, alertname=self.alertname, public_base_url=self.public_base_url)
        post(self.client, self._url, json=[unmarked, marked])

    def resend(self, alerts: list[Alert]) -> None:
        """POST several alerts at once (the periodic re-send of open ones)."""
        if alerts:
            body = [payload(a, alertname=self.alertname, public_base_url=self.public_base_url) for a in alerts]
            post(self.client, self._url, json=body)
