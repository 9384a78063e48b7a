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

import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from linewatch.alerts.history import AlertHistory, HistoryEntry
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.rules import Alert
from linewatch.alerts.settings import AlertsSettings
from linewatch.common import cache_keys

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
FRAMES_AROUND = 4


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class AckRequest(BaseModel):
    """Body of an acknowledgement. Who acknowledged is the token's identity; a ``who`` field is refused."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)


def identity(request: Request) -> str:
    """The identity of the request's bearer token; 401 when it is missing, empty or wrong."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    found = None
    for name, token in request.app.state.tokens.items():  # no early exit: timing tells nothing
        if hmac.compare_digest(presented.encode(), token.encode()) and scheme.lower() == "bearer" and presented:
            found = name
    if found is None:
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return str(found)


User = Annotated[str, Depends(identity)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def overlay_url(camera_id: str, sequence: int) -> str:
    """API path of one frame's overlay, the camera id percent-encoded (``/`` included)."""
    return f"/api/cameras/{quote(camera_id, safe='')}/frames/{sequence}/overlay.png"


def create_app(settings: AlertsSettings, metrics: AlertsMetrics, client: Any = None,
               state_client: Any = None) -> FastAPI:
    """The FastAPI application. ``client``: the heatmap cache's redis client, ``state_client`` the alert
    state's (by default both from the settings; ``state_client`` falls back to ``client``)."""
    redis = client if client is not None else settings.redis.client()
    if state_client is None:
        state_client = client if client is not None else settings.state_store_redis().client()
    prefix = settings.redis.key_prefix
    history = AlertHistory(state_client, prefix, maxlen=settings.history_maxlen,
                           retention_s=settings.alert_retention_s, recent=settings.recent_alerts,
                           open_ttl_s=settings.state_ttl_s)
    tokens = {"operator": settings.api_token.get_secret_value()}
    tokens.update({name: token.get_secret_value() for name, token in settings.api_users.items()})
    app = FastAPI(title="linewatch alerts", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tokens = tokens

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/livez")
    def livez() -> dict[str, str]:
        """Liveness: the process answers. Redis is readiness (/health), so a Redis outage never restarts us."""
        return {"status": "alive"}

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            ok = bool(redis.ping()) and bool(state_client.ping())
        except Exception:
            ok = False
        return JSONResponse({"status": "ok" if ok else "degraded", "redis": ok}, status_code=200 if ok else 503)

    def metrics_body() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.http.metrics_public:
        app.get("/metrics")(metrics_body)
    else:
        @app.get("/metrics")
        def protected_metrics(_who: User) -> Response:
            return metrics_body()

    @app.get("/api/whoami")
    def whoami(who: User) -> dict[str, str]:
        return {"identity": who}

    @app.get("/api/cameras")
    def cameras(_who: User) -> list[dict[str, Any]]:
        ids = sorted(_text(c) for c in redis.smembers(cache_keys.cameras_key(prefix)))
        pipe = redis.pipeline(transaction=False)
        for camera in ids:
            pipe.hgetall(cache_keys.latest_key(prefix, camera))
        found = []
        for camera, latest in zip(ids, pipe.execute(), strict=True):
            row = {_text(k): _text(v) for k, v in latest.items()}
            sequence = int(row.get("sequence", -1))
            url = overlay_url(camera, sequence) if row.get("heatmap_key") else None
            found.append({
                "camera_id": camera, "line_id": row.get("line_id", ""), "sequence": sequence,
                "normalised_score": float(row.get("normalised_score", 0.0)),
                "anomalous": row.get("anomalous") == "1", "capture_ns": int(row.get("capture_ns", 0)),
                "updated_ns": int(row.get("updated_ns", 0)),
                "overlay_url": url,
            })
        return found

    def png(key: str) -> Response:
        data = redis.hget(key, "overlay")
        if data is None:
            raise HTTPException(404, "heatmap not in Redis (expired or never cached)")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    @app.get("/api/cameras/{camera_id}/frames/{sequence}/overlay.png")
    def overlay(camera_id: str, sequence: int, _who: User) -> Response:
        return png(cache_keys.heatmap_key(prefix, camera_id, sequence))

    @app.get("/api/alerts")
    def alerts(_who: User, state: str | None = None, line: str | None = None, camera: str | None = None,
               since_ns: int | None = None, until_ns: int | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Alert]:
        return history.list_alerts(state=state, line_id=line, camera_id=camera, since_ns=since_ns,
                                   until_ns=until_ns, limit=limit)

    def known(alert_id: str) -> Alert:
        alert = history.get(alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return alert

    @app.get("/api/alerts/{alert_id}")
    def alert_detail(alert_id: str, _who: User) -> dict[str, Any]:
        alert = known(alert_id)
        sequences = range(max(0, alert.worst_sequence - FRAMES_AROUND), alert.worst_sequence + FRAMES_AROUND + 1)
        pipe = redis.pipeline(transaction=False)
        for sequence in sequences:
            pipe.hmget(cache_keys.heatmap_key(prefix, alert.camera_id, sequence),
                       ["normalised_score", "anomalous", "capture_ns"])
        frames = [{"sequence": seq, "normalised_score": float(score), "anomalous": _text(anomalous or b"0") == "1",
                   "capture_ns": int(capture or 0), "worst": seq == alert.worst_sequence,
                   "overlay_url": overlay_url(alert.camera_id, seq)}
                  for seq, (score, anomalous, capture) in zip(sequences, pipe.execute(), strict=True)
                  if score is not None]
        return {"alert": alert.model_dump(mode="json"), "frames": frames,
                "heatmap_url": f"/api/alerts/{quote(alert_id, safe='')}/heatmap.png" if alert.worst_heatmap_key
                else None}

    @app.get("/api/alerts/{alert_id}/heatmap.png")
    def alert_heatmap(alert_id: str, _who: User) -> Response:
        alert = known(alert_id)
        if not alert.worst_heatmap_key:
            raise HTTPException(404, "the detector did not cache this alert's worst heatmap")
        return png(alert.worst_heatmap_key)

    @app.post("/api/alerts/{alert_id}/ack")
    def acknowledge(alert_id: str, body: AckRequest, who: User) -> Alert:
        known(alert_id)
        acked = history.acknowledge(alert_id, by=who, note=body.note)
        if acked is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return acked

    @app.get("/api/history")
    def history_entries(_who: User, kind: str | None = None, line: str | None = None, camera: str | None = None,
                        since_ns: int | None = None, until_ns: int | None = None,
                        limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[HistoryEntry]:
        return history.query(kind=kind, line_id=line, camera_id=camera, since_ns=since_ns, until_ns=until_ns,
                             limit=limit)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
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
