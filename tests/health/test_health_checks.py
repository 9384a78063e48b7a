"""The camera-health state machine and pixel statistics (no services)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from linewatch.health.checks import CameraMonitor, HealthEvent, drift_statistic
from linewatch.health.settings import Baseline, CheckConfig, ChecksSettings, ScoreReference
from linewatch.health.stats import decode_grey, frame_stats, reduction
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import WireFormatError, encode_frame

pytestmark = pytest.mark.unit

CONFIG = CheckConfig(window=5, baseline_frames=5, frozen_frames=6, confirm=2, silence_s=10, drift_window=20,
                     drift_threshold=1.5, focus_ratio=0.35)  # synthetic parts keep strong outlines


def part(i: int) -> np.ndarray:
    return render_sample(i, size=128, defect_probability=0.0).image


def feed(monitor: CameraMonitor, images: list[np.ndarray], start_s: float = 0.0) -> list[HealthEvent]:
    events: list[HealthEvent] = []
    for i, image in enumerate(images):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        events += monitor.observe_frame(frame_stats(grey), start_s + i * 0.1, i)
    return events


def fired(events: list[HealthEvent]) -> list[str]:
    return [e.check for e in events if e.status == "firing"]


def test_distinct_good_parts_raise_nothing() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    assert feed(monitor, [part(i) for i in range(30)]) == []
    assert monitor.baseline is not None and monitor.unhealthy() == []


def test_repeated_frame_is_a_frozen_stream_and_a_new_one_resolves_it() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    events = feed(monitor, [part(0)] + [part(1)] * 8)
    assert fired(events) == ["frozen"] and events[0].kind == "camera_health"
    events = feed(monitor, [part(i) for i in range(2, 5)])
    assert [(e.check, e.status) for e in events] == [("frozen", "resolved")]


def test_dark_and_saturated_frames_are_exposure_faults() -> None:
    dark = CameraMonitor("c", "l", CONFIG)
    assert fired(feed(dark, [part(i) for i in range(6)] + [(part(i) * 0.03).astype(np.uint8) for i in range(8)])) \
        == ["exposure"]
    bright = CameraMonitor("c", "l", CONFIG)
    blown = [np.clip(part(i).astype(int) + 200, 0, 255).astype(np.uint8) for i in range(8)]
    assert fired(feed(bright, [part(i) for i in range(6)] + blown)) == ["exposure"]


def test_blur_is_a_focus_fault_relative_to_the_baseline() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    blurred = [cv2.GaussianBlur(part(i), (0, 0), 3) for i in range(6, 14)]
    events = feed(monitor, [part(i) for i in range(6)] + blurred)
    assert fired(events) == ["focus"]
    assert events[0].value < CONFIG.focus_ratio


def test_one_odd_frame_changes_nothing() -> None:
    monitor = CameraMonitor("c", "l", CONFIG.model_copy(update={"window": 3, "confirm": 3}))
    images = [part(i) for i in range(8)]
    images[6] = (images[6] * 0.02).astype(np.uint8)
    assert feed(monitor, images) == []


def test_silence_fires_after_the_quiet_period_and_resolves_with_the_next_frame() -> None:
    monitor = CameraMonitor("c", "l", CONFIG, baseline=Baseline(mean=100, focus=100))
    feed(monitor, [part(0)])
    assert monitor.tick(5.0, 0) == []
    assert fired(monitor.tick(10.5, 1)) == ["silence"]
    assert monitor.tick(11.0, 2) == []  # once
    events = feed(monitor, [part(1), part(2)], start_s=12.0)
    assert [(e.check, e.status) for e in events] == [("silence", "resolved")]


def test_score_drift_against_the_calibration_reference() -> None:
    rng = np.random.default_rng(0)
    reference = ScoreReference(p50=1.0, log_scale=0.3)
    monitor = CameraMonitor("c", "l", CONFIG)
    healthy = np.exp(rng.normal(0.0, 0.3, 100))
    events = [e for s in healthy for e in monitor.observe_score(float(s), "m1", reference, 0)]
    assert events == []
    drifted = np.exp(rng.normal(0.9, 0.3, 40))  # median up by 3 calibration sd
    events = [e for s in drifted for e in monitor.observe_score(float(s), "m1", reference, 0)]
    assert fired(events) == ["drift"] and events[0].value > CONFIG.drift_threshold


def test_rises_and_falls_of_scores_have_their_own_limits() -> None:
    config = CheckConfig(drift_window=20, confirm=2, drift_threshold=0.6, drift_fall_threshold=0.9)
    reference = ScoreReference(p50=1.0, log_scale=1.0)

    def replay(log_score: float) -> list[HealthEvent]:
        monitor = CameraMonitor("c", "l", config)
        return [e for _ in range(30) for e in monitor.observe_score(math.exp(log_score), "m1", reference, 0)]

    assert replay(-0.7) == []  # beyond the rise limit, within the fall limit
    assert replay(+0.7)[0].detail == "median score rose +0.70 calibration sd"
    fell = replay(-1.0)
    assert fired(fell) == ["drift"] and fell[0].value == pytest.approx(-1.0) and fell[0].threshold == -0.9


def test_drift_learns_a_reference_when_none_is_known_and_restarts_with_a_new_model() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    for _ in range(25):
        assert monitor.observe_score(1.0, "m1", None, 0) == []
    assert monitor.learned_reference is not None and monitor.learned_reference.p50 == pytest.approx(1.0)
    events = [e for _ in range(25) for e in monitor.observe_score(3.0, "m1", None, 0)]
    assert fired(events) == ["drift"]
    assert monitor.observe_score(3.0, "m2", None, 0) == [] and len(monitor.scores) == 1


def test_drift_statistic_is_the_median_shift_in_calibration_sd() -> None:
    assert drift_statistic([math.log(2.0)] * 5, ScoreReference(p50=1.0, log_scale=math.log(2.0))) == pytest.approx(1)


def test_downscaled_decode_and_its_refusals() -> None:
    image = part(3)
    frame = encode_frame(np.repeat(image, 4, axis=0), camera_id="c", line_id="l", sequence=0, capture_ns=0)
    grey = decode_grey(frame.value, frame.meta, min_side=160)
    assert grey.shape == (256, 64) and reduction(512, 128, 160) == 2
    raw = encode_frame(image, camera_id="c", line_id="l", sequence=0, capture_ns=0, encoding="raw")
    assert decode_grey(raw.value, raw.meta, min_side=64).shape == (64, 64)
    with pytest.raises(WireFormatError):
        decode_grey(frame.value[:40], frame.meta)
    with pytest.raises(WireFormatError):
        decode_grey(raw.value[:-1], raw.meta)


def test_camera_overrides_replace_only_their_fields() -> None:
    checks = ChecksSettings.model_validate({"cameras": {"c2": {"focus_ratio": 0.2}}})
    assert checks.for_camera("c2").focus_ratio == 0.2 and checks.for_camera("c2").window == 15
    assert checks.for_camera("c1").focus_ratio == CheckConfig().focus_ratio
