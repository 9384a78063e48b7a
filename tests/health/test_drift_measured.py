"""The drift threshold against measured scores of the shared good images (tests/health/data, see its source).

The scores were produced once by a model trained on magnetic_tile's good images; replaying them here
keeps the threshold honest without training a model in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from linewatch.alerts.health.checks import CameraMonitor, HealthEvent
from linewatch.alerts.health.settings import CheckConfig, ScoreReference

pytestmark = pytest.mark.unit

MEASURED = json.loads((Path(__file__).parent / "data" / "magnetic_tile_scores.json").read_text())
REFERENCE = ScoreReference(p50=MEASURED["calibration"]["p50"], log_scale=MEASURED["calibration"]["log_scale"])


def replay(scores: list[float]) -> tuple[list[HealthEvent], list[float]]:
    """Feed scores through the default drift check; returns the events and every drift statistic seen."""
    monitor = CameraMonitor("cam", "line", CheckConfig())
    events, shifts = [], []
    for score in scores:
        events += monitor.observe_score(score, "m", REFERENCE, 0)
        if monitor.last_drift is not None:
            shifts.append(monitor.last_drift)
    return events, shifts


@pytest.mark.parametrize("name", ["train_good", "test_good"])
def test_healthy_replays_of_good_images_never_drift(name: str) -> None:
    rng = np.random.default_rng(0)
    orders = [MEASURED[name]] + [list(rng.permutation(MEASURED[name])) for _ in range(20)]
    for scores in orders:
        events, shifts = replay(scores)
        assert events == [], f"{name}: a healthy replay raised {events[0]}"
        assert shifts and max(abs(s) for s in shifts) < CheckConfig().drift_threshold


def test_a_blurred_camera_drifts() -> None:
    events, shifts = replay(MEASURED["test_good"] + MEASURED["blur2"])
    assert [(e.check, e.status) for e in events] == [("drift", "firing")]
    assert max(shifts) > CheckConfig().drift_threshold
