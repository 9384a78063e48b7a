"""The default drift check against measured scores of every shared data set (tests/health/data).

Each ``<set>_scores.json`` holds the raw scores of a model trained on that set's good images (see its
``source``): its good images in file order, and copies blurred, darkened and brightened. Replaying them
here keeps the default threshold honest on all sets without training a model in the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linewatch.health.checks import CameraMonitor, HealthEvent
from linewatch.health.measure import HEALTHY, replays
from linewatch.health.settings import CheckConfig, ScoreReference

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
MEASURED: dict[str, dict[str, Any]] = {path.name.removesuffix("_scores.json"): json.loads(path.read_text())
                                       for path in sorted(DATA.glob("*_scores.json"))}
# The faults that moved the drift statistic past the default threshold in every window when measured
# (health/README.md, "Score drift: the test"); the others stay below it on that set.
FIRES: dict[str, tuple[str, ...]] = {"bsdata": (), "magnetic_tile": (), "mvtec3d_tire": ("blur2", "dark50", "bright40")}
WINDOW = CheckConfig().drift_window
HEALTHY_REPLAYS = [(name, replay) for name, data in MEASURED.items() for replay, scores in replays(data).items()
                   if replay in (*HEALTHY, "all_good") and len(scores) >= WINDOW]


def reference(name: str) -> ScoreReference:
    calibration = MEASURED[name]["calibration"]
    return ScoreReference(p50=calibration["p50"], log_scale=calibration["log_scale"])


def replay(name: str, scores: list[float]) -> tuple[list[HealthEvent], list[float]]:
    """Feed scores through the default drift check; returns the events and every drift statistic seen."""
    monitor, ref = CameraMonitor("cam", "line", CheckConfig()), reference(name)
    events, shifts = [], []
    for score in scores:
        events += monitor.observe_score(score, "m", ref, 0)
        if monitor.last_drift is not None:
            shifts.append(monitor.last_drift)
    return events, shifts


def test_every_shared_set_was_measured() -> None:
    assert set(MEASURED) == set(FIRES) == {"bsdata", "magnetic_tile", "mvtec3d_tire"}


@pytest.mark.parametrize(("name", "which"), HEALTHY_REPLAYS)
def test_healthy_replays_of_good_images_never_drift(name: str, which: str) -> None:
    scores = replays(MEASURED[name])[which]
    rng = np.random.default_rng(0)
    for order in [scores] + [list(rng.permutation(scores)) for _ in range(20)]:
        events, shifts = replay(name, order)
        assert events == [], f"{name} {which}: a healthy replay raised {events[0]}"
        config = CheckConfig()
        assert shifts and -config.drift_fall_threshold < min(shifts) and max(shifts) < config.drift_threshold


@pytest.mark.parametrize(("name", "fault"), [(name, fault) for name, faults in FIRES.items() for fault in faults])
def test_a_faulty_camera_drifts(name: str, fault: str) -> None:
    data = MEASURED[name]
    events, shifts = replay(name, data["test_good"] + data[fault])
    assert [(e.check, e.status) for e in events] == [("drift", "firing")]
    assert max(shifts) >= CheckConfig().drift_threshold
