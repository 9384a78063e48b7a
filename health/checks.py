"""The health checks of one camera: a pure state machine fed with frame statistics, scores and time.

Each check evaluates to bad / good / unknown (not enough data yet) and changes state only after
``confirm`` evaluations in a row agree, so a single odd frame neither fires nor resolves an alert.

- frozen: ``frozen_frames`` consecutive frames whose 32x32 thumbnails differ by less than ``frozen_diff``;
- exposure: the rolling median share of dark (<= 10) or saturated (>= 250) pixels is too high, or the
  rolling median brightness left the camera's own band around its baseline: ``brightness_spread_limit``
  spreads of its baseline frames (at least ``brightness_tolerance``), never wider than
  [brightness_low, brightness_high];
- focus: the rolling median Laplacian variance fell below the camera's own band (``focus_spread_limit``
  spreads, at least ``focus_tolerance``), never lower than ``focus_ratio`` x the camera's baseline;
- (frozen, focus and the view are not judged while exposure is bad: a black frame is also flat and
  unchanging);
- silence: no frame for ``silence_s`` (wall clock of this service);
- drift, from either of two sources, each with its own hysteresis (the check fires while either does):
  the view: the rolling median distance of the frames' brightness layout from the baseline's rose
  ``layout_limit`` spreads above the baseline frames' own (a moved camera); the scores: over the last
  ``drift_window`` scores, the median log score rose by ``drift_threshold`` or fell by
  ``drift_fall_threshold`` or more calibration standard deviations from the calibration median (a
  quantile-shift test; each direction has its own limit, chosen from healthy replays: see the README).
  Scores that arrive while a pixel check fires are left out of the window (the cause is already reported,
  and they would also poison a reference learned from the first scores).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel

from linewatch.health.settings import Baseline, CheckConfig, ScoreReference
from linewatch.health.stats import (
    LAYOUT_SIDE,
    FrameStats,
    layout,
    layout_distance,
    robust_spread,
    thumb_difference,
)

CheckName = Literal["frozen", "exposure", "focus", "silence", "drift"]
CHECKS: tuple[CheckName, ...] = ("frozen", "exposure", "focus", "silence", "drift")
DRIFT_SOURCES = ("view", "scores")
PIXEL_CHECKS = ("frozen", "exposure", "focus")
HEALTH_KIND = "camera_health"
_MIN_LOG_SCALE = 0.05  # as calibration: near-equal baseline scores must not make every wobble drift


class HealthEvent(BaseModel):
    """A camera-health alert firing or resolving (JSON on the camera-health topic)."""

    kind: Literal["camera_health"] = "camera_health"  # never "defect": health alerts are not defect alerts
    check: CheckName
    status: Literal["firing", "resolved"]
    camera_id: str
    line_id: str
    alert_id: str
    value: float
    threshold: float
    detail: str
    at_ns: int


@dataclass
class Evaluation:
    """One check's verdict on the latest data: ``bad`` is None when there is not enough data yet."""

    bad: bool | None
    value: float = 0.0
    threshold: float = 0.0
    detail: str = ""


@dataclass
class CheckState:
    """Hysteresis state of one check."""

    firing: bool = False
    streak: int = 0  # evaluations in a row that disagree with ``firing``
    since_ns: int = 0


