"""Producers of the detector's outputs: results, breaches and dead letters.

One idempotent producer (``enable.idempotence``: broker-side retries never duplicate or
reorder). Every output is registered with the :class:`OffsetTracker` before it is produced
and acknowledged from its delivery callback, so an input offset is stored only after the
broker has every output of that frame. A failed delivery is re-sent ``retries`` times; after
that the partition is marked failed (never committed past) and the service stops, so a
restart reprocesses the frame instead of losing it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from linewatch.detector.events import Breach, FrameResult, dead_letter_headers
from linewatch.detector.service.decoding import Record, Rejected
from linewatch.detector.service.offsets import OffsetTracker

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]] | None
MAX_DEAD_LETTER_VALUE = 900_000  # below librdkafka's default message.max.bytes (1 MB), headers included


class OutputProducer:
    """Produces outputs keyed by camera id and tracks their acknowledgements per input frame."""

    def __init__(self, config: dict[str, Any], tracker: OffsetTracker, *, results_topic: str,
                 breaches_topic: str, dead_letters_topic: str, retries: int = 3) -> None:
        self._producer = Producer(config)
        self._tracker = tracker
        self.results_topic = results_topic
        self.breaches_topic = breaches_topic
        self.dead_letters_topic = dead_letters_topic
        self._retries = retries
        self.fatal_error: str | None = None

    def result(self, result: FrameResult, record: Record) -> None:
        """Produce a frame's result (a :class:`Breach` also goes to the breaches topic)."""
        key = result.camera_id.encode()
        if isinstance(result, Breach):
            plain = FrameResult.model_validate(result.model_dump(exclude={"region"}))
            self._send(self.results_topic, key, plain.model_dump_json().encode(), None, record)
            self._send(self.breaches_topic, key, result.model_dump_json().encode(), None, record)
        else:
            self._send(self.results_topic, key, result.model_dump_json().encode(), None, record)

    def dead_letter(self, rejected: Rejected) -> None:
        """Produce the record's value unchanged, with where it came from and why in the headers."""
        record = rejected.record
        headers = dead_letter_headers(topic=record.topic, partition=record.partition, offset=record.offset,
                                      error_class=rejected.reason, message=rejected.message,
                                      original=record.headers)
        value = record.value
        if value is not None and len(value) > MAX_DEAD_LETTER_VALUE:
            # A record the broker took may still exceed our producer's limit: keep its head, say so.
            headers.append(("dl-value-truncated-from", str(len(value)).encode()))
            value = value[:MAX_DEAD_LETTER_VALUE]
        self._send(self.dead_letters_topic, record.key, value, headers, record)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, record: Record,
              attempt: int = 0) -> None:
        tp = (record.topic, record.partition)
        if attempt == 0:
            self._tracker.add_output(tp, record.offset)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._tracker.ack(tp, record.offset)
            elif attempt < self._retries and not err.fatal():
                log.warning("delivery to %s failed (%s); re-sending (attempt %d)", topic, err, attempt + 1)
                self._send(topic, key, value, headers, record, attempt + 1)
            else:
                self._tracker.fail(tp)
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                self.fatal_error = f"output for {where} to {topic} lost: {err}"
                log.error(self.fatal_error)

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=cast(Any, headers), on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve callbacks until there is room

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float) -> int:
        """Wait for every output to be acknowledged; returns how many are still in flight."""
        deadline = time.monotonic() + timeout_s
        remaining = int(self._producer.flush(timeout_s))
        while remaining and time.monotonic() < deadline:
            remaining = int(self._producer.flush(max(0.0, deadline - time.monotonic())))
        return remaining
