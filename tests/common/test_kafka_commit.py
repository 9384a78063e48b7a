"""The shared commit gate's rules: commit only over a fully acknowledged prefix, one generation per
assignment, stale acknowledgements are no-ops, a lost output blocks its partition; and the
consumer-side helpers that drive it (record filter, rebalance callbacks)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from linewatch.common.kafka import Assignment, CommitGate, OutOfOrderError, records

pytestmark = pytest.mark.unit

TP = ("frames", 0)


def test_position_moves_only_over_a_fully_acknowledged_prefix() -> None:
    gate = CommitGate()
    g = gate.track(TP, 5)
    assert gate.track(TP, 6) == gate.track(TP, 7) == g
    assert gate.add_output(TP, 6, g)
    gate.release(TP, 6, g)  # guard released but its output not yet acknowledged
    gate.release(TP, 7, g)
    assert gate.take_ready() == {}
    gate.add_output(TP, 5, g)
    gate.add_output(TP, 5, g)  # two outputs of one input
    gate.release(TP, 5, g)
    gate.ack(TP, 5, g)
    assert gate.take_ready() == {}  # the second output of 5 is in flight
    gate.ack(TP, 5, g)
    assert gate.take_ready() == {TP: 6}  # 6 waits for its output, 7 behind it
    gate.ack(TP, 6, g)
    assert gate.take_ready() == {TP: 8}
    assert gate.in_flight() == 0 and gate.take_ready() == {}


def test_stale_acknowledgements_of_an_earlier_generation_are_no_ops() -> None:
    """A delivery in flight when the partition was lost must not make the new owner's re-read commit early."""
    gate = CommitGate()
    old = gate.track(TP, 10)
    assert gate.add_output(TP, 10, old)
    gate.forget([TP])  # revoked / lost / fenced
    assert gate.generation(TP) is None
    new = gate.track(TP, 10)  # re-read from the last commit: a new generation
    assert new != old and gate.generation(TP) == new
    gate.ack(TP, 10, old)  # the old delivery comes back late
    gate.release(TP, 10, old)
    assert not gate.add_output(TP, 10, old)  # nothing counted against a forgotten generation
    assert gate.take_ready() == {} and gate.in_flight(TP) == 1
    gate.release(TP, 10)  # without a generation: cannot be fenced, so ignored
    assert gate.take_ready() == {}
    gate.release(TP, 10, new)
    assert gate.take_ready() == {TP: 11}


def test_partitions_are_independent_and_a_lost_output_blocks_its_partition() -> None:
    gate = CommitGate()
    a, b = ("frames", 0), ("frames", 1)
    ga, gb = gate.track(a, 0), gate.track(b, 10)
    assert ga != gb
    gate.release(b, 10, gb)
    assert gate.take_ready(only=[a]) == {}
    assert gate.take_ready(only=[b]) == {b: 11}
    gate.add_output(a, 0, ga)
    gate.release(a, 0, ga)
    gate.fail(a)
    gate.ack(a, 0, ga)
    assert gate.take_ready() == {} and gate.failed == {a}
    with pytest.raises(OutOfOrderError):
        gate.track(b, 3)  # out of order within a generation is a bug
    gate.forget([a, b])
    gate.track(b, 3)  # after a revoke the partition starts afresh
    assert gate.failed == set()


def test_state_stays_bounded_after_many_out_of_order_acknowledgements() -> None:
    gate = CommitGate()
    tps = [("frames", p) for p in range(4)]
    for start in range(0, 4000, 16):
        batch = [(tps[i % 4], i) for i in range(start, start + 16)]
        tickets = [(tp, offset, gate.track(tp, offset)) for tp, offset in batch]
        for tp, offset, g in tickets:
            gate.add_output(tp, offset, g)
            gate.release(tp, offset, g)
        for tp, offset, g in reversed(tickets):
            gate.ack(tp, offset, g)
    assert gate.in_flight() == 0
    assert gate.take_ready() == {tp: 4000 - 3 + p for p, tp in enumerate(tps)}


class _Msg:
    def __init__(self, code: int | None) -> None:
        self._error = KafkaError(code) if code is not None else None

    def error(self) -> KafkaError | None:
        return self._error


def test_records_drops_end_of_partition_markers_and_errors() -> None:
    good = _Msg(None)
    kept = records([_Msg(KafkaError._PARTITION_EOF), good, None, _Msg(KafkaError._TRANSPORT)])  # type: ignore[list-item]
    assert kept == [good]


class _Consumer:
    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks


def test_rebalance_callbacks_open_a_new_generation_and_let_revoke_commit_first() -> None:
    gate, seen = CommitGate(), []
    consumer = _Consumer()

    def on_revoke(tps: list[tuple[str, int]]) -> None:
        seen.append(("revoke", tps, gate.generation(TP)))  # still tracked: the hook may drain and commit

    assignment = Assignment(consumer, gate, on_assign=lambda tps: seen.append(("assign", tps, gate.generation(TP))),  # type: ignore[arg-type]
                            on_revoke=on_revoke)
    assignment.subscribe(["frames"])
    assert set(consumer.callbacks) == {"on_assign", "on_revoke", "on_lost"}
    consumer.callbacks["on_assign"](consumer, [TopicPartition("frames", 0)])
    first = gate.track(TP, 0)
    consumer.callbacks["on_revoke"](consumer, [TopicPartition("frames", 0)])
    assert seen == [("assign", [TP], None), ("revoke", [TP], first)]
    assert gate.generation(TP) is None and assignment.partitions == set()
    consumer.callbacks["on_assign"](consumer, [TopicPartition("frames", 0)])
    second = gate.track(TP, 0)
    consumer.callbacks["on_lost"](consumer, [TopicPartition("frames", 0)])  # on_lost defaults to on_revoke
    assert second != first and seen[-1] == ("revoke", [TP], second)
    assert gate.generation(TP) is None