@dataclass
class CameraMonitor:
    """All checks of one camera."""

    camera_id: str
    line_id: str
    config: CheckConfig
    baseline: Baseline | None = None
    frames: deque[FrameStats] = field(default_factory=deque)
    learning: list[FrameStats] = field(default_factory=list)
    previous_thumb: np.ndarray | None = None
    identical_run: int = 1
    last_frame_s: float | None = None
    scores: deque[float] = field(default_factory=deque)
    score_model: str | None = None
    learned_reference: ScoreReference | None = None
    last_drift: float | None = None
    states: dict[str, CheckState] = field(default_factory=lambda: {name: CheckState() for name in CHECKS})
    drift_sources: dict[str, CheckState] = field(
        default_factory=lambda: {name: CheckState() for name in DRIFT_SOURCES})

    def observe_frame(self, stats: FrameStats, now_s: float, now_ns: int) -> list[HealthEvent]:
        """Feed one frame's statistics; returns the alerts that changed state."""
        self.last_frame_s = now_s
        self._track_frozen(stats)
        self.frames.append(stats)
        while len(self.frames) > self.config.window:
            self.frames.popleft()
        self._learn_baseline(stats)
        events = self._apply("silence", Evaluation(False, 0.0, self.config.silence_s, "frames arrive"), now_ns)
        exposure = self._exposure()
        # a black or blown-out image is also flat and unchanging: report the cause, not its echoes
        masked = exposure.bad is True
        events += self._apply("frozen", Evaluation(None) if masked else self._frozen(), now_ns)
        events += self._apply("exposure", exposure, now_ns)
        events += self._apply("focus", Evaluation(None) if masked else self._focus(), now_ns)
        events += self._apply_drift("view", Evaluation(None) if masked else self._view(), now_ns)
        return events

    def observe_score(self, raw_score: float, model_version: str, reference: ScoreReference | None,
                      now_ns: int) -> list[HealthEvent]:
        """Feed one detector score; returns the drift alert if it changed state."""
        if model_version != self.score_model:  # a new model has a new score scale: start over
            self.score_model, self.learned_reference, self.last_drift = model_version, None, None
            self.scores.clear()
        if self._pixel_fault():  # scores of a dark, blurred or frozen image echo that fault: neither kept nor judged
            return []
        self.scores.append(math.log(max(raw_score, 1e-12)))
        while len(self.scores) > self.config.drift_window:
            self.scores.popleft()
        return self._apply_drift("scores", self._drift(reference), now_ns)

    def tick(self, now_s: float, now_ns: int) -> list[HealthEvent]:
        """Time passes: the silence check (needs no frame to fire)."""
        if self.last_frame_s is None:
            return []
        quiet = now_s - self.last_frame_s
        evaluation = Evaluation(quiet >= self.config.silence_s, quiet, self.config.silence_s,
                                f"no frame for {quiet:.0f} s")
        state = self.states["silence"]
        if evaluation.bad and not state.firing:  # silence needs no confirmation: time already confirms it
            state.streak = self.config.confirm - 1
        return self._apply("silence", evaluation, now_ns) if evaluation.bad else []

    def _pixel_fault(self) -> bool:
        return any(self.states[name].firing for name in PIXEL_CHECKS)

    def unhealthy(self) -> list[str]:
        """Checks firing now."""
        return [name for name, state in self.states.items() if state.firing]

    def _track_frozen(self, stats: FrameStats) -> None:
        if self.previous_thumb is not None and thumb_difference(self.previous_thumb, stats.thumb) < \
                self.config.frozen_diff:
            self.identical_run += 1
        else:
            self.identical_run = 1
        self.previous_thumb = stats.thumb

    def _learn_baseline(self, stats: FrameStats) -> None:
        if self.baseline is not None:
            return
        self.learning.append(stats)
        if len(self.learning) >= self.config.baseline_frames:
            self.baseline = learn_baseline(self.learning)
            self.learning.clear()

    def _median(self, attribute: str) -> float:
        return float(np.median([getattr(s, attribute) for s in self.frames]))

    def _frozen(self) -> Evaluation:
        run = self.identical_run
        return Evaluation(run >= self.config.frozen_frames, float(run), float(self.config.frozen_frames),
                          f"{run} identical frames in a row")

    def _exposure(self) -> Evaluation:
        if len(self.frames) < self.config.window:
            return Evaluation(None)
        c = self.config
        dark, saturated = self._median("dark_fraction"), self._median("saturated_fraction")
        if dark >= c.dark_fraction:
            return Evaluation(True, dark, c.dark_fraction, f"too dark: {dark:.0%} of pixels near black")
        if saturated >= c.saturated_fraction:
            return Evaluation(True, saturated, c.saturated_fraction, f"saturated: {saturated:.0%} of pixels clipped")
        if self.baseline is None:
            return Evaluation(False, dark, c.dark_fraction, "clipping within limits; brightness baseline not set")
        ratio = self._median("mean") / self.baseline.mean
        low, high = brightness_limits(c, self.baseline)
        if ratio < low:
            return Evaluation(True, ratio, low, f"brightness {ratio:.2f} x baseline (too dark; limit {low:.2f})")
        if ratio > high:
            return Evaluation(True, ratio, high, f"brightness {ratio:.2f} x baseline (too bright; limit {high:.2f})")
        return Evaluation(False, ratio, low, f"brightness {ratio:.2f} x baseline")

    def _focus(self) -> Evaluation:
        if len(self.frames) < self.config.window or self.baseline is None:
            return Evaluation(None)
        ratio = self._median("focus") / self.baseline.focus
        low = focus_limit(self.config, self.baseline)
        return Evaluation(ratio < low, ratio, low, f"sharpness {ratio:.2f} x baseline (limit {low:.2f})")

    def _view(self) -> Evaluation:
        baseline = self.baseline
        if len(self.frames) < self.config.window or baseline is None or baseline.layout is None:
            return Evaluation(None)
        reference = np.asarray(baseline.layout, np.float32).reshape(LAYOUT_SIDE, LAYOUT_SIDE)
        distance = float(np.median([layout_distance(layout(s.thumb), reference) for s in self.frames]))
        limit = layout_limit(self.config, baseline)
        return Evaluation(distance >= limit, distance, limit,
                          f"view moved: layout {distance:.3f} from the baseline's (limit {limit:.3f})")

    def _drift(self, reference: ScoreReference | None) -> Evaluation:
        if len(self.scores) < self.config.drift_window:
            return Evaluation(None)
        if reference is None:
            if self.learned_reference is None:  # no calibration known: this camera's first window is the baseline
                logs = np.array(self.scores)
                self.learned_reference = ScoreReference(p50=float(np.exp(np.median(logs))),
                                                        log_scale=max(float(logs.std()), _MIN_LOG_SCALE))
                return Evaluation(False)
            reference = self.learned_reference
        shift = drift_statistic(list(self.scores), reference)
        self.last_drift = shift
        if shift < 0:
            limit = self.config.drift_fall_threshold
            return Evaluation(-shift >= limit, shift, -limit, f"median score fell {shift:+.2f} calibration sd")
        limit = self.config.drift_threshold
        return Evaluation(shift >= limit, shift, limit, f"median score rose {shift:+.2f} calibration sd")

    def _apply(self, check: CheckName, evaluation: Evaluation, now_ns: int) -> list[HealthEvent]:
        state = self.states[check]
        if not _confirmed(state, evaluation, self.config.confirm):
            return []
        if state.firing:
            state.since_ns = now_ns
        return [self._event(check, state, evaluation, now_ns)]

    def _apply_drift(self, source: str, evaluation: Evaluation, now_ns: int) -> list[HealthEvent]:
        """One drift source's verdict; the drift check fires while either source does, resolves when neither."""
        if not _confirmed(self.drift_sources[source], evaluation, self.config.confirm):
            return []
        state, firing = self.states["drift"], any(s.firing for s in self.drift_sources.values())
        if firing == state.firing:
            return []
        state.firing, state.streak = firing, 0
        if firing:
            state.since_ns = now_ns
        return [self._event("drift", state, evaluation, now_ns)]

    def _event(self, check: CheckName, state: CheckState, evaluation: Evaluation, now_ns: int) -> HealthEvent:
        return HealthEvent(check=check, status="firing" if state.firing else "resolved", camera_id=self.camera_id,
                           line_id=self.line_id, alert_id=f"{self.camera_id}:{check}:{state.since_ns}",
                           value=evaluation.value, threshold=evaluation.threshold, detail=evaluation.detail,
                           at_ns=now_ns)


