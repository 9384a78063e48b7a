"""Bad input: every malformed or hostile record becomes a dead letter (never a crash); a fuzz test of the wire
decoder over values, headers and record keys; the hostile-input figures of benchmarks/results/reliability.md."""

from __future__ import annotations

import os
import random
import signal
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from confluent_kafka import Producer
from helpers.faults import FULL, TopicCollector, create_topics, report, size, spawn, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_crash import result_pair

from linewatch.detector.service import DetectorService, DetectorSettings
from linewatch.ingest.wire import (
    DEFAULT_MAX_FUTURE_SKEW_NS,
    FrameMeta,
    WireFormatError,
    decode_frame,
    encode_frame,
    is_valid_camera_id,
    meta_to_headers,
)

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


SHORT_TTLS = {"heatmap_ttl_s": 60, "breach_ttl_s": 300, "camera_key_ttl_s": 300}  # no week-long test keys


def _detector(bootstrap: str, redis_url: str, topics: dict[str, str], unique: str, model: Path) -> DetectorService:
    return DetectorService(DetectorSettings(
        kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": f"lwr-{unique}", "socket_timeout_s": 0.5},  # type: ignore[arg-type]
        model=model, device="cpu", group_id=f"det-{unique}", session_timeout_ms=6000, metrics_port=None,
        max_batch_size=8, max_wait_ms=30, torch_threads=1, **SHORT_TTLS))  # type: ignore[arg-type]


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
        # hostile: ids that crash-looped the detector or break keys/URLs, forged times, long text
        "camera_id_200k_control": (v, _headers(m, camera_id="\x01" * 200_000)),
        "camera_id_with_slash": (v, _headers(m, camera_id="plant1/cam2")),
        "camera_id_unicode": (v, _headers(m, camera_id="cam-\u00e9")),
        "capture_far_future": (v, _headers(m, capture_ns=(1 << 63) - 1)),
        "line_id_100k": (v, _headers(m, line_id="L" * 100_000)),
        "source_id_10k": (v, _headers(m, source_id="s" * 10_000)),
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


def _largest_frame(seq: int) -> np.ndarray:
    """An 8192x4880 frame (the largest MAX_SIDE/MAX_PIXELS allow), smooth enough to JPEG under 1 MB."""
    tile = np.full((61, 128, 3), 60 + seq, np.uint8)
    tile[20:40, 30:90] = 200
    return cv2.resize(tile, (8192, 4880), interpolation=cv2.INTER_LINEAR)


