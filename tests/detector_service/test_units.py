"""Model-free parts of the detector: batch closing, offset tracking, regions, decode selection, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from linewatch.common.kafka import CommitGate
from linewatch.detector.service.batcher import Batcher
from linewatch.detector.service.decoding import (
    DecodedFrame,
    Decoder,
    Record,
    Rejected,
    group_by_size,
    select_decode_backend,
)
from linewatch.detector.service.metrics import DetectorMetrics
from linewatch.detector.service.region import summarise_region
from linewatch.detector.service.settings import DetectorSettings
from linewatch.ingest.wire import encode_frame, meta_to_headers


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batch_closes_at_max_size_before_the_deadline() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(3, 0.05, clock)
    assert batcher.time_left() is None and not batcher.ready()
    for i in range(3):
        assert not batcher.ready()
        batcher.add(i)
    assert batcher.ready() and batcher.time_left() == 0.0
    with pytest.raises(OverflowError):
        batcher.add(4)
    assert batcher.take() == [0, 1, 2]
    assert len(batcher) == 0 and batcher.time_left() is None


def test_batch_closes_max_wait_after_its_first_item_not_the_last() -> None:
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(10, 0.05, clock)
    batcher.add("a")
    clock.now += 0.03
    batcher.add("b")  # a later item does not extend the deadline
    assert batcher.time_left() == pytest.approx(0.02)
    assert not batcher.ready()
    clock.now += 0.02
    assert batcher.ready()
    assert batcher.take() == ["a", "b"]
    clock.now += 5.0  # an empty batch never closes, however long it waits
    assert not batcher.ready()
    batcher.add("c")
    assert batcher.time_left() == pytest.approx(0.05)


def test_batch_of_size_one_and_zero_wait_closes_at_once() -> None:
    assert Batcher(1, 1.0, FakeClock()).room == 1
    batcher: Batcher[int] = Batcher(8, 0.0, FakeClock())
    batcher.add(1)
    assert batcher.ready()
    with pytest.raises(ValueError):
        Batcher(0, 0.1)


def test_batch_drop_removes_revoked_items_and_resets_the_clock_when_empty() -> None:
    clock = FakeClock()
    batcher: Batcher[tuple[int, int]] = Batcher(10, 0.05, clock)
    for item in [(0, 1), (1, 1), (0, 2)]:
        batcher.add(item)
    assert batcher.drop(keep=lambda r: r[0] != 0) == [(0, 1), (0, 2)]
    assert batcher.take() == [(1, 1)]
    batcher.add((0, 3))
    batcher.drop(keep=lambda r: False)
    assert batcher.time_left() is None


def test_offsets_advance_only_over_a_fully_acknowledged_prefix() -> None:
    tracker = CommitGate()
    tp = ("frames", 0)
    g = tracker.track(tp, 5)
    assert tracker.track(tp, 6) == tracker.track(tp, 7) == g
    tracker.add_output(tp, 6, g)
    tracker.release(tp, 6, g)  # guard released but its output not yet acknowledged
    tracker.release(tp, 7, g)
    assert tracker.take_ready() == {}
    tracker.add_output(tp, 5, g)
    tracker.add_output(tp, 5, g)  # result + breach
    tracker.release(tp, 5, g)
    tracker.ack(tp, 5, g)
    assert tracker.take_ready() == {}  # the breach of 5 is still in flight
    tracker.ack(tp, 5, g)
    assert tracker.take_ready() == {tp: 6}  # 6 waits for its output, 7 waits behind it
    tracker.ack(tp, 6, g)
    assert tracker.take_ready() == {tp: 8}
    assert tracker.in_flight() == 0


def test_offsets_are_independent_per_partition_and_failure_blocks_the_partition() -> None:
    tracker = CommitGate()
    a, b = ("frames", 0), ("frames", 1)
    ga = tracker.track(a, 0)
    gb = tracker.track(b, 10)
    tracker.release(b, 10, gb)
    assert tracker.take_ready() == {b: 11}
    tracker.add_output(a, 0, ga)
    tracker.release(a, 0, ga)
    tracker.fail(a)
    tracker.ack(a, 0, ga)
    assert tracker.take_ready() == {}
    assert tracker.failed == {a}
    with pytest.raises(ValueError):
        tracker.track(b, 3)  # out of order within a partition is a bug
    tracker.forget([a, b])
    tracker.track(b, 3)  # after a revoke the partition starts afresh
    assert tracker.failed == set()


def test_offset_tracker_stays_bounded_after_many_acknowledged_frames() -> None:
    """Soak question "leak or warm-up": 20,000 frames on 4 partitions, outputs acknowledged out of order,
    leave no per-offset state behind; per-partition state is one entry per partition, gone on revoke."""
    tracker, rng = CommitGate(), np.random.default_rng(0)
    tps = [("frames", p) for p in range(4)]
    for start in range(0, 20_000, 16):  # batches of 16 frames, two outputs each
        batch = [(tps[i % 4], i) for i in range(start, start + 16)]
        generations = {}
        for tp, offset in batch:
            generations[tp] = g = tracker.track(tp, offset)
            tracker.add_output(tp, offset, g)
            tracker.add_output(tp, offset, g)
            tracker.release(tp, offset, g)
        acks = [item for item in batch for _ in range(2)]
        for k in rng.permutation(len(acks)):
            tp, offset = acks[k]
            tracker.ack(tp, offset, generations[tp])
        assert tracker.in_flight() == 0
        tracker.take_ready()
    assert all(not frames for frames in tracker._pending.values())
    assert len(tracker._pending) == len(tracker._last) == len(tracker._generation) == 4
    assert not tracker._ready and not tracker._failed
    tracker.forget(tps)
    assert not (tracker._pending or tracker._last or tracker._ready or tracker._generation)


def test_region_summary_scales_to_the_image_and_finds_the_peak() -> None:
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[2:4, 5:7] = 1.0
    anomaly_map[3, 6] = 3.0
    region = summarise_region(anomaly_map, 0.5, (256, 128))  # width 256, height 128
    assert region.area_fraction == pytest.approx(4 / 64)
    assert region.bbox == (160, 32, 224, 64)  # columns 5..6 x 32 px, rows 2..3 x 16 px
    assert region.peak_xy == (6 * 32 + 16, 3 * 16 + 8)
    assert region.peak_value == 3.0
    clean = summarise_region(np.zeros((4, 4), np.float32), 0.5, (64, 64))
    assert clean.bbox is None and clean.area_fraction == 0.0


def test_decode_backend_selection() -> None:
    assert select_decode_backend("cpu", "cuda") == "cpu"
    assert select_decode_backend("auto", "cpu") == "cpu"
    assert select_decode_backend("auto", torch.device("cuda").type) == "gpu"
    assert select_decode_backend("gpu", "cuda") == "gpu"
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        select_decode_backend("gpu", "cpu")
    with pytest.raises(ValueError, match="unknown decode_mode"):
        select_decode_backend("fpga", "cpu")


def _record(value: bytes | None, headers: list[tuple[str, bytes | None]] | None, offset: int = 0) -> Record:
    return Record("frames", 0, offset, b"cam", value, headers, 0, 10**18)


def test_cpu_decoder_rejects_each_bad_frame_with_its_reason_and_decodes_the_rest() -> None:
    image = np.full((32, 48, 3), 120, np.uint8)
    good = encode_frame(image, camera_id="cam", line_id="L", sequence=1, capture_ns=1)
    wrong_version = [(n, b"9" if n == "lw-version" else v) for n, v in good.headers]
    no_camera = [(n, v) for n, v in good.headers if n != "lw-camera"]
    huge = meta_to_headers(type(good.meta)(**{**good.meta.__dict__, "width": 20000, "height": 20000}))
    records = [
        _record(good.value, list(good.headers)),
        _record(b"\x00garbage\xff" * 10, list(good.headers)),
        _record(good.value[: len(good.value) // 3], list(good.headers)),
        _record(good.value, None),
        _record(good.value, no_camera),
        _record(good.value, wrong_version),
        _record(good.value, list(huge)),
        _record(good.value, list(good.headers)),
    ]
    decoder = Decoder(2, "cpu")
    try:
        outcomes = decoder.submit(records).result()
    finally:
        decoder.close()
    assert [type(o).__name__ for o in outcomes] == ["DecodedFrame"] + ["Rejected"] * 6 + ["DecodedFrame"]
    reasons = [o.reason for o in outcomes if isinstance(o, Rejected)]
    assert reasons[0] == "undecodable"
    assert reasons[1] in ("undecodable", "dimension_mismatch")  # truncated JPEG
    assert reasons[2:] == ["missing_header", "missing_header", "unsupported_version", "oversized"]
    frames = [o for o in outcomes if isinstance(o, DecodedFrame)]
    assert frames[0].image.shape == (32, 48, 3) and frames[0].meta.sequence == 1


def test_group_by_size_keeps_equal_sizes_together() -> None:
    def frame(h: int, w: int) -> DecodedFrame:
        return DecodedFrame(_record(b"", None), None, np.zeros((h, w, 3), np.uint8), 0.0)  # type: ignore[arg-type]

    tensor_frame = DecodedFrame(_record(b"", None), None, torch.zeros((4, 4, 3), dtype=torch.uint8), 0.0)  # type: ignore[arg-type]
    groups = group_by_size([frame(4, 4), frame(8, 4), frame(4, 4), tensor_frame])
    assert sorted(len(g) for g in groups) == [1, 1, 2]


def test_consumer_lag_comes_from_librdkafka_statistics() -> None:
    metrics = DetectorMetrics()
    stats = {"topics": {"frames": {"partitions": {"0": {"consumer_lag": 7}, "1": {"consumer_lag": -1},
                                                  "-1": {"consumer_lag": 3}}}}}
    metrics.observe_statistics(json.dumps(stats))
    metrics.observe_statistics("not json")
    value = metrics.registry.get_sample_value("linewatch_detector_consumer_lag",
                                              {"topic": "frames", "partition": "0"})
    assert value == 7
    assert metrics.registry.get_sample_value("linewatch_detector_consumer_lag",
                                             {"topic": "frames", "partition": "-1"}) is None


def test_settings_documented_consumer_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    settings = DetectorSettings(group_id="g")
    config = settings.consumer_config()
    assert settings.max_batch_size == 4
    assert config["bootstrap.servers"] == "broker:9092"
    assert config["enable.auto.offset.store"] is False
    for key in ("session.timeout.ms", "max.poll.interval.ms", "queued.max.messages.kbytes", "fetch.max.bytes"):
        assert key in config
    assert settings.producer_config()["enable.idempotence"] is True


def test_batched_nvjpeg_path_decodes_and_isolates_a_corrupt_stream() -> None:
    """The GPU decode code path, run with torchvision's decode_jpeg on the CPU device (no GPU here)."""
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    good = encode_frame(image, camera_id="cam", line_id="L", sequence=1, capture_ns=1)
    scan = good.value.find(b"\xff\xda")
    corrupt = good.value[:scan + 20] + b"\x00" * 5  # headers and SOF intact, scan data cut off
    png = encode_frame(image, camera_id="cam", line_id="L", sequence=2, capture_ns=1, encoding="png")
    records = [_record(good.value, list(good.headers)), _record(corrupt, list(good.headers)),
               _record(png.value, list(png.headers)), _record(good.value, list(good.headers))]
    decoder = Decoder(2, "gpu", torch.device("cpu"))
    try:
        outcomes = decoder.submit(records).result()
    finally:
        decoder.close()
    assert [type(o).__name__ for o in outcomes] == ["DecodedFrame", "Rejected", "DecodedFrame", "DecodedFrame"]
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason == "undecodable"
    first = outcomes[0]
    assert isinstance(first, DecodedFrame) and isinstance(first.image, torch.Tensor)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(good.value, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert first.image.shape == (40, 56, 3)
    assert np.abs(first.image.numpy().astype(int) - expected.astype(int)).max() <= 2
    assert isinstance(outcomes[2], DecodedFrame) and isinstance(outcomes[2].image, np.ndarray)  # PNG: CPU path


def test_batch_closes_before_its_pixel_budget_and_a_huge_item_runs_alone() -> None:
    batcher: Batcher[str] = Batcher(16, 1.0, FakeClock(), max_weight=100)
    batcher.add("a", 60)
    assert batcher.fits(40) and not batcher.fits(41)
    batcher.add("b", 40)
    assert batcher.ready()  # the budget is used up: close now, whatever max_size says
    batcher.take()
    assert batcher.fits(500)  # an empty batch takes any item; it then closes at once
    batcher.add("huge", 500)
    assert batcher.ready() and batcher.take() == ["huge"]


def test_preprocess_resizes_large_frames_in_strips_to_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 5: the bounded-memory path gives the direct path's values (the filter is separable)."""
    from linewatch.detector.model.stfpm import torch_model

    frames = torch.randint(0, 256, (2, 3, 301, 517), dtype=torch.uint8)
    direct = torch_model._resize_bounded(frames, (64, 64))
    monkeypatch.setattr(torch_model, "PREPROCESS_FLOAT_BYTES", 3 * 517 * 4 * 7)  # 7-row strips, frame by frame
    strips = torch_model._resize_bounded(frames, (64, 64))
    assert (strips - direct).abs().max().item() < 1e-3


def test_readiness_follows_health() -> None:
    from linewatch.detector.service.health import HealthState

    state = HealthState()
    state.model_loaded = state.assigned = True
    assert state.ready() == (True, "ok")
    state.fail("detector worker failed")
    assert state.healthy() == (False, "detector worker failed") and state.ready() == (False, "detector worker failed")


def test_dead_letter_headers_of_a_hostile_record_are_bounded() -> None:
    from linewatch.detector.events import dead_letter_headers

    headers = dead_letter_headers(topic="frames", partition=0, offset=1, error_class="bad_camera_id",
                                  message="x" * 9000, original=[("lw-camera", b"\x01" * 200_000)] * 30)
    assert sum(len(n) + len(v) for n, v in headers) < 20_000
    assert dict(headers)["dl-headers-truncated"] == str(30 * (200_000 + 9)).encode()


def test_one_camera_id_rule_for_encode_decode_and_settings() -> None:
    from pydantic import ValidationError

    from linewatch.ingest.settings import CameraSettings
    from linewatch.ingest.wire import WireFormatError, check_record, decode_headers, is_valid_camera_id

    for bad in ("plant1/cam2", "cam 2", "", "-cam", "c" * 65, "cam\n", "cam-\u00e9", "\x01" * 1000):
        assert not is_valid_camera_id(bad)
        with pytest.raises(ValueError):
            encode_frame(np.zeros((8, 8, 3), np.uint8), camera_id=bad, line_id="L", sequence=0, capture_ns=0)
        with pytest.raises(ValidationError):
            CameraSettings(camera_id=bad)
    good = encode_frame(np.zeros((8, 8, 3), np.uint8), camera_id="plant1.cam_2-a", line_id="L", sequence=0,
                        capture_ns=10**18)
    meta = decode_headers(good.headers)
    check_record(meta, b"plant1.cam_2-a", now_ns=10**18)
    for key, now in ((b"other", 10**18), (None, 10**18), (b"plant1.cam_2-a", 10**18 - 301 * 10**9)):
        with pytest.raises(WireFormatError):
            check_record(meta, key, now_ns=now)


def test_heatmap_queue_holds_only_downscaled_frames_and_reports_skipped_keys() -> None:
    """Item 5: a full-resolution frame no longer waits in the heatmap queue; item 16: skipped keys are reported."""
    from linewatch.common.redis_settings import RedisSettings
    from linewatch.detector.service.heatmap_cache import HeatmapCache, HeatmapEntry

    cache = HeatmapCache(RedisSettings(key_prefix="p"), DetectorMetrics(), per_camera=4, ttl_s=60, breach_ttl_s=60,
                         overlay_max_side=64, queue_batches=1)  # writer thread not started: nothing connects

    def entry(seq: int) -> HeatmapEntry:
        return HeatmapEntry("cam", "L", seq, 0, 0.1, 0.1, False, np.zeros((8, 8), np.float32),
                            np.zeros((1200, 1600, 3), np.uint8))

    cache.submit([entry(1)])
    queued = cache._queue.get_nowait()
    assert queued is not None and queued[0].image.shape == (48, 64, 3)
    cache.submit([entry(2)])
    cache.submit([entry(3)])  # the queue (1 batch) is full: skipped
    assert cache.take_skipped() == {"p:hm:cam:3"} and cache.take_skipped() == set()


def test_stored_map_and_frame_draw_the_overlay_the_detector_used_to_render() -> None:
    """The detector stores map + JPEG; the overlay drawn from them matches one drawn from the
    full-precision map and frame (JPEG and 16-bit quantisation only), and the hot region stays where it was."""
    import cv2

    from linewatch.common import cache_keys as ck
    from linewatch.common.heatmap_codec import (
        encode_frame_jpeg,
        encode_map_png,
        overlay_from_fields,
        render_overlay_png,
    )
    from linewatch.ingest.synthetic import render_sample

    frame = render_sample(3, size=256).image
    anomaly = np.zeros((48, 48), np.float32)
    anomaly[30:38, 10:16] = 3.0
    anomaly += np.linspace(0, 0.5, 48, dtype=np.float32)[None, :]
    map_png, scale = encode_map_png(anomaly, 64)
    fields = {ck.FIELD_FRAME.encode(): encode_frame_jpeg(frame), ck.FIELD_MAP.encode(): map_png,
              ck.FIELD_MAP_SCALE.encode(): repr(scale).encode(), ck.FIELD_COLOUR_SCALE.encode(): b"2.0"}
    drawn = cv2.imdecode(np.frombuffer(overlay_from_fields(fields) or b"", np.uint8), cv2.IMREAD_COLOR)
    direct = cv2.imdecode(np.frombuffer(render_overlay_png(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), anomaly, 2.0),
                                        np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == direct.shape == (256, 256, 3)
    difference = np.abs(drawn.astype(int) - direct.astype(int))
    assert difference.mean() < 4, difference.mean()
    red = drawn[..., 2].astype(int) - drawn[..., 0]
    rows, cols = np.nonzero(red >= np.percentile(red, 99))  # the reddest pixels: around the hot cells
    cell = 256 / 48
    assert 30 * cell <= rows.mean() < 38 * cell and 10 * cell <= cols.mean() < 16 * cell, (rows.mean(), cols.mean())


def test_a_heatmap_hash_that_cannot_be_drawn_is_a_clear_error_and_an_expired_one_is_none() -> None:
    from linewatch.common import cache_keys as ck
    from linewatch.common.heatmap_codec import HeatmapDataError, overlay_from_fields

    assert overlay_from_fields({}) is None
    with pytest.raises(HeatmapDataError, match="no frame"):
        overlay_from_fields({ck.FIELD_MAP: b"x"})
    with pytest.raises(HeatmapDataError, match="not a number"):
        overlay_from_fields({ck.FIELD_MAP: b"x", ck.FIELD_FRAME: b"y", ck.FIELD_MAP_SCALE: b"nan?"})
    with pytest.raises(HeatmapDataError, match="readable image"):
        overlay_from_fields({ck.FIELD_MAP: b"x", ck.FIELD_FRAME: b"y", ck.FIELD_MAP_SCALE: b"1",
                             ck.FIELD_COLOUR_SCALE: b"1"})
    assert ck.overlay_cache_key(ck.heatmap_key("lw:plant", "cam-1", 7)) == "lw:plant:ov:cam-1:7"


def test_the_consumer_does_not_let_the_broker_hold_an_empty_fetch_for_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka's default fetch.wait.max.ms (500) put a ~200 ms p50 floor under light load."""
    from linewatch.detector.service.settings import DetectorSettings

    assert DetectorSettings().consumer_config()["fetch.wait.max.ms"] == 10
    monkeypatch.setenv("LINEWATCH_FETCH_WAIT_MAX_MS", "100")
    assert DetectorSettings().consumer_config()["fetch.wait.max.ms"] == 100
