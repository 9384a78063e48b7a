"""The alert rule as a pure state machine per camera: ok -> firing -> resolved (back to ok).

A frame *breaches* when the detector called it anomalous and its normalised score reaches the
rule's ``min_score``. An alert fires when ``k`` of the last ``n`` frames breach (outside the
cooldown after the previous alert), and resolves after ``resolve_after`` clean frames in a row.
Time is the frames' capture time, never the wall clock, so replaying a topic gives the same alerts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from linewatch.alerts.settings import RuleConfig
from linewatch.detector.events import FrameResult

AlertState = Literal["firing", "resolved"]


class Acknowledgement(BaseModel):
    """An operator saw the alert."""

    by: str
    at_ns: int
    note: str = ""


class Alert(BaseModel):
    """One alert: what the operator sees and what every delivery carries."""

    alert_id: str
    line_id: str
    camera_id: str
    state: AlertState
    severity: str
    start_ns: int
    end_ns: int | None = None
    start_sequence: int
    end_sequence: int | None = None
    peak_score: float
    frame_count: int = Field(description="Breaching frames while the alert was open.")
    worst_sequence: int
    worst_heatmap_key: str | None
    rule: RuleConfig
    ack: Acknowledgement | None = None


class AlertEvent(BaseModel):
    """A transition to deliver: the alert as it was right after it."""

    kind: AlertState
    alert: Alert

    @property
    def event_id(self) -> str:
        """Stable id of this transition (the same after a replay), for idempotent receivers."""
        return f"{self.alert.alert_id}:{self.kind}"


class WindowFrame(BaseModel):
    """What the rule keeps of one recent frame."""

    sequence: int
    capture_ns: int
    breach: bool
    score: float
    heatmap_key: str | None


class CameraState(BaseModel):
    """Everything the rule remembers about one camera (persisted as JSON)."""

    camera_id: str
    line_id: str = ""
    last_sequence: int = -1
    last_capture_ns: int = -1
    window: list[WindowFrame] = Field(default_factory=list)
    clean_streak: int = 0
    alert: Alert | None = None
    last_resolved_ns: int | None = None


def is_breach(result: FrameResult, rule: RuleConfig) -> bool:
    """True when the frame counts towards an alert under ``rule``."""
    return result.anomalous and result.normalised_score >= rule.min_score


def is_redelivery(state: CameraState, result: FrameResult) -> bool:
    """A frame already seen: its sequence and capture time are not newer than the last one.

    A camera that restarts its sequence at 0 still gets through, its capture time being newer.
    """
    return result.sequence <= state.last_sequence and result.capture_ns <= state.last_capture_ns


def step(state: CameraState, result: FrameResult, rule: RuleConfig) -> tuple[CameraState, list[AlertEvent]]:
    """Apply one frame; returns the new state (``state`` is not changed) and the transitions."""
    if is_redelivery(state, result):
        return state, []
    new = state.model_copy(deep=True)
    new.line_id = result.line_id
    new.last_sequence, new.last_capture_ns = result.sequence, result.capture_ns
    breach = is_breach(result, rule)
    frame = WindowFrame(sequence=result.sequence, capture_ns=result.capture_ns, breach=breach,
                        score=result.normalised_score, heatmap_key=result.heatmap_key)
    new.window = [*new.window, frame][-rule.n:]
    if new.alert is None:
        return new, _maybe_fire(new, rule)
    return new, _update_firing(new, frame, rule)


def _maybe_fire(state: CameraState, rule: RuleConfig) -> list[AlertEvent]:
    breaches = [f for f in state.window if f.breach]
    if len(breaches) < rule.k:
        return []
    now_ns = state.window[-1].capture_ns
    if state.last_resolved_ns is not None and now_ns - state.last_resolved_ns < rule.cooldown_s * 1e9:
        return []
    worst = max(breaches, key=lambda f: f.score)
    first = breaches[0]
    state.alert = Alert(
        alert_id=f"{state.camera_id}-{first.sequence}-{first.capture_ns // 1_000_000}",
        line_id=state.line_id, camera_id=state.camera_id, state="firing",
        severity=rule.severity(worst.score), start_ns=first.capture_ns, start_sequence=first.sequence,
        peak_score=worst.score, frame_count=len(breaches), worst_sequence=worst.sequence,
        worst_heatmap_key=worst.heatmap_key, rule=rule,
    )
    state.clean_streak = 0
    return [AlertEvent(kind="firing", alert=state.alert.model_copy(deep=True))]


def _update_firing(state: CameraState, frame: WindowFrame, rule: RuleConfig) -> list[AlertEvent]:
    alert = state.alert
    assert alert is not None
    if frame.breach:
        state.clean_streak = 0
        alert.frame_count += 1
        if frame.score > alert.peak_score:
            # Severity stays as fired: Alertmanager tells alerts apart by their labels.
            alert.peak_score, alert.worst_sequence = frame.score, frame.sequence
            alert.worst_heatmap_key = frame.heatmap_key
        return []
    state.clean_streak += 1
    if state.clean_streak < rule.resolve_after:
        return []
    alert.state, alert.end_ns, alert.end_sequence = "resolved", frame.capture_ns, frame.sequence
    state.alert, state.window, state.clean_streak = None, [], 0
    state.last_resolved_ns = frame.capture_ns
    return [AlertEvent(kind="resolved", alert=alert)]
