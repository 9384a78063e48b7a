"""The Kafka layer against the real broker: a consume -> produce -> commit loop built from it commits
exactly the inputs whose outputs the broker acknowledged, a new member resumes there, and a record
the broker cannot take is a typed failure."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from helpers.faults import create_topics, wait_until

from linewatch.common.kafka import (
    Assignment,
    CommitGate,
    DeliveryFailedError,
    DeliveryProducer,
    commit_stored,
    records,
    store_ready,
)
from linewatch.common.kafka.producer import OnDelivery

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, group: str) -> Consumer:
    # a short session: a member that left without the broker noticing (Tansu) holds the group up for its length
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                     "enable.partition.eof": True, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})


def _acker(gate: CommitGate, tp: tuple[str, int], offset: int, generation: int) -> OnDelivery:
    """A delivery callback that acknowledges one output of the input (a failed delivery stays counted)."""
    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            gate.ack(tp, offset, generation)
    return on_delivery


def _committed(consumer: Consumer, topic: str) -> dict[int, int]:
    return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in (0, 1)], 15)}


def test_only_inputs_with_every_output_acknowledged_are_committed(bootstrap: str, unique: str) -> None:
    inputs, outputs, group = f"in-{unique}", f"out-{unique}", f"g-{unique}"
    create_topics(bootstrap, {inputs: 2, outputs: 1})
    source = DeliveryProducer(Producer({"bootstrap.servers": bootstrap}))
    for i in range(20):
        source.produce(inputs, str(i).encode(), str(i).encode())
    assert source.flush(15) == 0
    gate, consumer = CommitGate(), _consumer(bootstrap, group)
    sink = DeliveryProducer(Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True}))
    assignment = Assignment(consumer, gate)
    assignment.subscribe([inputs])
    held: tuple[str, int, int, int] | None = None  # one input whose guard is never released
    seen, ends = 0, {0: 0, 1: 0}  # partition -> its last consumed offset + 1
    try:
        while seen < 20:
            for msg in records(consumer.consume(10, timeout=1.0)):
                seen += 1
                tp, offset = (msg.topic() or "", msg.partition() or 0), msg.offset() or 0
                ends[tp[1]] = offset + 1
                generation = gate.track(tp, offset)
                if tp[1] == 1 and offset == 2:
                    held = (tp[0], tp[1], offset, generation)
                    continue
                assert gate.add_output(tp, offset, generation)
                sink.produce(outputs, None, msg.value(), on_delivery=_acker(gate, tp, offset, generation))
                gate.release(tp, offset, generation)
        assert held is not None and sink.flush(15) == 0
        store_ready(consumer, gate)
        commit_stored(consumer)
        assert ends[1] > 3  # the held input has successors that are acknowledged
        assert _committed(consumer, inputs) == {0: ends[0], 1: 2}  # partition 1 stops before the held input
        gate.release((held[0], held[1]), held[2], held[3])
        store_ready(consumer, gate)
        commit_stored(consumer)
        assert _committed(consumer, inputs) == ends
    finally:
        consumer.close()
    assert assignment.partitions == set() and gate.in_flight() == 0  # leaving the group revoked everything
    source.client.produce(inputs, value=b"marker", partition=0)
    assert source.flush(15) == 0
    again, first = _consumer(bootstrap, group), []
    try:
        again.subscribe([inputs])
        wait_until(lambda: bool(first.extend(records(again.consume(1, timeout=0.5))) or first), 30, "a record")
    finally:
        again.close()
    assert (first[0].value(), first[0].offset()) == (b"marker", ends[0])  # it resumed at the commits


def test_a_record_the_broker_cannot_take_is_a_typed_failure(bootstrap: str, unique: str) -> None:
    topic = f"small-{unique}"
    create_topics(bootstrap, {topic: 1})
    producer = DeliveryProducer(Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10_000}))
    with pytest.raises(DeliveryFailedError, match="refused"):
        producer.send_and_wait(topic, None, b"x" * 50_000, None, timeout_s=15)
    producer.send_and_wait(topic, b"k", b"fits", None, timeout_s=15)  # the producer still works
