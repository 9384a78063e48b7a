"""Outbox delivery without blocking: per-channel backoff, give-up deadlines, and which offsets may commit.

The consumer loop calls :meth:`OutboxDrainer.drain` once per iteration. Each pass tries every
pending outbox entry whose channel is not backing off, in outbox order, once; a transient failure
puts that channel (not the others) into backoff until a later pass, so a webhook outage neither
stalls Alertmanager nor stops the loop from polling Kafka (``max.poll.interval.ms``). A pass also
ends after ``budget_s`` so a long backlog is spread over several iterations.

Poison: an entry that does not parse, or whose dead-lettering fails (e.g. the broker refuses it),
is moved out of the outbox to a capped poison list (:meth:`StateStore.quarantine`) and counted, so
one bad entry can never stop every delivery behind it or crash the service on every restart.

Offsets: a consumed batch's offset may be committed only once every outbox entry that existed when
the batch was persisted is delivered or dead-lettered. Entries are in Redis
before the commit, so a crash in between redelivers the batch, whose frames the rules recognise.
Each batch is one input of the shared :class:`~linewatch.common.kafka.CommitGate` (:class:`OutboxBarrier`
says which entries it waits for), so the commit order and the partition generations are the detector's rules.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from linewatch.alerts.deliveries import Channel, attempt
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.settings import RetrySettings
from linewatch.alerts.state import OutboxEntry, StateStore
from linewatch.common.kafka import CommitGate, OutOfOrderError

log = logging.getLogger(__name__)

DeadLetter = Callable[[OutboxEntry, bytes, str], None]


class DeadLetterError(RuntimeError):
    """The dead-letter topic did not take a record (refused, too large, or not acknowledged in time)."""


@dataclass
class _ChannelState:
    failures: int = 0  # transient failures in a row
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class _EntryState:
    due: float  # when the entry was first seen pending: its give-up clock starts here
    tries: int = 0


class RetryPolicy:
    """Backoff per channel and give-up per entry; pure logic with an injectable clock."""

    def __init__(self, retry: RetrySettings, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.retry, self.clock, self.rng = retry, clock, rng
        self._channels: dict[str, _ChannelState] = {}
        self._entries: dict[str, _EntryState] = {}

    def _channel(self, name: str) -> _ChannelState:
        return self._channels.setdefault(name, _ChannelState())

    def _entry(self, entry_id: str) -> _EntryState:
        return self._entries.setdefault(entry_id, _EntryState(due=self.clock()))

    def waiting(self, channel: str) -> bool:
        """True while the channel backs off after a transient failure."""
        return self.clock() < self._channel(channel).next_try

    def tries(self, entry_id: str) -> int:
        """Tries of this entry so far."""
        return self._entry(entry_id).tries

    def expired(self, channel: str, entry_id: str) -> str | None:
        """The error to dead-letter with when the channel is failing and the entry's time is up, else None."""
        state, entry = self._channel(channel), self._entry(entry_id)
        out_of_time = self.clock() - entry.due >= self.retry.give_up_after_s
        out_of_tries = bool(self.retry.attempts) and entry.tries >= self.retry.attempts
        if state.failures and (out_of_time or out_of_tries):
            return state.last_error
        return None

    def failed(self, channel: str, entry_id: str, error: str) -> None:
        """A transient failure: count the try and back the channel off."""
        self._entry(entry_id).tries += 1
        state = self._channel(channel)
        state.failures += 1
        state.last_error = error
        state.next_try = self.clock() + self.retry.delay(state.failures, self.rng)

    def succeeded(self, channel: str, entry_id: str) -> None:
        """The channel works again: no more backoff."""
        self._entries.pop(entry_id, None)
        self._channels[channel] = _ChannelState()

    def finished(self, entry_id: str) -> None:
        """The entry left the outbox (delivered or dead-lettered)."""
        self._entries.pop(entry_id, None)

    def keep_only(self, entry_ids: set[str]) -> None:
        """Forget entries no longer pending (e.g. of revoked partitions), so this state stays bounded."""
        for entry_id in set(self._entries) - entry_ids:
            del self._entries[entry_id]

    def tracked(self) -> int:
        """Entries with retry state (for tests: bounded by the outbox)."""
        return len(self._entries)


class OutboxBarrier:
    """Which outbox entries each persisted batch waits for; ordering and generations are the shared gate's.

    A held batch is one input of the :class:`~linewatch.common.kafka.CommitGate` (its last offset);
    its guard is released once none of the entries pending when it was persisted is pending any more.
    """

    def __init__(self, topic: str = "", gate: CommitGate | None = None) -> None:
        self.topic, self.gate = topic, gate or CommitGate()
        # partition -> held batches: (last offset, generation, barrier; None until the next observe)
        self._held: dict[int, list[tuple[int, int, set[str] | None]]] = {}

    def hold(self, partition: int, next_offset: int) -> None:
        """A batch up to ``next_offset`` (exclusive) is persisted; its barrier is set by the next :meth:`observe`."""
        try:
            generation = self.gate.track((self.topic, partition), next_offset - 1)
        except OutOfOrderError:
            return  # a rewound batch again: the batch held before covers it, its frames made no new entries
        self._held.setdefault(partition, []).append((next_offset - 1, generation, None))

    def observe(self, partition: int, pending: set[str]) -> None:
        """The partition's pending entry ids were just read: barriers not yet set become ``pending``."""
        held = self._held.get(partition, [])
        self._held[partition] = [(o, g, set(pending) if b is None else b) for o, g, b in held]

    def release(self, partition: int, pending: set[str]) -> int | None:
        """The highest position now committable given the still ``pending`` ids, or None."""
        waiting = []
        for offset, generation, barrier in self._held.get(partition, []):
            if barrier is not None and not barrier & pending:
                self.gate.release((self.topic, partition), offset, generation)
            else:
                waiting.append((offset, generation, barrier))
        self._held[partition] = waiting
        return self.gate.take_ready([(self.topic, partition)]).get((self.topic, partition))

    def forget(self, partitions: set[int]) -> None:
        """Revoked or fenced partitions: their new owner re-reads from the last commit."""
        self.gate.forget((self.topic, p) for p in partitions)
        for partition in partitions:
            self._held.pop(partition, None)

    def held(self) -> int:
        """Batches waiting, all partitions together."""
        return self.gate.in_flight()


