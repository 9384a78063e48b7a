"""The commit gate: an input offset is committable only when every earlier input is fully acknowledged.

Each consumed input (a frame, or the last record of a batch) holds a count of unacknowledged
outputs plus one "guard" that its owner releases once it has produced every output of it. The
input is done when the count reaches zero. For each partition the committable position is N + 1
where N is the highest offset such that every tracked input at or below N is done; inputs finish
out of order (delivery callbacks), the position only moves over a contiguous done prefix.

Every tracked partition carries an assignment generation, new each time the partition is tracked
again after :meth:`CommitGate.forget` (revoke, loss, fencing, re-assignment). Outputs and guards are
counted against the generation the input was consumed in: an acknowledgement of an earlier
generation (a delivery that was in flight when the partition was lost) is a no-op, so it can never
make a re-consumed input of the new owner committable early.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

TopicPartitionKey = tuple[str, int]


class OutOfOrderError(ValueError):
    """An offset was tracked at or below one already tracked in the same generation."""


class CommitGate:
    """Thread-safe: inputs are tracked by the consumer thread, acknowledged by delivery callbacks."""

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
        """Register a consumed input (offsets of one partition must arrive in increasing order).

        Returns the partition's generation, which every later call about this input must pass.
        Raises :class:`OutOfOrderError` for an offset at or below the last one tracked.
        """
        with self._lock:
            if offset <= self._last.get(tp, -1):
                raise OutOfOrderError(f"offset {offset} of {tp} tracked out of order")
            if tp not in self._generation:
                self._generation[tp], self._next_generation = self._next_generation, self._next_generation + 1
            self._last[tp] = offset
            self._pending.setdefault(tp, OrderedDict())[offset] = 1
            return self._generation[tp]

    def _inputs(self, tp: TopicPartitionKey, offset: int, generation: int) -> OrderedDict[int, int] | None:
        """The partition's pending inputs when (offset, generation) is still tracked, else None."""
        inputs = self._pending.get(tp)
        if inputs is None or offset not in inputs or self._generation.get(tp) != generation:
            return None
        return inputs

    def add_output(self, tp: TopicPartitionKey, offset: int, generation: int) -> bool:
        """One more output of the input is in flight (call before producing it).

        False (nothing counted) when the input is no longer tracked in that generation: the
        partition was revoked or lost, and its new owner re-reads the input.
        """
        with self._lock:
            inputs = self._inputs(tp, offset, generation)
            if inputs is None:
                return False
            inputs[offset] += 1
            return True

    def ack(self, tp: TopicPartitionKey, offset: int, generation: int) -> None:
        """An output was acknowledged, or the guard released; may advance the partition.

        A no-op for an input of an earlier generation (stale acknowledgement).
        """
        with self._lock:
            inputs = self._inputs(tp, offset, generation)
            if inputs is None:
                return
            inputs[offset] -= 1
            self._advance(tp, inputs)

    def release(self, tp: TopicPartitionKey, offset: int, generation: int | None = None) -> None:
        """Release the input's guard once every output of it is produced.

        A call without a generation cannot be fenced against a re-assignment and is ignored.
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

    def _advance(self, tp: TopicPartitionKey, inputs: OrderedDict[int, int]) -> None:
        if tp in self._failed:
            return
        last_done = None
        while inputs:
            offset, count = next(iter(inputs.items()))
            if count > 0:
                break
            inputs.popitem(last=False)
            last_done = offset
        if last_done is not None:
            self._ready[tp] = last_done + 1

    def take_ready(self, only: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Positions (next offset to read) that became committable since the last call (of ``only``'s partitions)."""
        with self._lock:
            if only is None:
                ready, self._ready = self._ready, {}
                return ready
            return {tp: self._ready.pop(tp) for tp in only if tp in self._ready}

    def in_flight(self, tp: TopicPartitionKey | None = None) -> int:
        """Inputs not yet fully acknowledged, of one partition or all together."""
        with self._lock:
            if tp is not None:
                return len(self._pending.get(tp, ()))
            return sum(len(inputs) for inputs in self._pending.values())

    def forget(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Drop the state of revoked, lost or fenced partitions; their late acknowledgements become no-ops."""
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
