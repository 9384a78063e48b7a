"""The consumer side: which polled messages are records, rebalance callbacks that keep the commit
gate's assignment generations right, and storing / committing what the gate allows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from linewatch.common.kafka.commit import CommitGate, TopicPartitionKey

log = logging.getLogger(__name__)

Hook = Callable[[list[TopicPartitionKey]], None]


def records(messages: Iterable[Message | None]) -> list[Message]:
    """The records among polled messages: end-of-partition markers are dropped, other errors logged and dropped."""
    kept = []
    for msg in messages:
        if msg is None:
            continue
        err = msg.error()
        if err is None:
            kept.append(msg)
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)
    return kept


def _keys(partitions: list[TopicPartition]) -> list[TopicPartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


class Assignment:
    """The partitions a consumer owns; every change starts a new generation in the gate.

    Assigned partitions are forgotten before ``on_assign`` runs (their next tracked input opens a
    new generation); revoked and lost ones after ``on_revoke`` / ``on_lost`` ran, so those hooks
    may still drain and commit what is acknowledged. ``on_lost`` defaults to ``on_revoke``.
    """

    def __init__(self, consumer: Consumer, gate: CommitGate, *, on_assign: Hook | None = None,
                 on_revoke: Hook | None = None, on_lost: Hook | None = None) -> None:
        self.consumer, self.gate = consumer, gate
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._on_lost = on_lost or on_revoke
        self.partitions: set[TopicPartitionKey] = set()

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe with this assignment's callbacks."""
        self.consumer.subscribe(topics, on_assign=self.assigned, on_revoke=self.revoked, on_lost=self.lost)

    def assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: partitions assigned."""
        tps = _keys(partitions)
        self.gate.forget(tps)
        self.partitions.update(tps)
        if self._on_assign is not None:
            self._on_assign(tps)

    def revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: partitions revoked (the hook may still commit them)."""
        self._leave(_keys(partitions), self._on_revoke)

    def lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: partitions lost (session timed out; committing them is pointless)."""
        self._leave(_keys(partitions), self._on_lost)

    def drop(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Stop treating partitions as ours without a rebalance (e.g. fenced by another owner)."""
        tps = list(tps)
        self.partitions.difference_update(tps)
        self.gate.forget(tps)

    def _leave(self, tps: list[TopicPartitionKey], hook: Hook | None) -> None:
        if hook is not None:
            hook(tps)
        self.drop(tps)


def store_ready(consumer: Consumer, gate: CommitGate) -> None:
    """Store the positions the gate made committable (the next commit, explicit or automatic, sends them)."""
    ready = gate.take_ready()
    if not ready:
        return
    try:
        consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in ready.items()])
    except KafkaException as exc:  # e.g. the partition was revoked meanwhile: its new owner re-reads
        log.debug("store_offsets: %s", exc)


def commit_stored(consumer: Consumer) -> None:
    """Commit the stored positions now (synchronously); nothing stored is not an error."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            log.warning("commit failed: %s", exc)


def commit_positions(consumer: Consumer, positions: dict[TopicPartitionKey, int], asynchronous: bool = False) -> None:
    """Commit these positions (next offset to read, e.g. from :meth:`CommitGate.take_ready`)."""
    if not positions:
        return
    offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
    try:
        if asynchronous:  # two calls: the client's stubs type the two modes apart
            consumer.commit(offsets=offsets, asynchronous=True)
        else:
            consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:  # e.g. a rebalance: the records come back and are recognised
        log.warning("offset commit failed: %s", exc)
