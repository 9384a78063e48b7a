"""Promoted models that a detector refuses, for the page's banner (``GET /api/model-refusals``).

The detector's hot swap writes each standing refusal to Redis (:mod:`common.cache_keys`, model
refusals) and refreshes it while the registry still assigns the refused version; an entry whose hash
has expired (its detector stopped refreshing it) is dropped from the index here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from linewatch.alerts.routes.deps import Context, User, text
from linewatch.common import cache_keys as ck

_FIELDS = {"product": ck.FIELD_REFUSAL_PRODUCT, "line": ck.FIELD_REFUSAL_LINE, "version": ck.FIELD_REFUSAL_VERSION,
           "reason": ck.FIELD_REFUSAL_REASON, "detail": ck.FIELD_REFUSAL_DETAIL,
           "running_version": ck.FIELD_REFUSAL_RUNNING_VERSION}


def standing_refusals(client: Any, prefix: str) -> list[dict[str, Any]]:
    """Every standing refusal, by product and line."""
    index = ck.model_refusals_key(prefix)
    keys = sorted(text(key) for key in client.smembers(index))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    hashes = pipe.execute() if keys else []
    expired = [key for key, fields in zip(keys, hashes, strict=True) if not fields]
    if expired:
        client.srem(index, *expired)
    return [refusal_row(fields) for fields in hashes if fields]


def refusal_row(fields: dict[Any, Any]) -> dict[str, Any]:
    """One refusal of the API from its Redis hash; a damaged field reads as empty, never as a failed page."""
    stored = {text(name): text(value) for name, value in fields.items()}
    row: dict[str, Any] = {name: stored.get(field, "") for name, field in _FIELDS.items()}
    since = stored.get(ck.FIELD_REFUSAL_SINCE_NS, "")
    row["since_ns"] = int(since) if since.isdigit() else 0
    return row


def _model_refusals(ctx: Context, _who: User) -> dict[str, Any]:
    """Read-only: the promoted models detectors refuse now (each keeps scoring with its previous model)."""
    return {"refusals": standing_refusals(ctx.redis, ctx.prefix)}


router = APIRouter()
router.get("/api/model-refusals")(_model_refusals)
