"""The outbox's retry policy and commit gate: a 10-minute outage is ridden out, a 401 is dead-lettered at once,
one failing channel holds up neither the others nor the loop, and offsets wait for the outbox.

Logic tests with a fake clock and scripted channels on a real Redis outbox (the HTTP classification of
failures is tested against real servers in test_alerts_deliveries.py).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
import redis
from alerts_helpers import frame

from linewatch.alerts.deliveries import DeliveryError
from linewatch.alerts.history import AlertHistory
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.outbox import OutboxBarrier, OutboxDrainer, RetryPolicy
from linewatch.alerts.rules import AlertEvent, CameraState, step
from linewatch.alerts.settings import RetrySettings, RuleConfig
from linewatch.alerts.state import OutboxEntry, StateStore

TOPIC = "results"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A channel whose answer is set by the test: ok, down (transient) or refused (permanent, like a 401)."""

    kinds = ("firing", "resolved")

    def __init__(self, name: str, clock: Clock | None = None) -> None:
        self.name, self.mode, self.tries, self.clock = name, "ok", 0, clock
        self.sent: list[str] = []

    def send(self, event: AlertEvent) -> None:
        self.tries += 1
        if self.clock is not None:
            self.clock.now += 0.01  # every request takes a little time
        if self.mode == "down":
            raise DeliveryError(f"{self.name}: HTTP 503")
        if self.mode == "refused":
            raise DeliveryError(f"{self.name}: HTTP 401: bad signature", permanent=True)
        self.sent.append(event.event_id)


def events(camera: str, count: int) -> list[AlertEvent]:
    """``count`` alert transitions of one camera (fire, resolve, fire, ...)."""
    rule = RuleConfig(k=1, n=1, resolve_after=1, cooldown_s=0)
    state, out = CameraState(camera_id=camera), list[AlertEvent]()
    seq = 0
    while len(out) < count:
        state, new = step(state, frame(camera, seq, 0.9 if seq % 2 == 0 else 0.1), rule)
        out.extend(new)
        seq += 1
    return out[:count]


@pytest.fixture
def store(redis_url: str, unique: str) -> Iterator[StateStore]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"lwtest-{unique}"
    yield StateStore(client, prefix, AlertHistory(client, prefix))
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def enqueue(store: StateStore, partition: int, channels: list[Scripted], evs: list[AlertEvent]) -> None:
    for event in evs:
        for channel in channels:
            store.client.rpush(store.outbox_key(TOPIC, partition),
                               OutboxEntry(channel=channel.name, event=event).model_dump_json())


def drainer(store: StateStore, channels: list[Scripted], retry: RetrySettings,
            clock: Clock) -> tuple[OutboxDrainer, list[tuple[str, str]]]:
    dead: list[tuple[str, str]] = []
    policy = RetryPolicy(retry, clock, random.Random(11))
    drain = OutboxDrainer(store, TOPIC, {c.name: c for c in channels}, policy, AlertsMetrics(),  # type: ignore[misc]
                          lambda entry, _raw, error: dead.append((entry.entry_id, error)))
    return drain, dead