def _confirmed(state: CheckState, evaluation: Evaluation, confirm: int) -> bool:
    """Hysteresis: True when ``confirm`` evaluations in a row disagreed with the state and flipped it."""
    if evaluation.bad is None or evaluation.bad == state.firing:
        state.streak = 0
        return False
    state.streak += 1
    if state.streak < confirm:
        return False
    state.firing, state.streak = evaluation.bad, 0
    return True


def learn_baseline(frames: list[FrameStats]) -> Baseline:
    """A camera's baseline from its healthy frames: medians, how much they varied, and their layout."""
    log_means = np.log([max(s.mean, 1e-3) for s in frames])
    log_focus = np.log([max(s.focus, 1e-3) for s in frames])
    layouts = np.stack([layout(s.thumb) for s in frames])
    reference = np.median(layouts, axis=0)
    # each frame against the median of the others: against a median it is part of, a frame looks closer than a
    # new frame will (markedly so for a baseline of a few frames)
    distances = np.array([layout_distance(layouts[i], np.median(np.delete(layouts, i, axis=0), axis=0))
                          for i in range(len(layouts))])
    return Baseline(mean=float(np.exp(np.median(log_means))), focus=float(np.exp(np.median(log_focus))),
                    mean_spread=robust_spread(log_means), focus_spread=robust_spread(log_focus),
                    layout=[float(v) for v in reference.ravel()], layout_distance=float(np.median(distances)),
                    layout_spread=robust_spread(distances))


def brightness_limits(config: CheckConfig, baseline: Baseline) -> tuple[float, float]:
    """The band of brightness / baseline a camera stays in when healthy: its own spread, within the fixed limits."""
    if baseline.mean_spread is None:
        return config.brightness_low, config.brightness_high
    allowed = max(math.log1p(config.brightness_tolerance), config.brightness_spread_limit * baseline.mean_spread)
    return max(config.brightness_low, math.exp(-allowed)), min(config.brightness_high, math.exp(allowed))


def focus_limit(config: CheckConfig, baseline: Baseline) -> float:
    """Sharpness / baseline below which a camera is out of focus: its own spread, never below ``focus_ratio``."""
    if baseline.focus_spread is None:
        return config.focus_ratio
    allowed = max(math.log1p(config.focus_tolerance), config.focus_spread_limit * baseline.focus_spread)
    return max(config.focus_ratio, math.exp(-allowed))


def layout_limit(config: CheckConfig, baseline: Baseline) -> float:
    """Layout distance at or above which the view has moved."""
    typical, spread = baseline.layout_distance or 0.0, baseline.layout_spread or 0.0
    return typical + max(config.layout_tolerance, config.layout_limit * spread)


def drift_statistic(log_scores: list[float], reference: ScoreReference) -> float:
    """Quantile-shift test: (median of the window's log scores - log calibration median) / calibration sd."""
    return (float(np.median(log_scores)) - math.log(reference.p50)) / reference.log_scale
