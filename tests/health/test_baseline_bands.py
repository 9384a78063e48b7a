"""Each camera judged against its own baseline: its spreads, its layout; scores not judged through a pixel fault."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.health.baselines import load_baseline, save_baseline
from linewatch.health.checks import CameraMonitor, HealthEvent, brightness_limits, focus_limit, learn_baseline
from linewatch.health.settings import Baseline, CheckConfig, ScoreReference
from linewatch.health.stats import frame_stats

pytestmark = pytest.mark.unit

CONFIG = CheckConfig(window=5, baseline_frames=20, confirm=2, drift_window=20)
REFERENCE = ScoreReference(p50=1.0, log_scale=0.3)


def scene(i: int, dx: int = 0) -> np.ndarray:
    """A fixed view (a lit gradient and a dark fixture) with sensor noise; ``dx`` moves the camera sideways."""
    rng = np.random.default_rng(i)
    x = np.linspace(0, 1, 320)
    image = np.tile(60 + 120 * x, (240, 1))
    image[60:180, 40:120] = 30
    image = np.roll(image, dx, axis=1) + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def feed(monitor: CameraMonitor, images: list[np.ndarray], start: int = 0) -> list[HealthEvent]:
    events: list[HealthEvent] = []
    for i, image in enumerate(images, start):
        events += monitor.observe_frame(frame_stats(image), i * 0.1, i)
    return events


def fired(events: list[HealthEvent]) -> list[str]:
    return [e.check for e in events if e.status == "firing"]


def test_a_steady_camera_is_judged_by_its_own_spread() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    assert feed(monitor, [scene(i) for i in range(30)]) == []
    assert monitor.baseline is not None and monitor.baseline.mean_spread is not None
    low, high = brightness_limits(CONFIG, monitor.baseline)
    assert CONFIG.brightness_low < low < 1 < high < CONFIG.brightness_high
    darker = [(scene(i) * 0.6).astype(np.uint8) for i in range(30, 45)]  # inside the fixed [0.4, 3.0]
    events = feed(monitor, darker, 30)
    assert fired(events) == ["exposure"] and "too dark" in events[0].detail


def test_a_pinned_baseline_without_spreads_keeps_the_fixed_limits() -> None:
    pinned = learn_baseline([frame_stats(scene(i)) for i in range(20)])
    bare = Baseline(mean=pinned.mean, focus=pinned.focus)
    assert brightness_limits(CONFIG, bare) == (CONFIG.brightness_low, CONFIG.brightness_high)
    assert focus_limit(CONFIG, bare) == CONFIG.focus_ratio
    monitor = CameraMonitor("c", "l", CONFIG, baseline=bare)
    assert feed(monitor, [(scene(i) * 0.6).astype(np.uint8) for i in range(20)]) == []


def test_a_slight_blur_of_a_steady_camera_is_a_focus_fault() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    feed(monitor, [scene(i) for i in range(30)])
    assert monitor.baseline is not None and focus_limit(CONFIG, monitor.baseline) > CONFIG.focus_ratio
    assert fired(feed(monitor, [cv2.GaussianBlur(scene(i), (0, 0), 1.2) for i in range(30, 45)], 30)) == ["focus"]


def test_a_moved_view_is_drift_and_moving_back_resolves_it() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    feed(monitor, [scene(i) for i in range(30)])
    events = feed(monitor, [scene(i, dx=32) for i in range(30, 45)], 30)
    assert fired(events) == ["drift"] and "view moved" in events[0].detail
    events = feed(monitor, [scene(i) for i in range(45, 60)], 45)
    assert [(e.check, e.status) for e in events] == [("drift", "resolved")]


def test_drift_fires_while_either_source_does() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    feed(monitor, [scene(i) for i in range(30)])
    events = []
    for i in range(CONFIG.drift_window + CONFIG.confirm):  # scores well above the calibration: drift
        events += monitor.observe_score(float(np.exp(1.0)), "m", REFERENCE, i)
    assert fired(events) == ["drift"]
    assert feed(monitor, [scene(i, dx=32) for i in range(30, 45)], 30) == []  # the view moves too: already firing
    for i in range(CONFIG.drift_window + CONFIG.confirm):  # the scores come back; the view has still moved
        events = monitor.observe_score(1.0, "m", REFERENCE, i)
        assert events == []
    assert monitor.unhealthy() == ["drift"]
    events = feed(monitor, [scene(i) for i in range(45, 60)], 45)
    assert [(e.check, e.status) for e in events] == [("drift", "resolved")]


def test_scores_through_a_pixel_fault_are_neither_kept_nor_judged() -> None:
    monitor = CameraMonitor("c", "l", CONFIG)
    feed(monitor, [scene(i) for i in range(30)])
    assert fired(feed(monitor, [(scene(i) * 0.3).astype(np.uint8) for i in range(30, 45)], 30)) == ["exposure"]
    events = []
    for i in range(3 * CONFIG.drift_window):  # the darkened parts score high: the exposure fault's echo
        events += monitor.observe_score(float(np.exp(2.0)), "m", REFERENCE, i)
    assert events == [] and len(monitor.scores) == 0


class FakeRedis:
    """The two calls a stored baseline needs."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def set(self, key: str, value: str, ex: int) -> None:
        self.data[key] = value

    def getex(self, key: str, ex: int) -> Any:
        return self.data.get(key)


def test_a_stored_baseline_keeps_its_spreads_and_an_older_record_still_loads() -> None:
    client = FakeRedis()
    learned = learn_baseline([frame_stats(scene(i)) for i in range(20)])
    save_baseline(client, "p", "cam-1", learned, 60, learned_at_ns=5)
    assert load_baseline(client, "p", "cam-1", 60) == (learned, 5)
    client.data["p:cam:cam-2:baseline"] = json.dumps({"mean": 100.0, "focus": 50.0, "learned_at_ns": 7})
    loaded = load_baseline(client, "p", "cam-2", 60)
    assert loaded == (Baseline(mean=100.0, focus=50.0), 7) and loaded[0].mean_spread is None
