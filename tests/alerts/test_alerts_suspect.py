"""Defect alerts of an unhealthy camera are marked suspect: the rule, the deliveries, and end to end
on the real broker, Redis, Alertmanager and a webhook receiver with the health state the camera-health
service writes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis
from alerts_helpers import WEBHOOK_SECRET, Webhook, frame, scores_stream
from hostile_helpers import produce_raw, result_record, running, wait_until

from linewatch.alerts.deliveries.alertmanager import payload
from linewatch.alerts.history import AlertHistory
from linewatch.alerts.rules import AlertEvent, CameraState, step
from linewatch.alerts.settings import AlertsSettings, RuleConfig
from linewatch.health.checks import HealthEvent
from linewatch.health.state import failing_checks, record

RULE = RuleConfig(k=3, n=5, min_score=0.5, resolve_after=3, cooldown_s=0.0)
CLEAN, HIT = 0.1, 0.9


def run(scores: list[float], unhealthy: list[tuple[str, ...]],
        state: CameraState | None = None) -> tuple[CameraState, list[AlertEvent]]:
    """Feed frames; ``unhealthy[i]`` are the checks failing while frame i is applied."""
    state = state or CameraState(camera_id="cam-1")
    events: list[AlertEvent] = []
    for result, checks in zip(scores_stream("cam-1", scores, first=state.last_sequence + 1), unhealthy, strict=True):
        state, new = step(state, result, RULE, unhealthy=checks)
        events.extend(new)
    return state, events


def test_an_alert_fired_while_the_camera_is_unhealthy_is_suspect() -> None:
    _, events = run([HIT] * 3, [("exposure",)] * 3)
    assert [e.kind for e in events] == ["firing"]
    assert events[0].alert.suspect and events[0].alert.suspect_checks == ["exposure"]


def test_a_healthy_cameras_alert_is_not_suspect() -> None:
    _, events = run([HIT] * 3 + [CLEAN] * 3, [()] * 6)
    assert [e.kind for e in events] == ["firing", "resolved"]
    assert not any(e.alert.suspect or e.alert.suspect_checks for e in events)


def test_an_open_alert_turns_suspect_once_and_stays_so_until_it_resolves() -> None:
    # Fires healthy; exposure fails (one suspect event); focus too (no new event); health recovers;
    # the alert resolves still marked with both checks. A later alert on the healthy camera is clean.
    scores = [HIT] * 3 + [HIT, HIT, HIT] + [CLEAN] * 3 + [HIT] * 3
    health = [()] * 3 + [("exposure",), ("exposure", "focus"), ()] + [()] * 3 + [()] * 3
    _, events = run(scores, health)
    assert [e.kind for e in events] == ["firing", "suspect", "resolved", "firing"]
    firing, suspect, resolved, later = (e.alert for e in events)
    assert not firing.suspect and suspect.suspect and suspect.suspect_checks == ["exposure"]
    assert suspect.alert_id == firing.alert_id and suspect.state == "firing"
    assert resolved.suspect and resolved.suspect_checks == ["exposure", "focus"]
    assert not later.suspect and later.alert_id != firing.alert_id


def test_alertmanager_gets_the_suspect_label_and_the_failing_checks() -> None:
    _, events = run([HIT] * 3, [("exposure", "frozen")] * 3)
    item = payload(events[0].alert, alertname="LinewatchDefect", public_base_url="http://op")
    assert item["labels"]["suspect"] == "true"
    assert item["annotations"]["suspect_checks"] == "exposure, frozen"
    assert item["annotations"]["summary"].startswith("SUSPECT (camera unhealthy: exposure, frozen)")
    _, clean = run([HIT] * 3, [()] * 3)
    clean_item = payload(clean[0].alert, alertname="LinewatchDefect", public_base_url="http://op")
    assert clean_item["labels"]["suspect"] == "false" and "suspect_checks" not in clean_item["annotations"]


def exposure_fault(client: redis.Redis, prefix: str, camera: str, status: str = "firing",
                   check: str = "exposure") -> None:
    """The health state exactly as ``linewatch camera-health`` writes it for a firing check."""
    event = HealthEvent(check=check, status=status, camera_id=camera, line_id="line-1",  # type: ignore[arg-type]
                        alert_id=f"{camera}-{check}", value=0.93, threshold=0.6, detail="dark share 0.93 >= 0.6",
                        at_ns=time.time_ns())
    record(client, prefix, event, ttl_s=300)


def am_labels(url: str, camera: str) -> list[dict[str, str]]:
    """Labels of the alerts Alertmanager holds active for ``camera``."""
    return [a["labels"] for a in httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
            if a["labels"].get("camera") == camera and a["status"]["state"] == "active"]


def bodies(webhook: Webhook, camera: str) -> list[dict]:
    return [b for b in webhook.bodies() if b["alert"]["camera_id"] == camera]


@pytest.mark.integration
def test_unhealthy_cameras_defect_alerts_are_delivered_as_suspect(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, alertmanager: str, webhook: Webhook) -> None:
    settings = make_settings(alertmanager_url=alertmanager, webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    exposure_fault(client, prefix, "cam-dark")
    assert failing_checks(client, prefix, ["cam-dark", "cam-ok"]) == {"cam-dark": ["exposure"]}
    first = [frame(c, i, HIT) for i in range(3) for c in ("cam-dark", "cam-ok", "cam-late")]
    produce_raw(bootstrap, settings.topics.results, [result_record(r) for r in first])
    with running(settings):
        wait_until(lambda: all(len(bodies(webhook, c)) == 1 for c in ("cam-dark", "cam-ok", "cam-late")), 60,
                   "the three alerts delivered")
        dark, ok = bodies(webhook, "cam-dark")[0], bodies(webhook, "cam-ok")[0]
        assert dark["kind"] == "firing" and dark["alert"]["suspect"] is True
        assert dark["alert"]["suspect_checks"] == ["exposure"]
        assert ok["kind"] == "firing" and ok["alert"]["suspect"] is False and ok["alert"]["suspect_checks"] == []
        wait_until(lambda: [x["suspect"] for x in am_labels(alertmanager, "cam-dark")] == ["true"], 30,
                   "Alertmanager holds cam-dark's alert as suspect")
        assert [x["suspect"] for x in am_labels(alertmanager, "cam-ok")] == ["false"]

        # cam-late's open alert was clean; its camera goes out of focus, its next frames mark it suspect.
        exposure_fault(client, prefix, "cam-late", check="focus")
        produce_raw(bootstrap, settings.topics.results, [result_record(frame("cam-late", 3, HIT))])
        wait_until(lambda: [b["kind"] for b in bodies(webhook, "cam-late")] == ["firing", "suspect"], 60,
                   "cam-late's suspect event")
        late = bodies(webhook, "cam-late")[1]["alert"]
        assert late["suspect"] is True and late["suspect_checks"] == ["focus"] and late["state"] == "firing"
        # Alertmanager: the clean label set ended, the suspect one active (nothing left to time out).
        wait_until(lambda: [x["suspect"] for x in am_labels(alertmanager, "cam-late")] == ["true"], 30,
                   "Alertmanager holds only the suspect label set of cam-late's alert")
        stored = AlertHistory(client, prefix).get(late["alert_id"])
        assert stored is not None and stored.suspect and stored.state == "firing"
        assert [e.kind for e in AlertHistory(client, prefix).query(camera_id="cam-late")] == ["firing"]
