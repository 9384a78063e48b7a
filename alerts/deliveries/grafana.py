"""Grafana annotations through grafana-client: one region annotation per resolved (or silent) alert.

The region spans the alert from start to end and is tagged ``linewatch``, ``line:<id>``,
``camera:<id>`` and ``severity:<name>``, so a dashboard's annotation query can filter by tag.
Firing alerts are not annotated (a region needs its end); the ``linewatch_alerts_firing``
gauge shows them. Grafana renders the text as HTML, so every id in it is escaped.
"""

from __future__ import annotations

import html
from typing import Any

from linewatch.alerts.deliveries import DeliveryError, alert_links
from linewatch.alerts.deliveries.http import scrub
from linewatch.alerts.rules import Alert, AlertEvent


def annotation(alert: Alert, public_base_url: str) -> dict[str, Any]:
    """Keyword arguments of ``GrafanaApi.annotations.add_annotation`` for one resolved alert."""
    end_ns = alert.end_ns if alert.end_ns is not None else alert.start_ns
    e = html.escape
    ended = " (camera went silent)" if alert.state == "silent" else ""
    suspect = f"Suspect (camera unhealthy: {e(', '.join(alert.suspect_checks))}). " if alert.suspect else ""
    text = (f"{suspect}Defect alert {e(alert.alert_id)} on {e(alert.line_id)}/{e(alert.camera_id)}: "
            f"{e(alert.severity)}, "
            f"peak score {alert.peak_score:.2f}, {alert.frame_count} breaching frames{ended}. "
            f"<a href=\"{e(alert_links(public_base_url, alert)['alert_url'])}\">Open alert</a>")
    return {"time_from": alert.start_ns // 1_000_000, "time_to": end_ns // 1_000_000, "text": text,
            "tags": ["linewatch", f"line:{alert.line_id}", f"camera:{alert.camera_id}", f"severity:{alert.severity}"]
            + (["suspect"] if alert.suspect else [])}


class GrafanaChannel:
    """Writes region annotations to one Grafana (service account token)."""

    name = "grafana"
    kinds: tuple[str, ...] = ("resolved", "silent")

    def __init__(self, url: str, token: str, *, public_base_url: str, dashboard_uid: str | None = None,
                 timeout_s: float = 5.0) -> None:
        from grafana_client import GrafanaApi

        self.api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
        self.public_base_url, self.dashboard_uid, self._url = public_base_url, dashboard_uid, url

    def send(self, event: AlertEvent) -> None:
        """Create the region annotation of a resolved alert."""
        from grafana_client.client import GrafanaClientError

        kwargs = annotation(event.alert, self.public_base_url)
        if self.dashboard_uid:
            kwargs["dashboard_uid"] = self.dashboard_uid
        try:
            self.api.annotations.add_annotation(**kwargs)
        except GrafanaClientError as exc:
            permanent = exc.status_code not in (408, 429)
            raise DeliveryError(scrub(f"grafana: HTTP {exc.status_code}: {exc.message}", self._url),
                                permanent=permanent) from None
        except Exception as exc:  # grafana-client raises niquests errors on network failures
            raise DeliveryError(scrub(f"grafana: {type(exc).__name__}: {exc}", self._url)) from None
