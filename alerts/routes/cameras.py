"""Cameras and their heatmap overlays, read from the detector's Redis cache (:mod:`common.cache_keys`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from linewatch.alerts.routes.deps import Context, User, overlay_url, text
from linewatch.common import cache_keys as ck
from linewatch.common.heatmap_codec import HeatmapDataError, read_overlay

router = APIRouter()


def camera_row(camera: str, latest: dict[Any, Any]) -> dict[str, Any]:
    """One camera's entry of ``/api/cameras`` from its ``latest`` hash (empty when it expired)."""
    row = {text(k): text(v) for k, v in latest.items()}
    sequence = int(row.get(ck.FIELD_SEQUENCE, -1))
    return {
        "camera_id": camera, "line_id": row.get(ck.FIELD_LINE_ID, ""), "sequence": sequence,
        "normalised_score": float(row.get(ck.FIELD_NORMALISED_SCORE, 0.0)),
        "anomalous": row.get(ck.FIELD_ANOMALOUS) == "1", "capture_ns": int(row.get(ck.FIELD_CAPTURE_NS, 0)),
        "updated_ns": int(row.get(ck.FIELD_UPDATED_NS, 0)),
        "overlay_url": overlay_url(camera, sequence) if row.get(ck.FIELD_HEATMAP_KEY) else None,
    }


def cached_overlay(redis: Any, key: str) -> bytes | None:
    """The overlay PNG of heatmap hash ``key``, rendered on the first request and then kept a few minutes
    (``OVERLAY_CACHE_TTL_S``) so page refreshes and other operators do not render it again; None once expired.

    The cached copy is used only while the heatmap exists with the same capture time, so a camera that
    restarts its sequence numbers never gets an older frame's overlay.
    """
    cache_key = ck.overlay_cache_key(key)
    pipe = redis.pipeline(transaction=False)
    pipe.hget(key, ck.FIELD_CAPTURE_NS)
    pipe.hmget(cache_key, [ck.FIELD_CAPTURE_NS, ck.FIELD_OVERLAY])
    capture_ns, (cached_capture_ns, cached) = pipe.execute()
    if capture_ns is None:
        return None
    if cached is not None and cached_capture_ns == capture_ns:
        return bytes(cached)
    try:
        data = read_overlay(redis, key)
    except HeatmapDataError as exc:
        raise HTTPException(422, f"the cached heatmap cannot be drawn: {exc}") from None
    if data is not None:
        pipe = redis.pipeline(transaction=True)  # never a cached overlay without its TTL
        pipe.hset(cache_key, mapping={ck.FIELD_CAPTURE_NS: capture_ns, ck.FIELD_OVERLAY: data})
        pipe.expire(cache_key, ck.OVERLAY_CACHE_TTL_S)
        pipe.execute()
    return data


def overlay_png(redis: Any, key: str) -> Response:
    """The overlay PNG of heatmap hash ``key``; 404 once it expired."""
    data = cached_overlay(redis, key)
    if data is None:
        raise HTTPException(404, "heatmap not in Redis (expired or never cached)")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get("/api/cameras")
def cameras(ctx: Context, _who: User) -> list[dict[str, Any]]:
    """Every camera the detector has seen, with its latest score, in one pipeline."""
    ids = sorted(text(c) for c in ctx.redis.smembers(ck.cameras_key(ctx.prefix)))
    pipe = ctx.redis.pipeline(transaction=False)
    for camera in ids:
        pipe.hgetall(ck.latest_key(ctx.prefix, camera))
    return [camera_row(camera, latest) for camera, latest in zip(ids, pipe.execute(), strict=True)]


@router.get("/api/cameras/{camera_id}/frames/{sequence}/overlay.png")
def overlay(camera_id: str, sequence: int, ctx: Context, _who: User) -> Response:
    """One frame's heatmap overlay."""
    return overlay_png(ctx.redis, ck.heatmap_key(ctx.prefix, camera_id, sequence))


@router.get("/api/cameras/{camera_id}/regions")
def regions(camera_id: str, ctx: Context, _who: User) -> dict[str, Any]:
    """The camera's regions of interest / ignore masks in normalised (0..1) frame coordinates, as the
    detector applies them (``LINEWATCH_CAMERA_REGIONS_FILE`` / ``LINEWATCH_CAMERA_REGIONS``); a camera
    without regions has empty lists (its whole frame counts)."""
    roi = ctx.regions.get(camera_id)
    return {"camera_id": camera_id, "units": "normalised",
            "include": roi.include if roi is not None else [], "exclude": roi.exclude if roi is not None else []}
