"""A producer that tracks deliveries: a full local queue is waited out, a refusal is the client's typed
:class:`KafkaException`, and :meth:`DeliveryProducer.send_and_wait` turns a record that the broker
does not acknowledge into :class:`DeliveryFailedError`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from linewatch.errors import BrokerError

OnDelivery = Callable[[KafkaError | None, Message], None]
Headers = list[tuple[str, bytes]] | None


class DeliveryFailedError(BrokerError, RuntimeError):
    """The broker did not take a record: refused by the client, failed, or not acknowledged in time."""


class QueueFullError(BufferError):
    """The producer's local queue stayed full for longer than allowed."""


class DeliveryProducer:
    """Wraps a client :class:`Producer` (built by the caller, so its configuration stays the caller's)."""

    def __init__(self, producer: Producer) -> None:
        self.client = producer

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | list[Any] = None,
                on_delivery: OnDelivery | None = None, queue_wait_s: float | None = None) -> None:
        """Produce one record; while the local queue is full, serve callbacks until there is room.

        Raises the client's :class:`KafkaException` when it refuses the record (too large, invalid),
        :class:`QueueFullError` when the queue is still full after ``queue_wait_s`` (None: wait on).
        """
        deadline = None if queue_wait_s is None else time.monotonic() + queue_wait_s
        while True:
            try:
                self.client.produce(topic, key=key, value=value, headers=cast(Any, headers), on_delivery=on_delivery)
                return
            except BufferError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise QueueFullError(f"local queue full for {queue_wait_s:.0f}s") from exc
                self.client.poll(0.05)

    def send_and_wait(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | list[Any] = None,
                      timeout_s: float = 30.0) -> None:
        """Produce one record and wait for its acknowledgement; :class:`DeliveryFailedError` when there is none."""
        outcome: list[KafkaError | None] = []
        try:
            self.produce(topic, key, value, headers, lambda err, _msg: outcome.append(err), queue_wait_s=timeout_s)
        except (BufferError, KafkaException) as exc:
            raise DeliveryFailedError(f"{topic} refused the record: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while not outcome and time.monotonic() < deadline:
            self.client.poll(min(0.1, max(0.0, deadline - time.monotonic())))
        if not outcome:
            raise DeliveryFailedError(f"{topic} did not acknowledge within {timeout_s:.0f}s")
        if outcome[0] is not None:
            raise DeliveryFailedError(f"{topic}: {outcome[0]}")

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks."""
        return int(self.client.poll(timeout_s))

    def flush(self, timeout_s: float) -> int:
        """Wait for every record to be acknowledged (up to ``timeout_s``); returns how many are still in flight."""
        deadline = time.monotonic() + timeout_s
        remaining = int(self.client.flush(timeout_s))
        while remaining and time.monotonic() < deadline:
            remaining = int(self.client.flush(max(0.0, deadline - time.monotonic())))
        return remaining
