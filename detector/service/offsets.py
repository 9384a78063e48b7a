"""Per-partition offset tracking: an offset is stored only when every earlier frame is fully acknowledged.

Each consumed frame holds a count of unacknowledged outputs plus one "guard" held by the
service until it has produced every output of the frame. The frame is done when the count
reaches zero. For each partition the committable position is N + 1 where N is the highest
offset such that every tracked frame at or below N is done; frames finish out of order
(delivery callbacks), the position only moves over a contiguous done prefix.

Every tracked partition carries an assignment generation, new each time the partition is
tracked again after :meth:`OffsetTracker.forget` (revoke, loss, re-assignment). Outputs and
guards are counted against the generation the frame was consumed in: an acknowledgement of an
earlier generation (a delivery of a batch that was in flight when the partition was lost) is a
no-op, so it can never make a re-consumed frame of the new owner committable early.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

TopicPartitionKey = tuple[str, int]


class OffsetTracker:
    """Thread-safe: frames are tracked by the consumer thread, acknowledged by delivery callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # partition -> offset -> outstanding count (guard + unacknowledged outputs), in offset order
        self._pending: dict[TopicPartitionKey, OrderedDict[int, int]] = {}
        self._ready: dict[TopicPartitionKey, int] = {}
        self._failed: set[TopicPartitionKey] = set()
        self._last: dict[TopicPartitionKey, int] = {}
        self._generation: dict[TopicPartitionKey, int] = {}
        self._next_generation = 1

    def track(self, tp: TopicPartitionKey, offset: int) -> int:
        """Register a consumed frame (offsets of one partition must arrive in increasing order).

        Returns the partition's generation, which every later call about this frame must pass.
        """
        with self._lock:
            if offset <= self._last.get(tp, -1):
                raise ValueError(f"offset {offset} of {tp} tracked out of order")
            if tp not in self._generation:
                self._generation[tp], self._next_generation = self._next_generation, self._next_generation + 1
            self._last[tp] = offset
            self._pending.setdefault(tp, OrderedDict())[offset] = 1
            return self._generation[tp]

    def _frames(self, tp: TopicPartitionKey, offset: int, generation: int) -> OrderedDict[int, int] | None:
        """The partition's pending frames when (offset, generation) is still tracked, else None."""
        frames = self._pending.get(tp)
        if frames is None or offset not in frames or self._generation.get(tp) != generation:
            return None
        return frames

    def add_output(self, tp: TopicPartitionKey, offset: int, generation: int) -> bool:
        """One more output of the frame is in flight (call before producing it).

        False (nothing counted) when the frame is no longer tracked in that generation: the
        partition was revoked or lost, and its new owner re-reads the frame.
        """
        with self._lock:
            frames = self._frames(tp, offset, generation)
            if frames is None:
                return False
            frames[offset] += 1
            return True

    def ack(self, tp: TopicPartitionKey, offset: int, generation: int) -> None:
        """An output was acknowledged, or the guard released; may advance the partition.

        A no-op for a frame of an earlier generation (stale acknowledgement).
        """
        with self._lock:
            frames = self._frames(tp, offset, generation)
            if frames is None:
                return
            frames[offset] -= 1
            self._advance(tp, frames)

    def release(self, tp: TopicPartitionKey, offset: int, generation: int | None = None) -> None:
        """Release the frame's guard once every output of it is produced.

        The service does this itself, with the generation, when a batch's outputs have all been
        produced (``OutputProducer.end_batch``). A call without a generation cannot be fenced
        against a re-assignment and is ignored (older callers still make it after each output).
        """
        if generation is not None:
            self.ack(tp, offset, generation)

    def generation(self, tp: TopicPartitionKey) -> int | None:
        """The partition's current generation (None when not tracked)."""
        with self._lock:
            return self._generation.get(tp)

    def fail(self, tp: TopicPartitionKey) -> None:
        """An output was lost for good: the partition must never commit past it again."""
        with self._lock:
            self._failed.add(tp)

    def _advance(self, tp: TopicPartitionKey, frames: OrderedDict[int, int]) -> None:
        if tp in self._failed:
            return
        last_done = None
        while frames:
            offset, count = next(iter(frames.items()))
            if count > 0:
                break
            frames.popitem(last=False)
            last_done = offset
        if last_done is not None:
            self._ready[tp] = last_done + 1

    def take_ready(self) -> dict[TopicPartitionKey, int]:
        """Positions (next offset to read) that became committable since the last call."""
        with self._lock:
            ready, self._ready = self._ready, {}
            return ready

    def in_flight(self) -> int:
        """Frames not yet fully acknowledged, all partitions together."""
        with self._lock:
            return sum(len(frames) for frames in self._pending.values())

    def forget(self, tps: list[TopicPartitionKey]) -> None:
        """Drop the state of revoked partitions."""
        with self._lock:
            for tp in tps:
                self._pending.pop(tp, None)
                self._ready.pop(tp, None)
                self._last.pop(tp, None)
                self._generation.pop(tp, None)
                self._failed.discard(tp)

    @property
    def failed(self) -> set[TopicPartitionKey]:
        """Partitions with an output that could not be delivered."""
        with self._lock:
            return set(self._failed)