def test_default_backoff_doubles_to_30_s_with_full_jitter_and_gives_up_after_10_minutes() -> None:
    retry = RetrySettings()
    assert (retry.attempts, retry.give_up_after_s, retry.max_backoff_s) == (0, 600.0, 30.0)
    assert [retry.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert retry.ceiling(10_000) == 30.0
    # Full jitter: uniform in [0, ceiling], so clients that failed together spread their retries out.
    rng = random.Random(7)
    waits = [retry.delay(6, rng) for _ in range(1000)]
    assert all(0 <= w <= 16 for w in waits) and len(set(waits)) == 1000
    assert min(waits) < 1.6 and max(waits) > 14.4 and 7 < sum(waits) / len(waits) < 9


def test_ten_minute_outage_is_ridden_out_and_other_channel_goes_on(store: StateStore) -> None:
    clock = Clock()
    webhook, manager = Scripted("webhook", clock), Scripted("alertmanager", clock)
    drain, dead = drainer(store, [webhook, manager], RetrySettings(), clock)
    gate, stop = OutboxBarrier(), threading.Event()
    webhook.mode = "down"
    enqueue(store, 0, [webhook, manager], events("cam-1", 3))
    gate.hold(0, 10)
    assert drain.drain([0], gate, stop) == {}  # the webhook entries hold the commit
    assert len(manager.sent) == 3 and webhook.tries == 1  # one try per pass while down, then backoff
    passes = 0
    while clock.now < 1000.0 + 590:  # 9 min 50 s of outage, one loop iteration every 0.5 s
        clock.now += 0.5
        assert drain.drain([0], gate, stop) == {}
        passes += 1
    # backoff up to 0.5, 1, 2, ... capped at 30 s, full jitter (mean 15 s): about 45 tries in ten minutes,
    # not one per pass
    assert 20 <= webhook.tries <= 120 < passes
    enqueue(store, 0, [manager], events("cam-2", 1))  # a later alert to a healthy channel is not held up
    gate.hold(0, 20)
    clock.now += 0.5
    drain.drain([0], gate, stop)
    assert len(manager.sent) == 4
    webhook.mode = "ok"
    clock.now += 30
    assert drain.drain([0], gate, stop) == {0: 20}
    assert webhook.sent == [e.event_id for e in events("cam-1", 3)]  # in order, none lost
    assert dead == [] and store.pending(TOPIC, 0) == ([], []) and drain.policy.tracked() == 0


def test_permanent_refusal_is_dead_lettered_at_once(store: StateStore) -> None:
    clock = Clock()
    webhook = Scripted("webhook")
    webhook.mode = "refused"
    drain, dead = drainer(store, [webhook], RetrySettings(), clock)
    enqueue(store, 1, [webhook], events("cam-1", 2))
    gate = OutboxBarrier()
    gate.hold(1, 7)
    assert drain.drain([1], gate, threading.Event()) == {1: 7}
    assert webhook.tries == 2 and [d[0].split(":")[-1] for d in dead] == ["webhook", "webhook"]
    assert "HTTP 401" in dead[0][1]


def test_outage_past_the_give_up_time_dead_letters_every_expired_entry(store: StateStore) -> None:
    clock = Clock()
    webhook = Scripted("webhook")
    webhook.mode = "down"
    drain, dead = drainer(store, [webhook], RetrySettings(give_up_after_s=60, max_backoff_s=10), clock)
    enqueue(store, 0, [webhook], events("cam-1", 3))
    gate, stop = OutboxBarrier(), threading.Event()
    gate.hold(0, 5)
    while clock.now < 1000 + 59:
        drain.drain([0], gate, stop)
        clock.now += 1
    assert dead == []
    tries = webhook.tries
    clock.now += 15
    assert drain.drain([0], gate, stop) == {0: 5}
    assert len(dead) == 3 and webhook.tries == tries + 1  # one more try proves it still fails; all three expired
    assert "HTTP 503" in dead[-1][1]


def test_attempts_limit_when_set(store: StateStore) -> None:
    clock = Clock()
    webhook = Scripted("webhook")
    webhook.mode = "down"
    drain, dead = drainer(store, [webhook], RetrySettings(attempts=3, backoff_s=1), clock)
    enqueue(store, 0, [webhook], events("cam-1", 1))
    for _ in range(10):
        drain.drain([0], OutboxBarrier(), threading.Event())
        clock.now += 5
    assert webhook.tries == 3 and len(dead) == 1


def test_outbox_barrier_waits_for_entries_existing_when_the_batch_was_persisted() -> None:
    gate = OutboxBarrier()
    gate.hold(0, 10)
    assert gate.release(0, {"a"}) is None  # barrier not observed yet
    gate.observe(0, {"a", "b"})
    gate.hold(0, 20)
    gate.observe(0, {"b", "c"})
    assert gate.release(0, {"b", "c"}) is None  # 10 waits for b
    assert gate.release(0, {"c"}) == 10  # b is done; 20 waits for c too
    assert gate.release(0, set()) == 20 and gate.held() == 0
    gate.hold(1, 3)
    gate.forget({1})
    assert gate.held() == 0


def test_retry_state_stays_bounded_by_the_outbox(store: StateStore) -> None:
    clock = Clock()
    webhook = Scripted("webhook")
    webhook.mode = "down"
    drain, _ = drainer(store, [webhook], RetrySettings(), clock)
    enqueue(store, 0, [webhook], events("cam-1", 4))
    drain.drain([0], OutboxBarrier(), threading.Event())
    assert drain.policy.tracked() == 4
    store.client.delete(store.outbox_key(TOPIC, 0))  # e.g. the partition moved to another instance
    drain.drain([0], OutboxBarrier(), threading.Event())
    assert drain.policy.tracked() == 0
