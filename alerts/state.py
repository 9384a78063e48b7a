"""Rule state in Redis, written atomically with the alert history and the delivery outbox, fenced per partition.

One MULTI/EXEC per processed batch that changed something: the cameras' states (including the
sequences already seen), the alert records and history entries of their transitions, and one
outbox entry per delivery channel. A restart reloads the state and drains the outbox, so an
alert is neither lost (its deliveries are in the outbox) nor repeated (the frames that caused
it are recognised as redeliveries).

Outboxes are per input partition, ``p:alerts:outbox:{topic}:{partition}``: a camera's frames
all land on one partition, so whichever instance owns the partition owns its deliveries.

Fencing: an instance that is assigned a partition increments ``p:alerts:epoch:{topic}:{partition}``
and remembers the value. Every write for that partition WATCHes the epoch key and runs only while it
still holds that value, so an instance that stalled while its partition moved to another one cannot
overwrite newer state or deliver again (:class:`FencedError`).

Every per-camera key expires (``state_ttl_s`` after its last write); outboxes and epochs are one key
per partition. An outbox entry that cannot be parsed or dead-lettered is moved to
``p:alerts:poison:{topic}:{partition}`` (capped, expiring) so that it never blocks the entries behind it.
"""

from __future__ import annotations

from typing import Any

import redis
from pydantic import BaseModel, ValidationError

from linewatch.alerts.history import AlertHistory
from linewatch.alerts.rules import AlertEvent, CameraState

POISON_KEEP = 100  # entries kept per partition for a human to look at
POISON_TTL_S = 7 * 86400
POISON_MAX_BYTES = 65_536


class FencedError(RuntimeError):
    """Another instance took over the partition: this instance must not write for it any more."""


class OutboxEntry(BaseModel):
    """One pending delivery of one transition to one channel."""

    channel: str
    event: AlertEvent

    @property
    def entry_id(self) -> str:
        """Stable id: event id plus channel."""
        return f"{self.event.event_id}:{self.channel}"


