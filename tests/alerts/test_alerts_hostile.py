"""Hostile and malformed result records against the real alerts service, broker, Redis and HTTP.

Each test drives ``AlertsService.run`` on the real broker and Redis with records a compromised or broken
camera (or detector) could cause, and checks that alerting goes on: no crash loop, no silenced camera,
open alerts re-sent after a restart, silent cameras' alerts closed, stale instances fenced out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from alerts_helpers import WEBHOOK_SECRET, Webhook, frame
from hostile_helpers import produce_raw, read_all, result_record, running, wait_until

from linewatch.alerts.intake import MAX_DEAD_LETTER_VALUE
from linewatch.alerts.rules import Alert, AlertEvent
from linewatch.alerts.settings import AlertsSettings, RuleConfig
from linewatch.alerts.state import OutboxEntry

pytestmark = pytest.mark.integration
CLEAN, HIT = 0.1, 0.9


def state_of(settings: AlertsSettings, camera: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(settings.redis.url).get(f"{settings.redis.key_prefix}:alerts:state:{camera}")
    return None if raw is None else json.loads(raw)


def kinds(webhook: Webhook, camera: str) -> list[str]:
    return [b["kind"] for b in webhook.bodies() if b["alert"]["camera_id"] == camera]


def test_huge_camera_ids_are_dead_lettered_bounded_and_alerting_goes_on(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: three 330 KB camera ids made ~1 MB outbox entries, the 431 dead-letter raised
    MSG_SIZE_TOO_LARGE and the service died on every restart. Now they never reach the rules."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    huge = "c" * 330_000
    hostile = [result_record(frame(huge, i, HIT)) for i in range(3)]
    hostile.append(result_record(frame("\x01" * 200, 0, HIT)))  # small, but breaks the id rule
    real = [result_record(frame("cam-ok", i, s)) for i, s in enumerate([HIT, HIT, HIT, CLEAN])]
    produce_raw(bootstrap, settings.topics.results, hostile + real)
    with running(settings) as service:
        dead = read_all(bootstrap, settings.topics.alert_dead_letters, 4)
        wait_until(lambda: kinds(webhook, "cam-ok") == ["firing"], 60, "cam-ok's alert delivered")
        assert service.thread.is_alive()  # type: ignore[attr-defined]
    classes = sorted(dict(record.headers())["dl-error-class"] for record in dead)
    assert classes == [b"bad_camera_id"] + [b"too_large"] * 3  # 330 KB: refused before it is even parsed
    for record in dead:
        assert len(record.value()) <= MAX_DEAD_LETTER_VALUE and len(dict(record.headers())["dl-error"]) <= 2000
    assert sample(service, "linewatch_alerts_records_rejected_total", reason="too_large") == 3
    assert state_of(settings, huge) is None


def test_poison_outbox_entries_never_block_the_outbox_or_kill_the_service(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: an entry that did not parse raised out of ``run()``, and a ~1 MB entry refused with 431 could not
    be dead-lettered (MSG_SIZE_TOO_LARGE): either one killed the service on every restart."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET, publish_alerts_topic=False)
    client = redis.Redis.from_url(settings.redis.url)
    base, topic = f"{settings.redis.key_prefix}:alerts", settings.topics.results
    legacy = legacy_entry("x" * 990_000)  # written by the old code before the upgrade
    for partition in (0, 1):
        client.rpush(f"{base}:outbox:{topic}:{partition}", b"{not an outbox entry", legacy)
    # The receiver's HTTP server itself answers 431 to the legacy entries: their event-id header is ~1 MB.
    produce_raw(bootstrap, topic, [result_record(frame("cam-ok", i, HIT)) for i in range(3)])
    with running(settings) as service:
        wait_until(lambda: kinds(webhook, "cam-ok") == ["firing"], 60, "a later alert delivered")
        dead = read_all(bootstrap, settings.topics.alert_dead_letters, 2)
        wait_until(lambda: not any(client.llen(f"{base}:outbox:{topic}:{p}") for p in (0, 1)), 30, "empty outboxes")
    for record in dead:
        headers = dict(record.headers())
        assert headers["dl-channel"] == b"webhook" and b"HTTP 431" in headers["dl-error"]
        assert int(headers["dl-value-truncated-from"]) > MAX_DEAD_LETTER_VALUE >= len(record.value())
        assert len(record.key()) <= 1024
    poison = [client.lrange(f"{base}:poison:{topic}:{p}", 0, -1) for p in (0, 1)]
    assert [len(p) for p in poison] == [1, 1] and all(b"{not an outbox entry" in p[0] for p in poison)
    assert all(client.ttl(f"{base}:poison:{topic}:{p}") > 0 for p in (0, 1))
    assert sample(service, "linewatch_alerts_outbox_poison_total") == 2


def legacy_entry(camera: str) -> bytes:
    """An outbox entry as the old code wrote it for a camera id of any length."""
    alert = Alert(alert_id=f"{camera}-0-1", line_id="line-1", camera_id=camera, state="firing", severity="minor",
                  start_ns=1, start_sequence=0, peak_score=0.9, frame_count=3, worst_sequence=0,
                  worst_heatmap_key=None, rule=RuleConfig())
    return OutboxEntry(channel="webhook", event=AlertEvent(kind="firing", alert=alert)).model_dump_json().encode()


def test_forged_frame_cannot_silence_a_camera_and_keys_must_match(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: one frame with lw-seq and capture time 2^63-1 made every later real frame a 'redelivery':
    8 real frames, 5 anomalous, and no alert. And a record keyed ``other`` was applied to another camera."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    top = 2**63 - 1
    records = [result_record(frame("cam-victim", 0, CLEAN)),
               result_record(frame("cam-victim", top, CLEAN, capture_ns=top)),  # forged: far ahead in both
               result_record(frame("cam-victim", 900_000, CLEAN)),  # forged: a big jump with a plausible time
               result_record(frame("cam-someone-else", 0, HIT), key="other")]
    records += [result_record(frame("cam-victim", i, s)) for i, s in
                enumerate([CLEAN, HIT, HIT, CLEAN, HIT, HIT, HIT, CLEAN], start=1)]
    produce_raw(bootstrap, settings.topics.results, records)
    with running(settings) as service:
        wait_until(lambda: kinds(webhook, "cam-victim") == ["firing"], 60, "the victim's alert")
        dead = read_all(bootstrap, settings.topics.alert_dead_letters, 1)
    assert dict(dead[0].headers())["dl-error-class"] == b"key_mismatch"
    assert state_of(settings, "cam-someone-else") is None
    state = state_of(settings, "cam-victim")
    assert state is not None and state["last_sequence"] == 8
    assert sample(service, "linewatch_alerts_records_rejected_total", reason="future") == 1
    # The 900,000 frame came when the victim had one frame: a camera's first reanchor_after frames all count (none
    # can be told forged yet), so it counted as one clean frame of its own run, left behind once frames 0-2 agreed.
    assert sample(service, "linewatch_alerts_records_rejected_total", reason="sequence_jump") == 0


def test_out_of_order_frames_still_count_and_duplicates_do_not(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: 1,3,5,7,2,4,6,8 (the detector's batching order) made the rule ignore 2, 4 and 6 ("<= last")."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    scores = {n: (HIT if n % 2 == 0 else CLEAN) for n in range(1, 9)}
    order = [1, 3, 5, 7, 2, 4, 6, 8, 4, 6]  # then two redeliveries
    produce_raw(bootstrap, settings.topics.results, [result_record(frame("cam-o", n, scores[n])) for n in order])
    with running(settings):
        wait_until(lambda: kinds(webhook, "cam-o") == ["firing"], 60, "the alert of the out-of-order frames")
        wait_until(lambda: (state_of(settings, "cam-o") or {}).get("alert", {}).get("frame_count") == 4, 30,
                   "all four breaching frames counted once")
    alert = state_of(settings, "cam-o")["alert"]  # type: ignore[index]
    assert alert["frame_count"] == 4 and alert["start_sequence"] == 2


def test_open_alerts_are_resent_from_redis_after_a_restart(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, recorder: dict[str, Any]) -> None:
    """Before: after a restart nothing re-sent the 5 open alerts (in-memory only) for alertmanager_resend_s;
    Alertmanager would have resolved them by its timeout."""
    settings = make_settings(alertmanager_url=recorder["url"], publish_alerts_topic=False,
                             alertmanager_resend_s=3600.0)
    cameras = [f"cam-r{i}" for i in range(5)]
    produce_raw(bootstrap, settings.topics.results,
                [result_record(frame(c, i, HIT)) for c in cameras for i in range(3)])
    with running(settings):
        wait_until(lambda: len(recorder["requests"]) >= 5, 60, "five firing alerts")
    fired = {r["body"][0]["labels"]["alert_id"] for r in recorder["requests"]}
    recorder["requests"].clear()
    restarted = settings.model_copy(update={"group_id": settings.group_id + "-2"})
    with running(restarted):
        got = wait_until(lambda: [r for r in recorder["requests"] if len(r["body"]) == 5], 60, "the re-send")
    assert {a["labels"]["alert_id"] for a in got[0]["body"]} == fired
    assert all("endsAt" not in a for a in got[0]["body"])


def test_alert_of_a_silent_camera_becomes_silent(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook,
        recorder: dict[str, Any]) -> None:
    """Before: an alert whose camera stopped sending stayed firing forever (nothing could resolve it)."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET, alertmanager_url=recorder["url"],
                             silent_after_s=1.0, housekeeping_s=0.2)
    produce_raw(bootstrap, settings.topics.results, [result_record(frame("cam-s", i, HIT)) for i in range(3)])
    with running(settings):
        wait_until(lambda: kinds(webhook, "cam-s") == ["firing", "silent"], 60, "the silent transition")
    client = redis.Redis.from_url(settings.redis.url)
    base = f"{settings.redis.key_prefix}:alerts"
    assert client.smembers(f"{base}:open") == set()
    silent = next(b for b in webhook.bodies() if b["kind"] == "silent")["alert"]
    assert silent["state"] == "silent" and silent["end_sequence"] == 2
    manager = [a for r in recorder["requests"] for a in r["body"] if a["annotations"].get("state") == "silent"]
    assert manager and "endsAt" in manager[-1]


