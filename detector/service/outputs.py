"""Producers of the detector's outputs: results, breaches and dead letters.

One idempotent producer (``enable.idempotence``: broker-side retries never duplicate or
reorder), through the shared :class:`~linewatch.common.kafka.DeliveryProducer`. Every output is
registered with the :class:`~linewatch.common.kafka.CommitGate` (in the generation its frame was
consumed in) before it is produced and acknowledged from its delivery callback, so an
input offset is stored only after the broker has every output of that frame.

Within a batch (:meth:`OutputProducer.begin_batch` .. :meth:`OutputProducer.end_batch`) outputs
are held and produced in record order, so one camera's results keep their order even when the
model runs frames grouped by size; each frame's guard is released only after its outputs are
produced. No record can stop its partition: an output the client refuses (too large, invalid)
or the broker rejects for good turns the record into a dead letter, and a dead letter is cut to
fit the producer's message limit. Only transient delivery failures that outlast ``retries``
re-sends mark the partition failed (never committed past) and stop the service, so a restart
reprocesses the frame instead of losing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from linewatch.common.kafka import CommitGate, DeliveryProducer
from linewatch.detector.events import Breach, FrameResult, dead_letter_headers
from linewatch.detector.service.decoding import Record, Rejected

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]] | None
RecordId = tuple[str, int, int]
MAX_DEAD_LETTER_VALUE = 900_000  # below librdkafka's default message.max.bytes (1 MB), headers included
RECORD_OVERHEAD = 512  # batch and record framing, header counts and lengths, kept free of the size limit
MAX_DEAD_LETTER_KEY = 256
# Delivery errors no re-send can fix: the record becomes a dead letter instead of blocking its partition.
PERMANENT_DELIVERY_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
})


@dataclass
class _Held:
    """An output of the open batch, produced at :meth:`OutputProducer.end_batch`."""

    result: FrameResult | None = None
    rejected: Rejected | None = None


def _describe(exc: KafkaException) -> str:
    """``NAME (text)`` of a client error, name first so that a cut error header still says what happened."""
    error = exc.args[0] if exc.args else None
    return f"{error.name()} ({error.str()})" if isinstance(error, KafkaError) else str(exc)


def _record_id(record: Record) -> RecordId:
    return record.topic, record.partition, record.offset


class OutputProducer:
    """Produces outputs keyed by camera id and tracks their acknowledgements per input frame."""

    def __init__(self, config: dict[str, Any], tracker: CommitGate, *, results_topic: str,
                 breaches_topic: str, dead_letters_topic: str, retries: int = 3) -> None:
        self._producer = DeliveryProducer(Producer(config))
        self._tracker = tracker
        self.results_topic = results_topic
        self.breaches_topic = breaches_topic
        self.dead_letters_topic = dead_letters_topic
        self._retries = retries
        self._budget = max(0, int(config.get("message.max.bytes", 1_000_000)) - RECORD_OVERHEAD)
        self._batch: dict[RecordId, list[_Held]] | None = None
        self._batch_records: list[Record] = []
        self.fatal_error: str | None = None
        self.unproducible = 0  # records whose outputs could not be produced (dead-lettered instead)
        self.lost = 0  # records for which not even a dead letter could be produced (logged)

    # -- batch framing ---------------------------------------------------------------------

    def begin_batch(self, records: Sequence[Record]) -> None:
        """Hold the outputs of ``records`` until :meth:`end_batch`, which produces them in record order."""
        self._batch_records = list(records)
        self._batch = {_record_id(record): [] for record in records}

    def end_batch(self, unwritten_heatmap: Callable[[str], bool] = lambda _key: False,
                  failure: str | None = None) -> None:
        """Produce the held outputs in record order, then release each frame's guard.

        ``unwritten_heatmap(key)`` says a result's heatmap will not be in Redis (its write was
        skipped): such a result goes out without a ``heatmap_key``. A record that got no output
        (processing failed with ``failure``, or a bug) is dead-lettered rather than committed
        without one, so a record that breaks processing cannot crash-loop the detector.
        """
        batch, records = self._batch or {}, self._batch_records
        self._batch, self._batch_records = None, []
        reason, why = ("processing_error", failure) if failure else ("no_output", "processing produced no output")
        for record in records:
            held = batch.get(_record_id(record)) or [_Held(rejected=Rejected(record, reason, why))]
            for item in held:
                self._produce_held(item, record, unwritten_heatmap)
            self._tracker.release((record.topic, record.partition), record.offset, record.generation)

    def _produce_held(self, item: _Held, record: Record, unwritten_heatmap: Callable[[str], bool]) -> None:
        if item.rejected is not None:
            self._produce_dead_letter(item.rejected)
            return
        assert item.result is not None
        result = item.result
        if result.heatmap_key is not None and unwritten_heatmap(result.heatmap_key):
            result = result.model_copy(update={"heatmap_key": None})
        self._produce_result(result, record)

    def _hold(self, record: Record, item: _Held) -> bool:
        """Keep ``item`` for the batch's end; False outside a batch (or for a record not in it)."""
        if self._batch is None or _record_id(record) not in self._batch:
            return False
        self._batch[_record_id(record)].append(item)
        return True

    # -- outputs ---------------------------------------------------------------------------

    def result(self, result: FrameResult, record: Record) -> None:
        """Produce a frame's result (a :class:`Breach` also goes to the breaches topic)."""
        if self._hold(record, _Held(result=result)):
            return
        self._produce_result(result, record)
        self._tracker.release((record.topic, record.partition), record.offset, record.generation)

    def dead_letter(self, rejected: Rejected) -> None:
        """Produce the record's value unchanged (cut to fit), with where it came from and why in the headers."""
        if self._hold(rejected.record, _Held(rejected=rejected)):
            return
        self._produce_dead_letter(rejected)
        record = rejected.record
        self._tracker.release((record.topic, record.partition), record.offset, record.generation)

    def _produce_result(self, result: FrameResult, record: Record) -> None:
        key = result.camera_id.encode()
        outputs: list[tuple[str, bytes]] = []
        if isinstance(result, Breach):
            plain = FrameResult.model_validate(result.model_dump(exclude={"region"}))
            outputs = [(self.results_topic, plain.model_dump_json().encode()),
                       (self.breaches_topic, result.model_dump_json().encode())]
        else:
            outputs = [(self.results_topic, result.model_dump_json().encode())]
        for topic, value in outputs:
            try:
                self._send(topic, key, value, None, record)
            except KafkaException as exc:
                self._unproducible(record, f"{_describe(exc)}: the client refused the output to {topic}")
                return

    def _unproducible(self, record: Record, why: str) -> None:
        """An output of ``record`` can never be produced: dead-letter the record instead."""
        self.unproducible += 1
        log.error("%s[%d]@%d: %s; dead-lettering the record", record.topic, record.partition, record.offset, why)
        self._produce_dead_letter(Rejected(record, "output_unproducible", why))

    def _produce_dead_letter(self, rejected: Rejected) -> None:
        record = rejected.record
        headers, key, value = self._fit_dead_letter(rejected)
        try:
            self._send(self.dead_letters_topic, key, value, headers, record)
        except KafkaException as exc:
            self._dead_letter_bare(rejected, _describe(exc))

    def _fit_dead_letter(self, rejected: Rejected) -> tuple[list[tuple[str, bytes]], bytes | None, bytes | None]:
        """Headers, key and value of a dead letter cut to the producer's message limit.

        Within the budget: the dl-* headers first (the error text at most 1/8 of it), then as many
        original headers as fit in half of what is left, then the key (at most 256 bytes), then the
        value's head (at most ``MAX_DEAD_LETTER_VALUE``); every cut is stated in a header.
        """
        record, budget = rejected.record, self._budget
        base = dead_letter_headers(topic=record.topic, partition=record.partition, offset=record.offset,
                                   error_class=rejected.reason, message=rejected.message, original=None,
                                   max_error_bytes=min(2000, budget // 8))
        used = sum(len(n) + len(v) for n, v in base)
        headers = dead_letter_headers(topic=record.topic, partition=record.partition, offset=record.offset,
                                      error_class=rejected.reason, message=rejected.message,
                                      original=record.headers, max_error_bytes=min(2000, budget // 8),
                                      max_original_bytes=min(16_384, max(0, budget - used - 64) // 2))
        key = record.key
        if key is not None and len(key) > MAX_DEAD_LETTER_KEY:
            headers.append(("dl-key-truncated-from", str(len(key)).encode()))
            key = key[:MAX_DEAD_LETTER_KEY]
        value = record.value
        room = max(0, min(MAX_DEAD_LETTER_VALUE, budget - sum(len(n) + len(v) for n, v in headers) - len(key or b"")
                          - 64))
        if value is not None and len(value) > room:
            # A record the broker took may still exceed our producer's limit: keep its head, say so.
            headers.append(("dl-value-truncated-from", str(len(value)).encode()))
            value = value[:room]
        return headers, key, value

    def _dead_letter_bare(self, rejected: Rejected, error: str) -> None:
        """Last resort: a dead letter with no key, no value and only the dl-* headers."""
        record = rejected.record
        headers = dead_letter_headers(topic=record.topic, partition=record.partition, offset=record.offset,
                                      error_class=rejected.reason, message=f"{rejected.message}; {error}",
                                      original=None, max_error_bytes=200)
        try:
            self._send(self.dead_letters_topic, None, None, headers, record)
        except KafkaException as exc:
            self.lost += 1
            log.error("%s[%d]@%d: not even a bare dead letter could be produced (%s); skipping the record",
                      record.topic, record.partition, record.offset, exc)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, record: Record,
              attempt: int = 0) -> None:
        """Produce one output; raises KafkaException when the client refuses it (nothing stays counted)."""
        tp, generation = (record.topic, record.partition), record.generation
        counted = self._tracker.add_output(tp, record.offset, generation) if attempt == 0 else True

        def give_up(why: str) -> None:
            """This output will never exist: produce what replaces it, then stop counting it."""
            if topic != self.dead_letters_topic:
                self._unproducible(record, why)
            elif key or value:
                self._dead_letter_bare(Rejected(record, "dead_letter_refused", why), why)
            else:
                self.lost += 1
                log.error("%s[%d]@%d: bare dead letter refused (%s); skipping the record", record.topic,
                          record.partition, record.offset, why)
            self._tracker.ack(tp, record.offset, generation)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._tracker.ack(tp, record.offset, generation)
            elif err.code() in PERMANENT_DELIVERY_ERRORS:
                give_up(f"{err.name()}: the broker refused the output to {topic} ({err.str()})")
            elif attempt < self._retries and not err.fatal():
                log.warning("delivery to %s failed (%s); re-sending (attempt %d)", topic, err, attempt + 1)
                try:
                    self._send(topic, key, value, headers, record, attempt + 1)
                except KafkaException as exc:
                    give_up(f"{_describe(exc)}: the client refused the re-sent output to {topic}")
            else:
                self._tracker.fail(tp)
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                self.fatal_error = f"output for {where} to {topic} lost: {err}"
                log.error(self.fatal_error)

        try:
            self._producer.produce(topic, key, value, headers, on_delivery=delivered)  # waits out a full queue
        except KafkaException:
            if counted and attempt == 0:
                self._tracker.ack(tp, record.offset, generation)  # un-count: this output will not exist
            raise

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks."""
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Wait for every output to be acknowledged; returns how many are still in flight."""
        return self._producer.flush(timeout_s)