class StateStore:
    """Camera rule states, delivery outboxes and partition epochs in Redis."""

    def __init__(self, client: Any, prefix: str, history: AlertHistory, *, state_ttl_s: int = 7 * 86400) -> None:
        self.client, self.history, self.state_ttl_s = client, history, state_ttl_s
        self.base = f"{prefix}:alerts"

    def state_key(self, camera_id: str) -> str:
        """Key of one camera's rule state."""
        return f"{self.base}:state:{camera_id}"

    def outbox_key(self, topic: str, partition: int) -> str:
        """Key of one input partition's outbox (a list, oldest first)."""
        return f"{self.base}:outbox:{topic}:{partition}"

    def epoch_key(self, topic: str, partition: int) -> str:
        """Key of one input partition's owner epoch (incremented by every new owner)."""
        return f"{self.base}:epoch:{topic}:{partition}"

    def poison_key(self, topic: str, partition: int) -> str:
        """Key of the outbox entries of one partition that could be neither delivered nor dead-lettered."""
        return f"{self.base}:poison:{topic}:{partition}"

    def acquire(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """Become the owner of ``partitions``: a new epoch each, which fences out the previous owner."""
        pipe = self.client.pipeline(transaction=True)
        for partition in partitions:
            pipe.incr(self.epoch_key(topic, partition))
        return dict(zip(partitions, (int(e) for e in pipe.execute()), strict=True))

    def owns(self, topic: str, epochs: dict[int, int]) -> set[int]:
        """The partitions among ``epochs`` whose epoch is still ours."""
        if not epochs:
            return set()
        current = self.client.mget([self.epoch_key(topic, p) for p in epochs])
        return {p for (p, mine), now in zip(epochs.items(), current, strict=True) if now is not None
                and int(now) == mine}

    def load(self, camera_id: str) -> CameraState:
        """The camera's saved state, or a fresh one."""
        raw = self.client.get(self.state_key(camera_id))
        return CameraState.model_validate_json(raw) if raw else CameraState(camera_id=camera_id)

    def load_many(self, camera_ids: list[str]) -> dict[str, CameraState]:
        """Saved states of several cameras (those that have one)."""
        if not camera_ids:
            return {}
        raws = self.client.mget([self.state_key(c) for c in camera_ids])
        return {c: CameraState.model_validate_json(raw) for c, raw in zip(camera_ids, raws, strict=True) if raw}

    def commit(self, states: list[CameraState], events: list[AlertEvent], entries: list[OutboxEntry], *,
               topic: str, partitions: dict[str, int], epochs: dict[int, int] | None = None) -> None:
        """Save states, the transitions' history and the outbox entries in one transaction.

        ``partitions`` maps each camera id to the input partition its frames came from; with ``epochs``
        (partition -> our epoch) the transaction runs only while every involved partition is still ours,
        else :class:`FencedError` and nothing is written.
        """
        involved = sorted({partitions[s.camera_id] for s in states} | {partitions[e.event.alert.camera_id]
                                                                         for e in entries})
        with self.client.pipeline(transaction=True) as pipe:
            if epochs is not None:
                self._check_fence(pipe, topic, {p: epochs.get(p, -1) for p in involved})
            pipe.multi()
            for state in states:
                pipe.set(self.state_key(state.camera_id), state.model_dump_json(), ex=self.state_ttl_s)
            for event in events:
                self._stage_history(pipe, event)
            for entry in entries:
                pipe.rpush(self.outbox_key(topic, partitions[entry.event.alert.camera_id]), entry.model_dump_json())
            try:
                pipe.execute()
            except redis.WatchError as exc:
                raise FencedError(f"partitions {involved} of {topic} changed owner during the write") from exc

    def _stage_history(self, pipe: Any, event: AlertEvent) -> None:
        """A transition goes to the history; a ``suspect`` mark (no state change) only updates the alert's
        record, keeping its expiry, so that the page and a re-send after a restart show the mark."""
        if event.kind != "suspect":
            self.history.stage_event(pipe, event)
            return
        pipe.set(self.history.alert_key(event.alert.alert_id), event.alert.model_dump_json(exclude={"ack", "acks"}),
                 keepttl=True)

    def _check_fence(self, pipe: Any, topic: str, epochs: dict[int, int]) -> None:
        """WATCH the epoch keys (the pipeline is in immediate mode) and fail unless they are still ours."""
        keys = [self.epoch_key(topic, p) for p in epochs]
        if not keys:
            return
        pipe.watch(*keys)
        current = pipe.mget(keys)
        stale = [p for (p, mine), now in zip(epochs.items(), current, strict=True)
                 if now is None or int(now) != mine]
        if stale:
            pipe.reset()
            raise FencedError(f"partitions {stale} of {topic} belong to a newer owner")

    def pending(self, topic: str, partition: int) -> tuple[list[tuple[bytes, OutboxEntry]], list[bytes]]:
        """The partition's undelivered entries, oldest first, with their raw form for :meth:`done`, and the
        raw entries that do not parse (for :meth:`quarantine`)."""
        good, bad = [], []
        for raw in self.client.lrange(self.outbox_key(topic, partition), 0, -1):
            try:
                good.append((raw, OutboxEntry.model_validate_json(raw)))
            except ValidationError:
                bad.append(raw)
        return good, bad

    def done(self, topic: str, partition: int, raw: bytes) -> None:
        """Remove a delivered (or dead-lettered) entry."""
        self.client.lrem(self.outbox_key(topic, partition), 1, raw)

    def quarantine(self, topic: str, partition: int, raw: bytes, reason: str) -> None:
        """Move an entry that can be neither delivered nor dead-lettered out of the outbox (kept, capped)."""
        key = self.poison_key(topic, partition)
        note = f"{reason[:500]}\n".encode() + raw[:POISON_MAX_BYTES]
        pipe = self.client.pipeline(transaction=True)
        pipe.lrem(self.outbox_key(topic, partition), 1, raw)
        pipe.lpush(key, note)
        pipe.ltrim(key, 0, POISON_KEEP - 1)
        pipe.expire(key, POISON_TTL_S)
        pipe.execute()