def test_a_stale_instance_is_fenced_out_after_its_partitions_moved(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: an instance that stalled while its partitions moved still wrote state and delivered (duplicate
    annotations, older state over newer). Now a new owner's epoch refuses its writes."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    topic = settings.topics.results
    produce_raw(bootstrap, topic, [result_record(frame("cam-f", i, HIT)) for i in range(3)])
    with running(settings) as service:
        wait_until(lambda: kinds(webhook, "cam-f") == ["firing"], 60, "the alert")
        owned = wait_until(lambda: sorted(service.epochs), 30, "the partitions owned")
        service.store.acquire(topic, owned)  # what the new owner does on assignment
        produce_raw(bootstrap, topic, [result_record(frame("cam-f", i, CLEAN)) for i in range(3, 12)])
        wait_until(lambda: sample(service, "linewatch_alerts_fenced_total") >= 1, 60, "the fence")
        assert service.epochs == {}
    state = state_of(settings, "cam-f")
    assert state is not None and state["last_sequence"] == 2  # the stale instance wrote nothing more
    assert kinds(webhook, "cam-f") == ["firing"]  # and delivered no resolution


def sample(service: Any, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def test_hostile_battery_figures(make_settings: Callable[..., AlertsSettings], bootstrap: str,
                                 webhook: Webhook) -> None:
    """Every kind of hostile record at once, then real frames of the targeted cameras: the service keeps
    running, every victim still alerts, every per-camera key expires. Prints the figures of the
    "hostile input" table (alerts side)."""
    import resource

    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    victims = [f"cam-v{i}" for i in range(5)]
    top = 2**63 - 1
    hostile: list[tuple[Any, Any]] = []
    hostile += [result_record(frame("c" * 330_000, i, HIT)) for i in range(3)]  # ~1 MB outbox entries before
    hostile += [result_record(frame(f"k{i}-" + "x" * 5000, 0, HIT)) for i in range(50)]  # 5 KB ids
    hostile += [result_record(frame(bad, 0, HIT)) for bad in ("\x01" * 200, "plant1/cam2", "", " cam", "cam\n1")]
    hostile += [result_record(frame(v, 0, HIT), key="other") for v in victims]  # key != camera
    hostile += [result_record(frame(v, top, CLEAN, capture_ns=top)) for v in victims]  # forged far ahead
    hostile += [result_record(frame(v, 5_000_000, CLEAN)) for v in victims]  # sequence jump
    future = frame("cam-v0", 1, CLEAN)
    hostile.append(result_record(future.model_copy(update={"capture_ns": future.capture_ns + 10**18})))
    hostile += [("cam-v1", b"{not json"), ("cam-v1", frame("cam-v1", 1, HIT).model_dump_json().replace(
        '"schema_version":1', '"schema_version":99')), ("cam-v1", b"\xff" * 2000)]
    for field_name, value in (("heatmap_key", "h" * 100_000), ("model_version", "m" * 5000), ("sequence", -1),
                              ("sequence", 2**70)):
        record = json.loads(frame("cam-v2", 1, HIT).model_dump_json())
        record[field_name] = value
        hostile.append(("cam-v2", json.dumps(record)))
    real: list[tuple[Any, Any]] = []
    now = time.time_ns()  # real cameras capture now; the forged frames above claim 2023 or the far future
    for v in victims:  # out of order within each camera, as the detector's batching may emit them
        real += [result_record(frame(v, n, HIT if n % 2 == 0 else CLEAN, capture_ns=now - (10 - n) * 10**8))
                 for n in (1, 3, 5, 7, 2, 4, 6, 8)]
    produce_raw(bootstrap, settings.topics.results, hostile + real)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with running(settings) as service:
        wait_until(lambda: sorted(b["alert"]["camera_id"] for b in webhook.bodies()) == victims, 90,
                   "every victim's alert")
        # The sequence-jump frames are each victim's first frame: taken as its start, then left behind when
        # the real frames (captured later) arrive; every other hostile record is refused.
        expected = len(hostile) - len(victims)
        rejected = wait_until(lambda: (n := _rejected(service)) >= expected and n, 60, "every hostile record")
        alive = service.thread.is_alive()  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.redis.url)
    keys = [k.decode() for k in client.scan_iter(match=f"{settings.redis.key_prefix}:alerts:*")]
    per_camera = [k for k in keys if k.split(":")[2] in ("state", "alert", "acks")]
    no_ttl = [k for k in per_camera if client.ttl(k) < 0]
    figures = {"records_tried": len(hostile), "records_refused": rejected, "crash_loops": int(not alive),
               "cameras_silenced": len(victims) - len(webhook.bodies()), "per_camera_keys": len(per_camera),
               "per_camera_keys_without_ttl": len(no_ttl), "largest_key_chars": max(len(k) for k in keys),
               "test_process_peak_rss_mb": round(max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                                                 / 1024)}
    print("hostile-input figures (alerts):", json.dumps(figures))
    assert figures["crash_loops"] == 0 and figures["cameras_silenced"] == 0 and no_ttl == []
    assert figures["largest_key_chars"] < 200


def _rejected(service: Any) -> int:
    registry = service.metrics.registry
    return int(sum(s.value for m in registry.collect() if m.name == "linewatch_alerts_records_rejected"
                   for s in m.samples if s.name.endswith("_total")))
