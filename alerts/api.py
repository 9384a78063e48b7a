"""Operator HTTP API and web page of ``linewatch alerts``.

``/health`` is open; every ``/api/*`` route and ``/metrics`` (unless ``http.metrics_public``)
need ``Authorization: Bearer <token>``, compared in constant time with every configured token
(tokens are checked for strength at start-up, :func:`alerts.settings.token_problem`). An
acknowledgement records the identity of the token that made it, never a name from the request body.
The page itself (``/`` and ``/static/*``) holds no data: it asks for the token in a login field,
keeps it in ``sessionStorage`` and sends it with every API call. Every response carries a strict
Content-Security-Policy (own scripts, styles and images only; no framing), ``X-Frame-Options: DENY``,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``. Ids in URLs are percent-encoded.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from linewatch.alerts.history import AlertHistory
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.routes import alerts as alert_routes
from linewatch.alerts.routes import cameras as camera_routes
from linewatch.alerts.routes import health as health_routes
from linewatch.alerts.routes import pages as page_routes
from linewatch.alerts.routes import refusals as refusal_routes
from linewatch.alerts.routes.deps import ApiContext, User, identity, overlay_url
from linewatch.alerts.settings import AlertsSettings

__all__ = ["SECURITY_HEADERS", "ApiContext", "ServerHandle", "User", "create_app", "identity", "overlay_url",
           "start_server"]

log = logging.getLogger(__name__)


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Add :data:`SECURITY_HEADERS` to every response, and ``no-store`` to the API's."""
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.url.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def api_tokens(settings: AlertsSettings) -> dict[str, str]:
    """Identity -> bearer token: ``operator`` for ``api_token``, then every ``api_users`` entry."""
    tokens = {"operator": settings.api_token.get_secret_value()}
    tokens.update({name: token.get_secret_value() for name, token in settings.api_users.items()})
    return tokens


def api_context(settings: AlertsSettings, metrics: AlertsMetrics, client: Any = None,
                state_client: Any = None) -> ApiContext:
    """The routes' shared state; the Redis clients default to the settings' (see :func:`create_app`)."""
    redis = client if client is not None else settings.redis.client()
    if state_client is None:
        state_client = client if client is not None else settings.state_store_redis().client()
    prefix = settings.redis.key_prefix
    history = AlertHistory(state_client, prefix, maxlen=settings.history_maxlen,
                           retention_s=settings.alert_retention_s, recent=settings.recent_alerts,
                           open_ttl_s=settings.state_ttl_s)
    return ApiContext(redis=redis, state_client=state_client, prefix=prefix, history=history, metrics=metrics,
                      tokens=api_tokens(settings),
                      regions={camera: roi.normalised() for camera, roi in settings.regions().items()})


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add ``router``'s routes to ``app`` as its own, flat (no prefix or router-level dependencies here).

    Not ``include_router``: since FastAPI 0.165 that nests the router, and ``app.routes`` no longer lists
    the API routes that the access tests enumerate to prove every one of them needs the token.
    """
    app.router.routes.extend(router.routes)


def registry_routes(ctx: ApiContext) -> APIRouter:
    """The audit and feedback routes; they need the registry database client (the ``lifecycle`` extra).

    Without it (an alerts box installed with ``linewatch[alerts]`` only) they answer 503 and say what to
    install, and the rest of the API works, as when the database is unreachable.
    """
    if importlib.util.find_spec("sqlalchemy") is not None:
        from linewatch.alerts import audit_routes

        return audit_routes.router(identity, redis=ctx.redis, prefix=ctx.prefix)
    log.warning("audit and feedback routes off: the registry database client is not installed "
                "(pip install 'linewatch[lifecycle]')")
    routes = APIRouter()
    who = Depends(identity)  # still 401 first: an unauthenticated caller learns nothing about the install

    @routes.api_route("/api/audit", methods=["GET"])
    @routes.api_route("/api/feedback", methods=["POST"])
    def not_installed(_who: str = who) -> None:
        raise HTTPException(503, "the registry database client is not installed: pip install 'linewatch[lifecycle]'")

    return routes


def create_app(settings: AlertsSettings, metrics: AlertsMetrics, client: Any = None,
               state_client: Any = None) -> FastAPI:
    """The FastAPI application. ``client``: the heatmap cache's redis client, ``state_client`` the alert
    state's (by default both from the settings; ``state_client`` falls back to ``client``)."""
    ctx = api_context(settings, metrics, client, state_client)
    app = FastAPI(title="linewatch alerts", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = ctx
    app.middleware("http")(security_headers)
    for router in (health_routes.router(metrics_public=settings.http.metrics_public), page_routes.router,
                   camera_routes.router, alert_routes.router, refusal_routes.router, registry_routes(ctx)):
        add_routes(app, router)
    app.mount("/static", StaticFiles(directory=page_routes.WEB_DIR), name="static")
    return app


class ServerHandle:
    """A uvicorn server running in a background thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_server(settings: AlertsSettings, metrics: AlertsMetrics, timeout_s: float = 20.0) -> ServerHandle:
    """Serve the API on ``settings.http`` in a daemon thread; returns once it accepts connections."""
    import uvicorn

    if settings.http.metrics_public and settings.http.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("/metrics is served without the bearer token on %s: make sure port %d is reachable only from "
                    "the monitoring network", settings.http.host, settings.http.port)
    config = uvicorn.Config(create_app(settings, metrics), host=settings.http.host, port=settings.http.port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="alerts-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"operator API did not start on {settings.http.host}:{settings.http.port}")
        time.sleep(0.05)
    return ServerHandle(server, thread)
