"""Liveness, readiness and Prometheus metrics of the alerts service."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from linewatch.alerts.routes.deps import Context, User


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


def router(*, metrics_public: bool) -> APIRouter:
    """The routes; ``/metrics`` needs the bearer token unless ``metrics_public``."""
    routes = APIRouter()
    routes.get("/livez")(_livez)
    routes.get("/health")(_health)
    routes.get("/metrics")(_metrics_body if metrics_public else _protected_metrics)
    return routes
