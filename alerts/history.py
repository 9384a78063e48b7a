"""Alert records and their history in Redis, and operators' acknowledgements.

With ``p`` the Redis key prefix:

- ``p:alerts:alert:{id}``   JSON :class:`~alerts.rules.Alert` as of its last transition
                            (expires ``alert_retention_s`` after resolving or going silent,
                            ``open_ttl_s`` after its last refresh while open);
- ``p:alerts:acks:{id}``    list of JSON :class:`~alerts.rules.Acknowledgement`, append-only (a later
                            acknowledgement never replaces an earlier one; the identity is the
                            bearer token's), expiring with the alert;
- ``p:alerts:open``         set of firing alert ids;
- ``p:alerts:index``        sorted set of alert ids by start time (trimmed to ``recent_alerts``);
- ``p:alerts:history``      stream of events (firing, resolved, acknowledged), capped at
                            ``history_maxlen`` entries.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel

from linewatch.alerts.rules import Acknowledgement, Alert, AlertEvent

EventKind = Literal["firing", "resolved", "silent", "suspect", "acknowledged"]  # suspect: alerts.state


class HistoryEntry(BaseModel):
    """One line of the alert history."""

    entry_id: str
    kind: EventKind
    alert_id: str
    line_id: str
    camera_id: str
    severity: str
    at_ns: int
    by: str = ""
    note: str = ""


class AlertHistory:
    """Reads and writes alert records and the history stream."""

    def __init__(self, client: Any, prefix: str, *, maxlen: int = 100_000, retention_s: int = 30 * 86400,
                 recent: int = 200, open_ttl_s: int = 7 * 86400) -> None:
        self.client, self.maxlen, self.retention_s, self.recent = client, maxlen, retention_s, recent
        self.open_ttl_s = open_ttl_s
        self.base = f"{prefix}:alerts"

    def alert_key(self, alert_id: str) -> str:
        """Key of one alert's record."""
        return f"{self.base}:alert:{alert_id}"

    def ack_key(self, alert_id: str) -> str:
        """Key of one alert's acknowledgements (a list, oldest first)."""
        return f"{self.base}:acks:{alert_id}"

    @property
    def open_key(self) -> str:
        """Key of the set of open alert ids."""
        return f"{self.base}:open"

    @property
    def stream_key(self) -> str:
        """Key of the history stream."""
        return f"{self.base}:history"

    def stage_event(self, pipe: Any, event: AlertEvent) -> None:
        """Queue the writes of one transition on ``pipe`` (a MULTI pipeline of the caller)."""
        alert = event.alert
        key = self.alert_key(alert.alert_id)
        pipe.set(key, alert.model_dump_json(exclude={"ack", "acks"}))
        if event.kind == "firing":
            pipe.sadd(self.open_key, alert.alert_id)
            pipe.expire(key, self.open_ttl_s)
        else:
            pipe.srem(self.open_key, alert.alert_id)
            pipe.expire(key, self.retention_s)
            pipe.expire(self.ack_key(alert.alert_id), self.retention_s)
        pipe.zadd(f"{self.base}:index", {alert.alert_id: alert.start_ns})
        pipe.zremrangebyrank(f"{self.base}:index", 0, -self.recent - 1)
        at_ns = alert.start_ns if event.kind == "firing" else (alert.end_ns or alert.start_ns)
        self._stage_entry(pipe, event.kind, alert, at_ns)

    def _stage_entry(self, pipe: Any, kind: EventKind, alert: Alert, at_ns: int, by: str = "", note: str = "") -> None:
        fields = {"kind": kind, "alert_id": alert.alert_id, "line_id": alert.line_id, "camera_id": alert.camera_id,
                  "severity": alert.severity, "at_ns": str(at_ns), "by": by, "note": note}
        pipe.xadd(self.stream_key, fields, maxlen=self.maxlen, approximate=True)

    def refresh_open(self, alert_ids: list[str]) -> None:
        """Push back the expiry of open alerts' records (their camera still belongs to a live instance)."""
        pipe = self.client.pipeline(transaction=False)
        for alert_id in alert_ids:
            pipe.expire(self.alert_key(alert_id), self.open_ttl_s)
            pipe.expire(self.ack_key(alert_id), self.open_ttl_s)
        pipe.execute()

    def open_alerts(self) -> list[Alert]:
        """Every open alert, as stored."""
        ids = sorted(_text(i) for i in self.client.smembers(self.open_key))
        raws = self.client.mget([self.alert_key(i) for i in ids]) if ids else []
        return [Alert.model_validate_json(raw) for raw in raws if raw is not None]

    def _with_acks(self, alert: Alert, raws: list[Any]) -> Alert:
        alert.acks = [Acknowledgement.model_validate_json(raw) for raw in raws]
        alert.ack = alert.acks[0] if alert.acks else None
        return alert

    def get(self, alert_id: str) -> Alert | None:
        """One alert with its acknowledgements, or None when unknown or expired."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.alert_key(alert_id))
        pipe.lrange(self.ack_key(alert_id), 0, -1)
        raw, acks = pipe.execute()
        if raw is None:
            return None
        return self._with_acks(Alert.model_validate_json(raw), acks)

    def acknowledge(self, alert_id: str, by: str, note: str = "") -> Alert | None:
        """Append who acknowledged an alert, when, and why; None when the alert is unknown."""
        alert = self.get(alert_id)
        if alert is None:
            return None
        ack = Acknowledgement(by=by, at_ns=time.time_ns(), note=note)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self.ack_key(alert_id), ack.model_dump_json())
        pipe.expire(self.ack_key(alert_id), self.open_ttl_s if alert.state == "firing" else self.retention_s)
        self._stage_entry(pipe, "acknowledged", alert, ack.at_ns, by=by, note=note)
        pipe.execute()
        alert.acks.append(ack)
        alert.ack = alert.acks[0]
        return alert

    def list_alerts(self, *, state: str | None = None, line_id: str | None = None, camera_id: str | None = None,
                    since_ns: int | None = None, until_ns: int | None = None, limit: int = 100) -> list[Alert]:
        """Open alerts and recent ones, newest first, filtered; ``state`` is firing, resolved,
        acknowledged or unacknowledged."""
        ids = {_text(i) for i in self.client.smembers(self.open_key)}
        ids.update(_text(i) for i in self.client.zrevrange(f"{self.base}:index", 0, self.recent - 1))
        ordered = sorted(ids)
        if not ordered:
            return []
        pipe = self.client.pipeline(transaction=False)
        for alert_id in ordered:
            pipe.get(self.alert_key(alert_id))
            pipe.lrange(self.ack_key(alert_id), 0, -1)
        values = pipe.execute()
        alerts = []
        for raw, acks in zip(values[::2], values[1::2], strict=True):
            if raw is None:
                continue
            alert = self._with_acks(Alert.model_validate_json(raw), acks)
            if _matches(alert, state, line_id, camera_id, since_ns, until_ns):
                alerts.append(alert)
        alerts.sort(key=lambda a: a.start_ns, reverse=True)
        return alerts[:limit]

    def query(self, *, kind: str | None = None, line_id: str | None = None, camera_id: str | None = None,
              since_ns: int | None = None, until_ns: int | None = None, limit: int = 100) -> list[HistoryEntry]:
        """History entries, newest first, filtered by event kind, line, camera and event time."""
        found: list[HistoryEntry] = []
        # Entries are written after their event happened, so the stream id bounds the scan from below.
        low = f"{since_ns // 1_000_000}-0" if since_ns else "-"
        high = "+"
        while len(found) < limit:
            page = self.client.xrevrange(self.stream_key, max=high, min=low, count=500)
            if not page:
                break
            for entry_id, fields in page:
                entry = _entry(entry_id, fields)
                if ((kind is None or entry.kind == kind) and (line_id is None or entry.line_id == line_id)
                        and (camera_id is None or entry.camera_id == camera_id)
                        and (since_ns is None or entry.at_ns >= since_ns)
                        and (until_ns is None or entry.at_ns <= until_ns)):
                    found.append(entry)
            if len(page) < 500:
                break
            high = "(" + _text(page[-1][0])
        return found[:limit]


def _matches(alert: Alert, state: str | None, line_id: str | None, camera_id: str | None,
             since_ns: int | None, until_ns: int | None) -> bool:
    checks = [
        state not in ("firing", "resolved", "silent") or alert.state == state,
        state != "acknowledged" or alert.ack is not None,
        state != "unacknowledged" or alert.ack is None,
        line_id is None or alert.line_id == line_id,
        camera_id is None or alert.camera_id == camera_id,
        since_ns is None or (alert.end_ns if alert.end_ns is not None else time.time_ns()) >= since_ns,
        until_ns is None or alert.start_ns <= until_ns,
    ]
    return all(checks)

def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[Any, Any]) -> HistoryEntry:
    data: dict[str, Any] = {_text(k): _text(v) for k, v in fields.items()}
    return HistoryEntry.model_validate({**data, "entry_id": _text(entry_id)})
