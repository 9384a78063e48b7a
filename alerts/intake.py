"""What the alerts service accepts from the results topic, and how much of a refused record it passes on.

A result record is refused (and dead-lettered) unless it is at most ``guard.max_result_bytes``, parses
as a :class:`~detector.events.FrameResult` of a known schema version, its camera id follows the one id
rule of the system (:func:`ingest.wire.is_valid_camera_id`), its record key equals that id, its text
fields are bounded and its sequence and capture time fit in 63 bits. Every size downstream (Redis
keys, outbox entries, delivery bodies, dead-letter records) is therefore bounded by the guard.

Dead-letter records are bounded too (:func:`bounded_dead_letter`), like the detector's: a value over
:data:`MAX_DEAD_LETTER_VALUE` keeps its head and says so in ``dl-value-truncated-from``, so a record
the broker took once can always be dead-lettered.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from linewatch.alerts.settings import GuardSettings
from linewatch.detector.events import EVENT_SCHEMA_VERSION, FrameResult
from linewatch.errors import DataError
from linewatch.ingest.wire import LINE_ID_PATTERN, is_valid_camera_id

MAX_DEAD_LETTER_VALUE = 900_000  # below librdkafka's default message.max.bytes (1 MB), headers included
MAX_DEAD_LETTER_KEY = 1024
MAX_DEAD_LETTER_HEADER = 4096
MAX_DEAD_LETTER_HEADERS = 32
INT63 = 2**63


class RejectedRecordError(DataError, ValueError):
    """A result record the alerts service does not apply; ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _short(text: str) -> str:
    return repr(text[:80]) + (f" (length {len(text)})" if len(text) > 80 else "")


def decode_result(value: bytes | None, key: bytes | None, guard: GuardSettings) -> FrameResult:
    """The record as a :class:`FrameResult`, or :class:`RejectedRecordError`."""
    raw = value or b""
    if len(raw) > guard.max_result_bytes:
        raise RejectedRecordError("too_large", f"{len(raw)} bytes > {guard.max_result_bytes}")
    try:
        result = FrameResult.model_validate_json(raw)
    except ValidationError as exc:
        raise RejectedRecordError("invalid", str(exc).splitlines()[0][:300]) from exc
    if result.schema_version != EVENT_SCHEMA_VERSION:
        raise RejectedRecordError("schema_version", f"unknown schema_version {result.schema_version}")
    check_ids(result, key)
    check_sizes(result, guard)
    return result


def check_ids(result: FrameResult, key: bytes | None) -> None:
    """The camera id follows the id rule and is the record's key; the line id is printable and short."""
    if not is_valid_camera_id(result.camera_id):
        raise RejectedRecordError("bad_camera_id", f"camera id {_short(result.camera_id)} breaks the id rule")
    if key != result.camera_id.encode():
        shown = _short((key or b"").decode(errors="replace"))
        raise RejectedRecordError("key_mismatch", f"record key {shown} is not camera id {result.camera_id!r}")
    if not re.fullmatch(LINE_ID_PATTERN, result.line_id):
        raise RejectedRecordError("bad_line_id", f"line id {_short(result.line_id)} breaks the id rule")


def check_sizes(result: FrameResult, guard: GuardSettings) -> None:
    """Text fields within ``guard.max_text_chars`` (heatmap key 4x); sequence and capture time in 0..2^63-1."""
    limit = guard.max_text_chars
    fields = {"model_version": (result.model_version, limit), "label": (result.label, limit),
              "defect_type": (result.defect_type, limit), "source_id": (result.source_id, limit),
              "heatmap_key": (result.heatmap_key, 4 * limit)}
    for name, (text, most) in fields.items():
        if text is not None and len(text) > most:
            raise RejectedRecordError("too_large", f"{name} has {len(text)} characters > {most}")
    for name, number in (("sequence", result.sequence), ("capture_ns", result.capture_ns)):
        if not 0 <= number < INT63:
            raise RejectedRecordError("out_of_range", f"{name} {number} outside 0..2^63-1"[:200])


Headers = list[tuple[str, str | bytes | None]]


def bounded_dead_letter(key: bytes | str | None, value: bytes,
                        headers: list[tuple[str, Any]]) -> tuple[bytes | None, bytes, Headers]:
    """Key, value and headers cut so that the record fits the producer's limit whatever came in."""
    raw_key = key.encode(errors="replace") if isinstance(key, str) else key
    bounded: Headers = []
    for name, item in headers[:MAX_DEAD_LETTER_HEADERS]:
        data = item.encode(errors="replace") if isinstance(item, str) else (item or b"")
        bounded.append((name[:100], data[:MAX_DEAD_LETTER_HEADER]))
    if raw_key is not None and len(raw_key) > MAX_DEAD_LETTER_KEY:
        bounded.append(("dl-key-truncated-from", str(len(raw_key)).encode()))
        raw_key = raw_key[:MAX_DEAD_LETTER_KEY]
    if len(value) > MAX_DEAD_LETTER_VALUE:
        bounded.append(("dl-value-truncated-from", str(len(value)).encode()))
        value = value[:MAX_DEAD_LETTER_VALUE]
    return raw_key, value, bounded