def _vm(pid: int, field: str) -> float:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.timeout(900)
def test_hostile_input_figures(bootstrap: str, redis_url: str, unique: str, tiny_model: Path,
                               tmp_path: Path) -> None:
    """The "hostile input" table of benchmarks/results/reliability.md: a real ``linewatch detect``
    process (default batch size 16, default limits) gets every bad and hostile record kind, forged
    frames for victim cameras followed by their real frames, many new camera ids and a batch of the
    largest allowed frames. It must never exit, silence no camera, stay under the RSS bound and leave
    no key without a TTL."""
    rss_bound_mib = 2048.0  # half the k8s limit (4 GiB); the old code took 3,828 MB for 4 such frames
    rng = random.Random(13)
    cases = bad_cases(rng)
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: 2 if role == "frames" else 1 for role, name in topics.items()})
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8_000_000, "linger.ms": 5})
    image = np.full((64, 64, 3), 90, np.uint8)

    def send(camera: str, seq: int, key: bytes | None = None, **changes: object) -> None:
        f = encode_frame(image, camera_id=camera, line_id="line-1", sequence=seq, capture_ns=time.time_ns())
        headers = _headers(f.meta, **changes) if changes else f.headers
        producer.produce(topics["frames"], key=f.key if key is None else key, value=f.value, headers=headers)

    expected: set[tuple[str, int]] = set()
    hostile = len(cases)
    for name, (value, headers) in cases.items():
        producer.produce(topics["frames"], key=name.encode(), value=value, headers=headers)
    victims = [f"cam-v{i}" for i in range(size(4, 20))]
    for victim in victims:  # a forged frame first, then the camera's 8 real frames
        send("cam-attacker", 0, key=victim.encode())  # lands in the victim's partition, keyed as the victim
        send(victim, 0, capture_ns=time.time_ns() + 10**15)  # 11 days ahead
        send(victim, 1, key=b"cam-other")  # the victim's id with another key
        hostile += 3
        for seq in range(10, 18):
            send(victim, seq)
            expected.add((victim, seq))
    new_ids = [f"cam-n{i}" for i in range(size(50, 500))]
    for camera in new_ids:
        send(camera, 0)
        expected.add((camera, 0))
    assert producer.flush(60) == 0
    dead = TopicCollector(bootstrap, topics["dead_letters"], lambda m: m.offset())
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    prefix = f"lwr-{unique}"
    env = {"LINEWATCH_TOPICS__RESULTS": topics["results"], "LINEWATCH_TOPICS__BREACHES": topics["breaches"],
           "LINEWATCH_TOPICS__DEAD_LETTERS": topics["dead_letters"], "LINEWATCH_REDIS__KEY_PREFIX": prefix,
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000", "LINEWATCH_HEATMAP_TTL_S": "60", "LINEWATCH_BREACH_TTL_S": "300",
           "LINEWATCH_CAMERA_KEY_TTL_S": "300"}
    args = ["detect", "--model", str(tiny_model), "--bootstrap-servers", bootstrap, "--redis-url", redis_url,
            "--frames-topic", topics["frames"], "--group-id", f"det-{unique}", "--max-batch", "16",
            "--device", "cpu", "--metrics-port", "0", "--torch-threads", "2"]
    log_path = tmp_path / "detector.log"
    proc = spawn(args, env, log_path)
    client = redis.Redis.from_url(redis_url)
    try:
        try:
            wait_until(lambda: (set(results.items) >= expected and len(dead) >= hostile) or proc.poll() is not None,
                       size(240, 600), "every real frame's result and every hostile record's dead letter")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {len(dead)} of {hostile} dead letters, missing results "
                                 f"{sorted(expected - set(results.items))[:10]}") from None
        assert proc.poll() is None, log_path.read_text()[-3000:]
        rss_before = _vm(proc.pid, "VmRSS")
        big = [encode_frame(_largest_frame(i), camera_id="cam-big", line_id="line-1", sequence=i,
                            capture_ns=time.time_ns(), jpeg_quality=80) for i in range(4)]
        for f in big:
            producer.produce(topics["frames"], key=f.key, value=f.value, headers=f.headers)
            expected.add(("cam-big", f.meta.sequence))
        assert producer.flush(60) == 0
        wait_until(lambda: set(results.items) >= expected or proc.poll() is not None, size(300, 600),
                   "the largest frames' results")
        alive = proc.poll() is None
        peak = _vm(proc.pid, "VmHWM") if alive else float("nan")
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        no_ttl = [k for k in keys if client.ttl(k) == -1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        dead.close()
        results.close()
        leftover = list(client.scan_iter(f"{prefix}:*", count=1000))
        if leftover:
            client.delete(*leftover)
    silenced = [v for v in victims if not all((v, seq) in set(results.items) for seq in range(10, 18))]
    figures = {"records_tried": hostile + len(expected), "hostile_records": hostile, "dead_lettered": len(dead),
               "real_frames": len(expected), "real_results": len(set(results.items) & expected),
               "crash_loops": 0 if alive and code == 0 else 1, "exit_code_on_sigterm": code,
               "cameras_silenced": len(silenced), "largest_frame": "8192x4880",
               "largest_frame_jpeg_bytes": max(len(f.value) for f in big), "batch_of_largest": len(big),
               "rss_before_mib": round(rss_before), "peak_rss_mib": round(peak), "rss_bound_mib": rss_bound_mib,
               "keys_written": len(keys), "keys_without_ttl": len(no_ttl), "new_camera_ids": len(new_ids),
               "detector_pid_cpu_count": os.cpu_count()}
    report("bad_input.hostile", figures)
    assert alive and code == 0, log_path.read_text()[-3000:]
    assert figures["dead_lettered"] >= hostile and not silenced
    assert figures["real_results"] == len(expected)
    assert peak < rss_bound_mib
    assert keys and not no_ttl, no_ttl[:10]


FUZZ_EXAMPLES = 10_000 if FULL else 300
FUZZ_NOW_NS = 1_700_000_000 * 10**9
_GOOD = encode_frame(np.full((16, 24, 3), 77, np.uint8), camera_id="cam-1", line_id="l", sequence=3,
                     capture_ns=FUZZ_NOW_NS)
_HEADER_NAMES = [n for n, _ in _GOOD.headers] + ["lw-label", "lw-defect-type", "lw-source-id", "lw-x"]
# Characters a broken or hostile camera might put in ids and text: the allowed set, separators that
# break keys and URLs, control characters, non-ASCII.
_ID_CHARS = st.sampled_from([*"abcXYZ019._-", "/", ":", " ", "%", "\x00", "\x01", "\n", "\u00e9", "\u202e"])


def _text(max_size: int) -> st.SearchStrategy[bytes]:
    short = st.text(_ID_CHARS, max_size=max_size).map(lambda t: t.encode())
    repeated = st.tuples(st.sampled_from([b"a", b"\x01", b"/", b"9"]), st.integers(60, 70_000)).map(
        lambda pair: pair[0] * pair[1])  # lengths around and far beyond the 64-character limit
    return st.one_of(short, repeated)


def _numbers() -> st.SearchStrategy[bytes]:
    """Sequence numbers and capture times: small, jumps to the int64 limit and past it, negative, near now."""
    return st.one_of(
        st.integers(-2, 70_000), st.integers(0, (1 << 64) + 5), st.sampled_from([(1 << 63) - 1, 1 << 63]),
        st.integers(-10**12, 10**12).map(lambda d: FUZZ_NOW_NS + d * 10**3),
        st.integers(0, 10**6).map(lambda d: FUZZ_NOW_NS + DEFAULT_MAX_FUTURE_SKEW_NS + d - 500_000),
    ).map(lambda n: str(n).encode())


def _header_value(name: str) -> st.SearchStrategy[bytes | None]:
    if name in ("lw-seq", "lw-capture-ns", "lw-width", "lw-height", "lw-channels", "lw-version"):
        specific: st.SearchStrategy[bytes] = _numbers()
    elif name in ("lw-camera", "lw-line", "lw-source-id", "lw-defect-type", "lw-x"):
        specific = _text(80)
    else:
        specific = st.sampled_from([b"1", b"2", b"jpeg", b"png", b"raw", b"good", b"defect"])
    return st.one_of(st.none(), st.binary(max_size=12), specific)


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]:
    """(key, value, headers): mostly-valid records with the key, headers and value bytes mutated."""
    headers: list[tuple[str, bytes | None]] = list(_GOOD.headers)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(_HEADER_NAMES))
        value = draw(_header_value(name))
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
    camera = dict((n, x) for n, x in headers if x is not None).get("lw-camera")
    key = draw(st.one_of(st.just(camera), st.none(), _text(80)))  # usually the camera's own id
    return key, value, None if draw(st.integers(0, 20)) == 0 else headers


