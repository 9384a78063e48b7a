"""Dependencies shared by the operator API's routers: the app's state and the caller's identity."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request

from linewatch.alerts.history import AlertHistory
from linewatch.alerts.metrics import AlertsMetrics


@dataclass(frozen=True)
class ApiContext:
    """What the routes read, built once by ``create_app`` and kept in ``app.state.context``.

    ``redis`` is the heatmap cache's client (keys under ``prefix``), ``state_client`` the alert state's.
    """

    redis: Any
    state_client: Any
    prefix: str
    history: AlertHistory
    metrics: AlertsMetrics
    tokens: dict[str, str]
    regions: dict[str, Any] = field(default_factory=dict)  # camera -> RoiConfig in normalised units (page drawing)


def context(request: Request) -> ApiContext:
    """The application's :class:`ApiContext`."""
    found: ApiContext = request.app.state.context
    return found


def identity(request: Request) -> str:
    """The identity of the request's bearer token; 401 when it is missing, empty or wrong."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    found = None
    for name, token in context(request).tokens.items():  # no early exit: timing tells nothing
        if hmac.compare_digest(presented.encode(), token.encode()) and scheme.lower() == "bearer" and presented:
            found = name
    if found is None:
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return str(found)


User = Annotated[str, Depends(identity)]
Context = Annotated[ApiContext, Depends(context)]


def text(value: Any) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def overlay_url(camera_id: str, sequence: int) -> str:
    """API path of one frame's overlay, the camera id percent-encoded (``/`` included)."""
    return f"/api/cameras/{quote(camera_id, safe='')}/frames/{sequence}/overlay.png"
