"""Liveness, readiness and Prometheus metrics of the alerts service, and the cameras' health for the page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from linewatch.alerts.routes.deps import Context, User, text
from linewatch.common import cache_keys as ck
from linewatch.health.state import health_details, monitored, recently_unhealthy


def _livez() -> dict[str, str]:
    """Liveness: the process answers. Redis is readiness (/health), so a Redis outage never restarts us."""
    return {"status": "alive"}


def _health(ctx: Context) -> JSONResponse:
    """Readiness: both Redis clients answer a PING."""
    try:
        ok = bool(ctx.redis.ping()) and bool(ctx.state_client.ping())
    except Exception:  # any client failure means not ready, never a 500
        ok = False
    return JSONResponse({"status": "ok" if ok else "degraded", "redis": ok}, status_code=200 if ok else 503)


def _metrics_body(ctx: Context) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _protected_metrics(ctx: Context, _who: User) -> Response:
    return _metrics_body(ctx)


def camera_health_row(camera_id: str, checks: dict[str, dict[str, Any]], *, monitored: bool) -> dict[str, Any]:
    """One camera's entry of ``/api/camera-health``: its ``health`` and its failing checks oldest first.

    ``health`` is "healthy", "unhealthy", or "unknown" while the camera-health service is not reporting:
    no check runs then, so the absence of failing checks proves nothing (``healthy`` is true only for "healthy"), and
    the checks listed are the last ones it recorded.
    """
    failing = sorted(({"check": name, "detail": str(d.get("detail", "")), "since_ns": _nanoseconds(d.get("since_ns")),
                       "value": d.get("value"), "threshold": d.get("threshold")} for name, d in checks.items()),
                     key=lambda c: (c["since_ns"], c["check"]))
    line = next((str(d["line_id"]) for d in checks.values() if d.get("line_id")), "")
    health = "unknown" if not monitored else "unhealthy" if failing else "healthy"
    return {"camera_id": camera_id, "line_id": line, "health": health, "healthy": health == "healthy",
            "checks": failing}


def _nanoseconds(value: Any) -> int:
    """A stored time, 0 when it is missing or not a number (a damaged record must not fail the page)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _camera_health(ctx: Context, _who: User) -> dict[str, Any]:
    """Read-only: each camera's failing health checks (``linewatch camera-health``), and whether that service
    is reporting at all. Cameras: those the detector saw, plus those with a recent health alert."""
    cameras = sorted({text(c) for c in ctx.redis.smembers(ck.cameras_key(ctx.prefix))}
                     | set(recently_unhealthy(ctx.redis, ctx.prefix)))
    details = health_details(ctx.redis, ctx.prefix, cameras) if cameras else {}
    reporting = monitored(ctx.redis, ctx.prefix)
    return {"monitored": reporting,
            "cameras": [camera_health_row(camera, details[camera], monitored=reporting) for camera in cameras]}


def router(*, metrics_public: bool) -> APIRouter:
    """The routes; ``/metrics`` needs the bearer token unless ``metrics_public``."""
    routes = APIRouter()
    routes.get("/livez")(_livez)
    routes.get("/health")(_health)
    routes.get("/metrics")(_metrics_body if metrics_public else _protected_metrics)
    routes.get("/api/camera-health")(_camera_health)
    return routes
