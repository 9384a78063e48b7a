"""Camera-health state in Redis, for the alerts service and the operator page.

``p:cam:{camera}:health`` is a hash: check name -> JSON ``{"detail", "value", "threshold", "since_ns"}``
for every check firing now; it expires ``ttl_s`` after the last refresh, so when the health service
stops, cameras stop being reported unhealthy instead of staying so forever.

Hook for defect alerts (alerts/rules or alerts/service, owned by the alerts engineer): when a defect
alert fires or updates, ``suspect = bool(unhealthy_checks(client, prefix, camera_id))``.
"""

from __future__ import annotations

import json
from typing import Any

from linewatch.alerts.health.checks import HealthEvent


def health_key(prefix: str, camera_id: str) -> str:
    """Hash of a camera's firing health checks."""
    return f"{prefix}:cam:{camera_id}:health"


def record(client: Any, prefix: str, event: HealthEvent, ttl_s: int) -> None:
    """Apply one health transition to the camera's hash."""
    key = health_key(prefix, event.camera_id)
    pipe = client.pipeline(transaction=True)
    if event.status == "firing":
        pipe.hset(key, event.check, json.dumps({"detail": event.detail, "value": event.value,
                                                "threshold": event.threshold, "since_ns": event.at_ns}))
        pipe.expire(key, ttl_s)
    else:
        pipe.hdel(key, event.check)
    pipe.execute()


def refresh(client: Any, prefix: str, camera_ids: list[str], ttl_s: int) -> None:
    """Extend the expiry of the hashes of cameras that are unhealthy now."""
    pipe = client.pipeline(transaction=False)
    for camera_id in camera_ids:
        pipe.expire(health_key(prefix, camera_id), ttl_s)
    pipe.execute()


def unhealthy_checks(client: Any, prefix: str, camera_id: str) -> dict[str, dict[str, Any]]:
    """The checks firing now for one camera (empty when healthy or unknown)."""
    raw = client.hgetall(health_key(prefix, camera_id))
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
