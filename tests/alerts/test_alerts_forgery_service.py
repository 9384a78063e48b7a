"""Forged result records against the real alerts service, broker and Redis.

The review's probe end to end: one forged result record of the victim camera, its sequence 5,000 past the
camera's and its capture time 290 s ahead of this host's clock (inside the accepted skew), then the camera's
real breaching records. Before, the forged record moved the duplicate window and every real record after it was
taken for a redelivery: no alert. The victim has sent a few frames first, as a running camera has: the forged
record is then held off its track and counted as refused. The pure-rule property is in test_alerts_forgery.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from alerts_helpers import FRAME_NS, WEBHOOK_SECRET, Webhook, frame
from hostile_helpers import produce_raw, result_record, running, wait_until

from linewatch.alerts.settings import AlertsSettings

pytestmark = pytest.mark.integration
CAMERA, CLEAN, HIT = "cam-victim", 0.1, 0.9
SECOND = 10**9


def victim_kinds(webhook: Webhook) -> list[str]:
    return [b["kind"] for b in webhook.bodies() if b["alert"]["camera_id"] == CAMERA]


def saved_state(settings: AlertsSettings) -> dict[str, Any]:
    raw = redis.Redis.from_url(settings.redis.url).get(f"{settings.redis.key_prefix}:alerts:state:{CAMERA}")
    assert raw is not None
    return dict(json.loads(raw))


def rejected(service: Any, reason: str) -> float:
    return service.metrics.registry.get_sample_value("linewatch_alerts_records_rejected_total",
                                                     {"reason": reason}) or 0.0


def test_a_forged_record_far_ahead_with_capture_290_s_ahead_cannot_silence_the_camera(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    start = time.time_ns() - 2 * SECOND  # the real camera captured these in the last two seconds

    def real(seq: int, score: float) -> tuple[str, str]:
        return result_record(frame(CAMERA, seq, score, capture_ns=start + seq * FRAME_NS))

    forged = result_record(frame(CAMERA, 4 + 5_000, CLEAN, capture_ns=time.time_ns() + 290 * SECOND))
    records = [real(seq, CLEAN) for seq in range(5)] + [forged] + [real(seq, HIT) for seq in range(5, 13)]
    produce_raw(bootstrap, settings.topics.results, records)
    with running(settings) as service:
        wait_until(lambda: victim_kinds(webhook) == ["firing"], 60, "the victim's alert")
        wait_until(lambda: saved_state(settings).get("last_sequence") == 12, 30, "every real record applied")
        assert rejected(service, "sequence_jump") == 1  # the forged record: held off the camera's track
    state = saved_state(settings)
    assert state["alert"]["frame_count"] == 8 and state["alert"]["start_sequence"] == 5
    assert state["last_capture_ns"] < time.time_ns()  # nothing moved the camera's clock into the future
