"""End offsets that hold on every Kafka-protocol broker.

Kafka's high watermark is the offset after the last record. Tansu (the broker the tests and the
demo run) reports the base offset of the last record *batch* plus one, so a batch of 100 records
at offsets 0..99 reads as "end 1". :func:`end_offsets` asks for the high watermark, then reads the
last batch (seek to high - 1) and takes the offset after the newest record it returns: on Kafka that
is one record and changes nothing; on Tansu it is the real end.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition


def end_offsets(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float = 10.0) -> dict[int, int]:
    """The offset after the last record of each partition, as of now (the consumer's assignment is reset)."""
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
    probe = {p: high for p, high in ends.items() if high > 0}
    if not probe:
        return ends
    consumer.assign([TopicPartition(topic, p, high - 1) for p, high in probe.items()])
    waiting = set(probe)
    deadline = time.monotonic() + timeout_s
    try:
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                ends[partition] = max(ends[partition], offset + 1)
                waiting.discard(partition)  # one fetch's worth is enough: the last batch is in it
    finally:
        consumer.unassign()
    return ends