def _decode_checked(record: tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]) -> str:
    """``"valid"`` or ``"rejected"``; an AssertionError when a returned frame breaks a rule a consumer relies
    on (id rule, key == lw-camera, no future capture time, bounded text), any other exception when it crashes."""
    key, value, headers = record
    try:
        meta, image = decode_frame(value, headers, key=key, now_ns=FUZZ_NOW_NS)
    except WireFormatError as exc:
        assert exc.reason and str(exc)
        return "rejected"
    assert image.dtype == np.uint8 and image.shape == (meta.height, meta.width, 3)
    assert is_valid_camera_id(meta.camera_id) and key == meta.camera_id.encode()
    assert meta.capture_ns <= FUZZ_NOW_NS + DEFAULT_MAX_FUTURE_SKEW_NS and 0 <= meta.sequence < 1 << 63
    assert 1 <= len(meta.line_id) <= 64 and all(len(t or "") <= 256 for t in (meta.source_id, meta.defect_type))
    return "valid"


def test_wire_decoder_only_returns_a_valid_frame_or_raises_wire_format_error() -> None:
    """Whatever the key, headers and value, the decoder returns a frame that satisfies every rule a
    consumer relies on or raises WireFormatError. Reports the run's own figures (bad_input.wire_fuzz of
    benchmarks/results/reliability.md): they are counted here, not by another test, so they hold when
    this test runs alone."""
    outcomes: Counter[str] = Counter()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @example((_GOOD.key, _GOOD.value, list(_GOOD.headers)))  # the frame unmodified: the valid branch always runs
    @given(records())
    def decode(record: tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]) -> None:
        outcomes[_decode_checked(record)] += 1

    decode()  # a crash or a broken rule fails here, with the falsifying record
    figures = {"tried": outcomes.total(), "valid": outcomes["valid"], "rejected": outcomes["rejected"], "crashes": 0}
    report("bad_input.wire_fuzz", figures)
    assert figures["tried"] > FUZZ_EXAMPLES // 2 and figures["valid"] and figures["rejected"], figures
