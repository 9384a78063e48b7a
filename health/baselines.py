"""Where each camera's pixel baseline comes from, and keeping learned ones across restarts.

A baseline learned from the first frames after a start is only as good as the camera at that moment:
a camera that is dark or blurred when the service restarts would learn its fault as "normal" and never
be flagged. So a learned baseline is written to Redis (``p:cam:{camera}:baseline``, JSON ``{"mean",
"focus", "learned_at_ns"}`` plus the spreads and layout of its frames, see ``Baseline``; a record without
them, as older ones, is judged by the fixed limits alone) and read back when the camera is first seen
after a restart. Order of precedence: pinned (``LINEWATCH_BASELINES``) > stored in Redis > learned from
the first frames.

The key expires ``ttl_s`` (default 30 days) after its last use: reading it and every refresh while the
camera sends frames extend it, so a camera removed from the line leaves nothing behind for good. To make
a camera learn again (new lens, new lighting on purpose), delete its key or pin new values.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from linewatch.errors import DataError
from linewatch.health.settings import Baseline

log = logging.getLogger(__name__)

PINNED, STORED, LEARNING, LEARNED = "pinned", "stored", "learning", "learned"


class BaselineRecordError(DataError, ValueError):
    """A stored baseline that cannot be used (not JSON, or values out of range)."""


@dataclass(frozen=True)
class BaselineSource:
    """A camera's starting baseline (None: to be learned) and where it came from, for the log."""

    baseline: Baseline | None
    source: str  # PINNED, STORED or LEARNING (LEARNED once the first frames set it)
    detail: str


def baseline_key(prefix: str, camera_id: str) -> str:
    """A camera's learned pixel baseline."""
    return f"{prefix}:cam:{camera_id}:baseline"


def save_baseline(client: Any, prefix: str, camera_id: str, baseline: Baseline, ttl_s: int,
                  learned_at_ns: int | None = None) -> None:
    """Store a learned baseline, expiring ``ttl_s`` after now unless used again."""
    record = {**baseline.model_dump(exclude_none=True),
              "learned_at_ns": time.time_ns() if learned_at_ns is None else learned_at_ns}
    client.set(baseline_key(prefix, camera_id), json.dumps(record), ex=ttl_s)


def load_baseline(client: Any, prefix: str, camera_id: str, ttl_s: int) -> tuple[Baseline, int] | None:
    """The stored baseline and when it was learned (ns), its expiry extended; None when there is none."""
    raw = client.getex(baseline_key(prefix, camera_id), ex=ttl_s)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        learned_at_ns = int(record.pop("learned_at_ns", 0))
        return Baseline.model_validate(record), learned_at_ns
    except (ValueError, TypeError, KeyError, AttributeError, ValidationError) as exc:
        raise BaselineRecordError(f"unreadable stored baseline {raw[:80]!r}: {exc}") from exc


def refresh_baselines(client: Any, prefix: str, camera_ids: list[str], ttl_s: int) -> None:
    """Extend the expiry of the stored baselines of cameras in use (a missing key stays missing)."""
    pipe = client.pipeline(transaction=False)
    for camera_id in camera_ids:
        pipe.expire(baseline_key(prefix, camera_id), ttl_s)
    pipe.execute()


def starting_baseline(camera_id: str, pinned: Baseline | None, client: Any, prefix: str, ttl_s: int,
                      learn_frames: int) -> BaselineSource:
    """A camera's baseline at its first frame: pinned, else stored, else to be learned (and why)."""
    if pinned is not None:
        return BaselineSource(pinned, PINNED, f"pinned (LINEWATCH_BASELINES): mean {pinned.mean:.1f}, "
                                              f"focus {pinned.focus:.1f}")
    learn = f"learning from its first {learn_frames} frames"
    if client is None:
        return BaselineSource(None, LEARNING, f"{learn} (no Redis state: it will not survive a restart)")
    try:
        stored = load_baseline(client, prefix, camera_id, ttl_s)
    except (redis.RedisError, BaselineRecordError) as exc:
        return BaselineSource(None, LEARNING, f"{learn}: the stored baseline could not be read ({exc})")
    if stored is None:
        return BaselineSource(None, LEARNING, f"{learn}: none stored under {baseline_key(prefix, camera_id)}")
    baseline, learned_at_ns = stored
    learned_at = datetime.fromtimestamp(learned_at_ns / 1e9, UTC).isoformat(timespec="seconds")
    return BaselineSource(baseline, STORED, f"stored in Redis (learned {learned_at}): mean {baseline.mean:.1f}, "
                                            f"focus {baseline.focus:.1f}")
