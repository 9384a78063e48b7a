"""Alerts, the frames around an alert's worst one, acknowledgements and the history."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from linewatch.alerts.history import AlertHistory, HistoryEntry
from linewatch.alerts.routes.cameras import overlay_png
from linewatch.alerts.routes.deps import ApiContext, Context, User, overlay_url, text
from linewatch.alerts.rules import Alert
from linewatch.common import cache_keys as ck

FRAMES_AROUND = 4
_FRAME_FIELDS = [ck.FIELD_NORMALISED_SCORE, ck.FIELD_ANOMALOUS, ck.FIELD_CAPTURE_NS]

router = APIRouter()


class AckRequest(BaseModel):
    """Body of an acknowledgement. Who acknowledged is the token's identity; a ``who`` field is refused."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)


def known(history: AlertHistory, alert_id: str) -> Alert:
    """The alert, or 404."""
    alert = history.get(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert


def frames_around(ctx: ApiContext, alert: Alert) -> list[dict[str, Any]]:
    """The cached frames within ``FRAMES_AROUND`` of the alert's worst one (expired ones left out)."""
    sequences = range(max(0, alert.worst_sequence - FRAMES_AROUND), alert.worst_sequence + FRAMES_AROUND + 1)
    pipe = ctx.redis.pipeline(transaction=False)
    for sequence in sequences:
        pipe.hmget(ck.heatmap_key(ctx.prefix, alert.camera_id, sequence), _FRAME_FIELDS)
    return [{"sequence": seq, "normalised_score": float(score), "anomalous": text(anomalous or b"0") == "1",
             "capture_ns": int(capture or 0), "worst": seq == alert.worst_sequence,
             "overlay_url": overlay_url(alert.camera_id, seq)}
            for seq, (score, anomalous, capture) in zip(sequences, pipe.execute(), strict=True)
            if score is not None]


@router.get("/api/alerts")
def alerts(ctx: Context, _who: User, state: str | None = None, line: str | None = None, camera: str | None = None,
           since_ns: int | None = None, until_ns: int | None = None,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Alert]:
    """Alerts, newest first, filtered."""
    return ctx.history.list_alerts(state=state, line_id=line, camera_id=camera, since_ns=since_ns,
                                   until_ns=until_ns, limit=limit)


@router.get("/api/alerts/{alert_id}")
def alert_detail(alert_id: str, ctx: Context, _who: User) -> dict[str, Any]:
    """One alert with its frames and the URL of its worst heatmap (when the detector cached it)."""
    alert = known(ctx.history, alert_id)
    heatmap_url = f"/api/alerts/{quote(alert_id, safe='')}/heatmap.png" if alert.worst_heatmap_key else None
    return {"alert": alert.model_dump(mode="json"), "frames": frames_around(ctx, alert), "heatmap_url": heatmap_url}


@router.get("/api/alerts/{alert_id}/heatmap.png")
def alert_heatmap(alert_id: str, ctx: Context, _who: User) -> Response:
    """The overlay of the alert's worst frame."""
    alert = known(ctx.history, alert_id)
    if not alert.worst_heatmap_key:
        raise HTTPException(404, "the detector did not cache this alert's worst heatmap")
    return overlay_png(ctx.redis, alert.worst_heatmap_key)


@router.post("/api/alerts/{alert_id}/ack")
def acknowledge(alert_id: str, body: AckRequest, ctx: Context, who: User) -> Alert:
    """Acknowledge as the token's identity."""
    known(ctx.history, alert_id)
    acked = ctx.history.acknowledge(alert_id, by=who, note=body.note)
    if acked is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return acked


@router.get("/api/history")
def history_entries(ctx: Context, _who: User, kind: str | None = None, line: str | None = None,
                    camera: str | None = None, since_ns: int | None = None, until_ns: int | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[HistoryEntry]:
    """Alert events and acknowledgements, filtered."""
    return ctx.history.query(kind=kind, line_id=line, camera_id=camera, since_ns=since_ns, until_ns=until_ns,
                             limit=limit)
