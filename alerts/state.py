"""Rule state in Redis, written atomically with the alert history and the delivery outbox.

One MULTI/EXEC per processed frame that changed something: the camera's state (including the
last processed sequence), the alert records and history entries of its transitions, and one
outbox entry per delivery channel. A restart reloads the state and drains the outbox, so an
alert is neither lost (its deliveries are in the outbox) nor repeated (the frames that caused
it are recognised as redeliveries).

Outboxes are per input partition, ``p:alerts:outbox:{topic}:{partition}``: a camera's frames
all land on one partition, so whichever instance owns the partition owns its deliveries.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from linewatch.alerts.history import AlertHistory
from linewatch.alerts.rules import AlertEvent, CameraState


class OutboxEntry(BaseModel):
    """One pending delivery of one transition to one channel."""

    channel: str
    event: AlertEvent

    @property
    def entry_id(self) -> str:
        """Stable id: event id plus channel."""
        return f"{self.event.event_id}:{self.channel}"


class StateStore:
    """Camera rule states and delivery outboxes in Redis."""

    def __init__(self, client: Any, prefix: str, history: AlertHistory) -> None:
        self.client, self.history = client, history
        self.base = f"{prefix}:alerts"

    def state_key(self, camera_id: str) -> str:
        """Key of one camera's rule state."""
        return f"{self.base}:state:{camera_id}"

    def outbox_key(self, topic: str, partition: int) -> str:
        """Key of one input partition's outbox (a list, oldest first)."""
        return f"{self.base}:outbox:{topic}:{partition}"

    def load(self, camera_id: str) -> CameraState:
        """The camera's saved state, or a fresh one."""
        raw = self.client.get(self.state_key(camera_id))
        return CameraState.model_validate_json(raw) if raw else CameraState(camera_id=camera_id)

    def commit(self, states: list[CameraState], events: list[AlertEvent], entries: list[OutboxEntry], *,
               topic: str, partitions: dict[str, int]) -> None:
        """Save states, the transitions' history and the outbox entries in one transaction.

        ``partitions`` maps each camera id to the input partition its frames came from.
        """
        pipe = self.client.pipeline(transaction=True)
        for state in states:
            pipe.set(self.state_key(state.camera_id), state.model_dump_json())
        for event in events:
            self.history.stage_event(pipe, event)
        for entry in entries:
            pipe.rpush(self.outbox_key(topic, partitions[entry.event.alert.camera_id]), entry.model_dump_json())
        pipe.execute()

    def pending(self, topic: str, partition: int) -> list[tuple[bytes, OutboxEntry]]:
        """The partition's undelivered entries, oldest first, with their raw form for :meth:`done`."""
        raws = self.client.lrange(self.outbox_key(topic, partition), 0, -1)
        return [(raw, OutboxEntry.model_validate_json(raw)) for raw in raws]

    def done(self, topic: str, partition: int, raw: bytes) -> None:
        """Remove a delivered (or dead-lettered) entry."""
        self.client.lrem(self.outbox_key(topic, partition), 1, raw)