class OutboxDrainer:
    """One non-blocking delivery pass over the outboxes of the assigned partitions."""

    def __init__(self, store: StateStore, topic: str, channels: dict[str, Channel], policy: RetryPolicy,
                 metrics: AlertsMetrics, dead_letter: DeadLetter, budget_s: float = 5.0) -> None:
        self.store, self.topic, self.channels, self.policy = store, topic, channels, policy
        self.metrics, self.dead_letter, self.budget_s = metrics, dead_letter, budget_s

    def drain(self, partitions: list[int], barrier: OutboxBarrier, stop_event: threading.Event) -> dict[int, int]:
        """Try what is due; returns the offsets (per partition) that may be committed now."""
        pending = {}
        for partition in partitions:
            pending[partition], unparsable = self.store.pending(self.topic, partition)
            for raw in unparsable:
                self._quarantine(partition, raw, "outbox entry does not parse")
        ids = {p: {entry.entry_id for _, entry in entries} for p, entries in pending.items()}
        for partition, entry_ids in ids.items():
            barrier.observe(partition, entry_ids)
        self.policy.keep_only(set().union(*ids.values()))
        started = self.policy.clock()
        blocked: set[str] = set()  # channels that failed in this pass, or back off
        for partition, entries in pending.items():
            for raw, entry in entries:
                if stop_event.is_set() or self.policy.clock() - started > self.budget_s:
                    break
                if self._handle(partition, raw, entry, blocked):
                    ids[partition].discard(entry.entry_id)
        committable = {}
        for partition, entry_ids in ids.items():
            offset = barrier.release(partition, entry_ids)
            if offset is not None:
                committable[partition] = offset
        return committable

    def _handle(self, partition: int, raw: bytes, entry: OutboxEntry, blocked: set[str]) -> bool:
        """Deliver, dead-letter or leave one entry; True when it left the outbox."""
        channel = self.channels.get(entry.channel)
        if channel is None:
            log.warning("dropping %s: channel %s is no longer configured", entry.entry_id[:200], entry.channel[:100])
            return self._finish(partition, raw, entry)
        name = channel.name
        if name in blocked or self.policy.waiting(name):
            blocked.add(name)
            error = self.policy.expired(name, entry.entry_id)
            if error is None:
                return False  # stays queued behind the channel's backoff; order per channel is kept
            return self._dead(partition, raw, entry, f"gave up while the channel kept failing: {error}")
        if self.policy.tries(entry.entry_id):
            self.metrics.retries.labels(name).inc()
        try:
            outcome, error = attempt(channel, entry.event, self.metrics)
        except Exception as exc:  # a bug or a library error on this entry: it must not stop the others
            log.exception("delivery of %s to %s raised", entry.entry_id[:200], name)
            outcome, error = "permanent", f"{type(exc).__name__}: {str(exc)[:300]}"
        if outcome == "delivered":
            self.policy.succeeded(name, entry.entry_id)
            return self._finish(partition, raw, entry)
        if outcome == "permanent":
            return self._dead(partition, raw, entry, error)
        self.policy.failed(name, entry.entry_id, error)
        blocked.add(name)
        if self.policy.expired(name, entry.entry_id) is not None:
            return self._dead(partition, raw, entry, error)
        return False

    def _dead(self, partition: int, raw: bytes, entry: OutboxEntry, error: str) -> bool:
        log.error("dead-lettering %s to %s: %s", entry.entry_id[:200], entry.channel, error[:500])
        try:
            self.dead_letter(entry, raw, error)
        except DeadLetterError as exc:
            self._quarantine(partition, raw, f"dead-lettering failed: {exc}")
            self.policy.finished(entry.entry_id)
            return True
        self.metrics.deliveries.labels(entry.channel, "dead_letter").inc()
        return self._finish(partition, raw, entry)

    def _quarantine(self, partition: int, raw: bytes, reason: str) -> None:
        log.error("moving a poison outbox entry of partition %d (%d bytes) aside: %s", partition, len(raw), reason)
        self.store.quarantine(self.topic, partition, raw, reason)
        self.metrics.poison.inc()

    def _finish(self, partition: int, raw: bytes, entry: OutboxEntry) -> bool:
        self.store.done(self.topic, partition, raw)
        self.policy.finished(entry.entry_id)
        return True
