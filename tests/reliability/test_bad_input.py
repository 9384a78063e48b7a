"""Bad input: every malformed record becomes a dead letter (never a crash); a fuzz test of the wire decoder."""

from __future__ import annotations

import random
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from helpers.faults import FULL, TopicCollector, create_topics, report, size, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_crash import result_pair
from test_outages import _detector

from linewatch.ingest.wire import FrameMeta, WireFormatError, decode_frame, encode_frame, meta_to_headers

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def _with_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) rewritten to claim ``width`` x ``height``."""
    pos = jpeg.index(b"\xff\xc0")
    return jpeg[:pos + 5] + struct.pack(">HH", height, width) + jpeg[pos + 9:]


def _headers(meta: FrameMeta, **changes: object) -> list[tuple[str, bytes]]:
    return meta_to_headers(FrameMeta(**{**meta.__dict__, **changes}))


def bad_cases(rng: random.Random) -> dict[str, tuple[bytes | None, list | None]]:
    """Name -> (value, headers) of every malformed record kind the suite sends."""
    good = encode_frame(np.full((64, 64, 3), 120, np.uint8), camera_id="cam-x", line_id="line-1", sequence=1,
                        capture_ns=time.time_ns())
    v, h, m = good.value, good.headers, good.meta
    cases: dict[str, tuple[bytes | None, list | None]] = {
        "truncated_jpeg": (v[: len(v) // 2], h), "truncated_jpeg_header": (v[:30], h),
        "bomb_30000x30000_headers_agree": (_with_sof(v, 30000, 30000), _headers(m, width=30000, height=30000)),
        "bomb_30000x30000_headers_small": (_with_sof(v, 30000, 30000), h),
        "zero_size_value": (b"", h), "null_value": (None, h), "zero_size_jpeg": (_with_sof(v, 0, 0), h),
        "no_headers": (v, None), "unknown_version": (v, [(n, b"7" if n == "lw-version" else x) for n, x in h]),
        "non_integer_seq": (v, [(n, b"abc" if n == "lw-seq" else x) for n, x in h]),
        "negative_width": (v, [(n, b"-5" if n == "lw-width" else x) for n, x in h]),
        "wrong_dimensions": (v, _headers(m, width=32)), "bad_encoding": (v, _headers(m, encoding="gif")),
        "bad_label": (v, _headers(m, label="maybe")), "non_ascii_header": (v, [*h[:-1], ("lw-channels", b"\xff")]),
        "png_claiming_jpeg": (b"\x89PNG\r\n\x1a\n" + v[8:], h),
        "raw_wrong_length": (b"\x00" * 100, _headers(m, encoding="raw")),
        "huge_message_5mb": (b"\xff\xd8" + bytes(rng.getrandbits(8) for _ in range(2000)) * 2500, h),
    }
    for name in ("lw-version", "lw-camera", "lw-line", "lw-seq", "lw-capture-ns", "lw-encoding", "lw-width",
                 "lw-height", "lw-channels"):
        cases[f"missing_{name}"] = (v, [(n, x) for n, x in h if n != name])
    for i in range(size(5, 50)):
        cases[f"random_bytes_{i}"] = (bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000))), h)
        flipped = bytearray(v)
        for _ in range(rng.randint(1, 20)):
            flipped[rng.randrange(2, len(flipped))] = rng.getrandbits(8)
        cases[f"bit_flipped_jpeg_{i}"] = (bytes(flipped), h)  # may still decode: then it gets a result
    return cases


@pytest.mark.timeout(600)
def test_every_bad_record_is_dead_lettered_and_the_detector_keeps_going(bootstrap: str, redis_url: str, unique: str,
                                                                        tiny_model: Path) -> None:
    rng = random.Random(8)
    cases = bad_cases(rng)
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: 2 if role == "frames" else 1 for role, name in topics.items()})
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8_000_000})
    good = set()
    image = np.full((64, 64, 3), 90, np.uint8)
    for i, (name, (value, headers)) in enumerate(cases.items()):
        producer.produce(topics["frames"], key=name.encode(), value=value, headers=headers)
        f = encode_frame(image, camera_id="cam-good", line_id="line-1", sequence=i, capture_ns=time.time_ns())
        producer.produce(topics["frames"], key=f.key, value=f.value, headers=f.headers)  # a good one after each
        good.add(("cam-good", i))
    assert producer.flush(30) == 0
    dead = TopicCollector(bootstrap, topics["dead_letters"], lambda m: (m.key().decode(), dict(m.headers())))
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    service = _detector(bootstrap, redis_url, topics, unique, tiny_model)
    service.settings.max_side = 4096
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        def accounted() -> bool:
            flipped_ok = sum(1 for c, _ in results.items if c == "cam-x")  # bit-flipped JPEGs that still decode
            return set(results.items) >= good and len({k for k, _ in dead.items}) + flipped_ok >= len(cases)
        try:
            wait_until(accounted, size(90, 240), "every record to be accounted for")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: missing {sorted(set(cases) - {k for k, _ in dead.items})}, "
                                 f"good missing {len(good - set(results.items))}, alive {thread.is_alive()}") from None
        time.sleep(1)
        alive = thread.is_alive()
    finally:
        service.stop_event.set()
        thread.join(60)
        dead.close()
        results.close()
    dead_names = {k for k, _ in dead.items}
    decoded_anyway = sorted(set(cases) - dead_names)  # each got a result under its camera id "cam-x"
    reasons = Counter(h["dl-error-class"].decode() for _, h in dead.items)
    figures = {"cases_tried": len(cases), "dead_lettered": len(dead_names), "decoded_anyway": decoded_anyway,
               "unaccounted": len(decoded_anyway) - sum(1 for c, _ in results.items if c == "cam-x"),
               "good_frames": len(good),
               "good_results": len(set(results.items) & good), "crashes": 0 if alive else 1, "reasons": reasons}
    report("bad_input.detector", figures)
    assert alive and not figures["unaccounted"] and figures["good_results"] == len(good)
    assert all(n.startswith("bit_flipped") for n in decoded_anyway)  # the rest must never pass
    assert all(h["dl-error"] and h["dl-topic"] == topics["frames"].encode() for _, h in dead.items)
    huge = [h for k, h in dead.items if k == "huge_message_5mb"]
    assert huge and int(huge[0]["dl-value-truncated-from"]) == len(cases["huge_message_5mb"][0] or b"")


FUZZ = {"tried": 0, "valid": 0, "rejected": 0, "crashes": 0}
_GOOD = encode_frame(np.full((16, 24, 3), 77, np.uint8), camera_id="c", line_id="l", sequence=3, capture_ns=5)
_HEADER_NAMES = [n for n, _ in _GOOD.headers] + ["lw-label", "lw-x"]


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, list[tuple[str, bytes | None]] | None]:
    """Mostly-valid records with some headers and value bytes mutated, dropped or replaced."""
    headers: list[tuple[str, bytes | None]] = list(_GOOD.headers)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(_HEADER_NAMES))
        value = draw(st.one_of(st.none(), st.binary(max_size=12),
                               st.integers(-2, 70000).map(lambda n: str(n).encode()),
                               st.sampled_from([b"1", b"2", b"jpeg", b"png", b"raw", b"good", b"defect"])))
        headers = [(n, x) for n, x in headers if n != name] if draw(st.booleans()) else [*headers, (name, value)]
    value: bytes | None = _GOOD.value
    kind = draw(st.sampled_from(["keep", "truncate", "flip", "random", "none"]))
    if kind == "truncate":
        value = value[: draw(st.integers(0, len(value)))]
    elif kind == "flip":
        data = bytearray(value)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), max_size=8)):
            data[pos] ^= draw(st.integers(1, 255))
        value = bytes(data)
    elif kind == "random":
        value = draw(st.binary(max_size=600))
    elif kind == "none":
        value = None
    return value, None if draw(st.integers(0, 20)) == 0 else headers


@settings(max_examples=10_000 if FULL else 300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(records())
def test_wire_decoder_only_returns_a_valid_frame_or_raises_wire_format_error(
        record: tuple[bytes | None, list[tuple[str, bytes | None]] | None]) -> None:
    FUZZ["tried"] += 1
    try:
        meta, image = decode_frame(*record)
    except WireFormatError as exc:
        FUZZ["rejected"] += 1
        assert exc.reason and str(exc)
        return
    except Exception:
        FUZZ["crashes"] += 1
        raise
    FUZZ["valid"] += 1
    assert image.dtype == np.uint8 and image.shape == (meta.height, meta.width, 3)


def test_wire_decoder_fuzz_figures() -> None:
    """Reports the counts of the property test above (runs after it in file order)."""
    if FUZZ["tried"]:
        report("bad_input.wire_fuzz", dict(FUZZ))
    assert FUZZ["crashes"] == 0
