"""Camera-health state in Redis, for the alerts service and the operator page.

``p:cam:{camera}:health`` is a hash: check name -> JSON ``{"detail", "value", "threshold", "since_ns",
"line_id"}`` for every check firing now; it expires ``ttl_s`` after the last refresh, so when the health
service stops, cameras stop being reported unhealthy instead of staying so forever.

``p:health:cameras`` is a sorted set of the cameras that had a check firing (score: the last firing time),
expiring like the hashes: the operator page lists them even when the detector never saw the camera
(a camera that is silent or dead from the start). ``p:health:heartbeat`` (the service's wall clock, ns)
expires ``ttl_s`` after the service's last refresh: without it, "no check firing" means "not watched",
not "healthy".

Defect alerts: the alerts service reads :func:`failing_checks` once per consumed batch (one round trip
for every camera in it) and marks the alerts of unhealthy cameras suspect (``alerts.rules.mark_suspect``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from linewatch.health.checks import HealthEvent


def health_key(prefix: str, camera_id: str) -> str:
    """Hash of a camera's firing health checks."""
    return f"{prefix}:cam:{camera_id}:health"


def index_key(prefix: str) -> str:
    """Sorted set of the cameras that had a health check firing recently."""
    return f"{prefix}:health:cameras"


def heartbeat_key(prefix: str) -> str:
    """Set while a camera-health service refreshes its state."""
    return f"{prefix}:health:heartbeat"


def record(client: Any, prefix: str, event: HealthEvent, ttl_s: int) -> None:
    """Apply one health transition to the camera's hash."""
    key = health_key(prefix, event.camera_id)
    pipe = client.pipeline(transaction=True)
    if event.status == "firing":
        pipe.hset(key, event.check, json.dumps({"detail": event.detail, "value": event.value,
                                                "threshold": event.threshold, "since_ns": event.at_ns,
                                                "line_id": event.line_id}))
        pipe.expire(key, ttl_s)
        pipe.zadd(index_key(prefix), {event.camera_id: event.at_ns})
        pipe.expire(index_key(prefix), ttl_s)
    else:
        pipe.hdel(key, event.check)
    pipe.execute()


def refresh(client: Any, prefix: str, camera_ids: list[str], ttl_s: int) -> None:
    """Extend the expiry of the hashes of cameras that are unhealthy now, and the service's heartbeat."""
    pipe = client.pipeline(transaction=False)
    pipe.set(heartbeat_key(prefix), time.time_ns(), ex=ttl_s)
    for camera_id in camera_ids:
        pipe.expire(health_key(prefix, camera_id), ttl_s)
    if camera_ids:
        pipe.expire(index_key(prefix), ttl_s)
    pipe.execute()


def unhealthy_checks(client: Any, prefix: str, camera_id: str) -> dict[str, dict[str, Any]]:
    """The checks firing now for one camera (empty when healthy or unknown)."""
    raw = client.hgetall(health_key(prefix, camera_id))
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


def failing_checks(client: Any, prefix: str, camera_ids: list[str]) -> dict[str, list[str]]:
    """Camera id -> names of its checks firing now (sorted), for the cameras that have any; one round trip."""
    pipe = client.pipeline(transaction=False)
    for camera_id in camera_ids:
        pipe.hkeys(health_key(prefix, camera_id))
    found = {camera_id: sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys)
             for camera_id, keys in zip(camera_ids, pipe.execute(), strict=True)}
    return {camera_id: checks for camera_id, checks in found.items() if checks}


def recently_unhealthy(client: Any, prefix: str) -> list[str]:
    """Cameras that had a check firing within the index's lifetime (their hashes may have emptied since)."""
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in client.zrange(index_key(prefix), 0, -1))


def health_details(client: Any, prefix: str, camera_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Camera id -> check -> its details (``detail``, ``value``, ``threshold``, ``since_ns``), every camera
    given (empty when healthy); one round trip. A value that does not parse is shown as such, not raised."""
    pipe = client.pipeline(transaction=False)
    for camera_id in camera_ids:
        pipe.hgetall(health_key(prefix, camera_id))
    return {camera_id: {(k.decode() if isinstance(k, bytes) else str(k)): _details(v) for k, v in raw.items()}
            for camera_id, raw in zip(camera_ids, pipe.execute(), strict=True)}


def _details(raw: Any) -> dict[str, Any]:
    try:
        found = json.loads(raw)
    except ValueError:
        return {"detail": "unreadable health record"}
    return found if isinstance(found, dict) else {"detail": "unreadable health record"}


def monitored(client: Any, prefix: str) -> bool:
    """True while a camera-health service is refreshing its state."""
    return bool(client.exists(heartbeat_key(prefix)))
