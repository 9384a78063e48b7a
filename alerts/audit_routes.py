"""Operator API routes backed by the registry database: the audit trail and operator feedback.

``create_app`` includes them with one line (the caller passes its bearer-token dependency, so this
module does not import the API module and the API keeps one definition of identity)::

    app.include_router(audit_routes.router(identity, redis=redis, prefix=prefix))

- ``GET  /api/audit?camera=&since=&until=&sequence=&limit=``  audit rows (``since``: 2h, ISO time or ns);
- ``POST /api/feedback``  mark a frame "false_alarm" or "real_defect" as the token's identity; the
  frame's heatmap overlay is copied from Redis into the record so it outlives the cache.

The database is ``LINEWATCH_REGISTRY__DATABASE_URL`` (the same one ``linewatch audit run`` writes),
opened on first use; while it is unreachable these routes answer 503 and the rest of the API works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from linewatch.common import cache_keys
from linewatch.common.heatmap_codec import HeatmapDataError, read_overlay
from linewatch.detector.registry.audit import query_audit
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.errors import RegistryError
from linewatch.detector.registry.feedback import FeedbackError, record_feedback
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.times import parse_since


class FeedbackRequest(BaseModel):
    """An operator's judgement of one frame."""

    camera_id: str = Field(min_length=1, max_length=200)
    sequence: int = Field(ge=0)
    verdict: Literal["false_alarm", "real_defect"]
    defect_type: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    alert_id: str | None = Field(default=None, max_length=200)
    note: str = Field(default="", max_length=2000)


def _time(value: str | None) -> int | None:
    """A query-string time: integer ns, a duration back from now, or an ISO time."""
    if value is None or value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        return parse_since(value)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


class _Registry:
    """The database, opened on first use: the operator API starts (and serves alerts) while it is down."""

    def __init__(self, database: Database | None) -> None:
        self._db = database

    def get(self) -> Database:
        if self._db is None:
            try:
                self._db = Database(RegistrySettings().registry.database_url)
            except SQLAlchemyError as exc:
                raise HTTPException(503, f"registry database unavailable: {type(exc).__name__}") from None
            except RegistryError as exc:  # e.g. at another schema revision: say which, and how to fix it
                raise HTTPException(503, str(exc)) from None
        return self._db


def router(user: Callable[..., str], *, database: Database | None = None, redis: Any = None,
           prefix: str = "lw") -> APIRouter:
    """The routes; ``user`` is the API's bearer-token dependency (returns the identity or raises 401)."""
    registry = _Registry(database)
    routes = APIRouter()
    who = Depends(user)  # a default value, not an annotation: string annotations cannot see this scope

    @routes.get("/api/audit")
    def audit(camera: str | None = None, since: str | None = None, until: str | None = None,
              sequence: int | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
              _who: str = who) -> list[dict[str, Any]]:
        try:
            return query_audit(registry.get(), camera=camera, since_ns=_time(since), until_ns=_time(until),
                               sequence=sequence, limit=limit)
        except SQLAlchemyError as exc:
            raise HTTPException(503, f"registry database unavailable: {type(exc).__name__}") from None

    @routes.post("/api/feedback", status_code=201)
    def feedback(body: FeedbackRequest, by: str = who) -> dict[str, Any]:
        heatmap = None
        if redis is not None:
            with contextlib.suppress(HeatmapDataError):  # an undrawable heatmap: the feedback is saved without it
                heatmap = read_overlay(redis, cache_keys.heatmap_key(prefix, body.camera_id, body.sequence))
        try:
            entry = record_feedback(registry.get(), camera_id=body.camera_id, sequence=body.sequence,
                                    verdict=body.verdict, by=by, defect_type=body.defect_type,
                                    alert_id=body.alert_id, note=body.note, heatmap_png=heatmap)
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from None
        except SQLAlchemyError as exc:
            raise HTTPException(503, f"registry database unavailable: {type(exc).__name__}") from None
        return {"id": entry.id, "camera_id": entry.camera_id, "sequence": entry.sequence, "verdict": entry.verdict,
                "product": entry.product, "model_version": entry.model_version, "by": entry.by,
                "heatmap_saved": entry.heatmap_png is not None}

    return routes
