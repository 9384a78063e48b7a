"""The alert rule as a pure state machine per camera: ok -> firing -> resolved or silent (back to ok).

A frame *breaches* when the detector called it anomalous and its normalised score reaches the
rule's ``min_score``. An alert fires when ``k`` of the last ``n`` frames breach (outside the
cooldown after the previous alert), and resolves after ``resolve_after`` clean frames in a row.
Rule time is the frames' capture time, never the wall clock, so replaying a topic gives the same
alerts. Two checks use the wall clock, passed in as ``now_ns``: capture times too far in the future
are refused (:func:`admit`), and an open alert whose camera stopped sending goes ``silent``
(:func:`go_silent`) instead of firing forever.

Which frames count (:func:`admit`): duplicates are recognised by (camera, sequence) in a bitmap of
recent sequences, not by "not newer than the last", so frames arriving out of order still count,
and a forged sequence or capture time far ahead is rejected instead of hiding every later real frame.

Suspect alerts: the caller passes the camera-health checks failing now (``unhealthy``, read once per batch
from ``alerts/health``). An alert that fires, or is open, while its camera is unhealthy is marked suspect:
its scores may come from the camera fault, not from the parts. The mark stays for the alert's lifetime
(the evidence was taken through a faulty camera); the turn from clean to suspect of an open alert is
its own event kind, ``suspect``, so that deliveries can update what they show.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, Field

from linewatch.alerts.settings import GuardSettings, RuleConfig
from linewatch.detector.events import FrameResult

AlertState = Literal["firing", "resolved", "silent"]
EventKind = Literal["firing", "resolved", "silent", "suspect"]
Admission = Literal["new", "duplicate", "future", "sequence_jump"]


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
    ack: Acknowledgement | None = Field(default=None, description="The first acknowledgement.")
    acks: list[Acknowledgement] = Field(default_factory=list, description="Every acknowledgement, oldest first.")
    suspect: bool = Field(default=False, description="The camera was unhealthy while the alert was open.")
    suspect_checks: list[str] = Field(default_factory=list,
                                      description="The camera-health checks that were failing (alerts/health).")


class AlertEvent(BaseModel):
    """A transition to deliver: the alert as it was right after it."""

    kind: EventKind
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
    last_sequence: int = Field(default=-1, description="Highest sequence accepted.")
    last_capture_ns: int = Field(default=-1, description="Latest capture time accepted.")
    seen: str = Field(default="0", description="Hex bitmap: bit i set = sequence last_sequence - i was seen.")
    jump_sequence: int | None = Field(default=None, description="Last rejected jump, and how many frames in a "
                                                                "row continued it.")
    jump_count: int = 0
    window: list[WindowFrame] = Field(default_factory=list)
    clean_streak: int = 0
    alert: Alert | None = None
    last_resolved_ns: int | None = None
    partition: int = Field(default=-1, description="Input partition of the camera's frames (who owns it).")
    last_seen_ns: int = Field(default=0, description="Wall clock of the last frame taken (for the silence rule).")


def is_breach(result: FrameResult, rule: RuleConfig) -> bool:
    """True when the frame counts towards an alert under ``rule``."""
    return result.anomalous and result.normalised_score >= rule.min_score


def admit(state: CameraState, result: FrameResult, guard: GuardSettings, now_ns: int) -> Admission:
    """Whether a frame counts: ``new``, or why not. Pure: the caller applies :func:`mark_seen`."""
    seq, high = result.sequence, state.last_sequence
    if result.capture_ns > now_ns + guard.max_capture_ahead_s * 1e9:
        return "future"
    if high < 0 or _restarts(state, result, guard):
        return "new"
    if seq > high + guard.max_sequence_jump:
        return "new" if _jump_confirmed(state, seq, guard) else "sequence_jump"
    if seq <= high - guard.dedup_window or _was_seen(state, seq):
        return "duplicate"
    return "new"


def _was_seen(state: CameraState, seq: int) -> bool:
    high = state.last_sequence
    return seq <= high and bool((int(state.seen, 16) >> (high - seq)) & 1)


def _restarts(state: CameraState, result: FrameResult, guard: GuardSettings) -> bool:
    """A camera that restarted its numbering: a sequence below the window or already seen, captured later
    than anything seen (a redelivery carries its original, older capture time)."""
    seq, high = result.sequence, state.last_sequence
    old = seq <= high - guard.dedup_window or _was_seen(state, seq)
    return high >= 0 and old and result.capture_ns > state.last_capture_ns


def _jump_confirmed(state: CameraState, seq: int, guard: GuardSettings) -> bool:
    """True when this jump continues ``reanchor_after - 1`` rejected ones: the camera really moved on."""
    prior = state.jump_sequence
    return prior is not None and 0 < seq - prior <= guard.dedup_window \
        and state.jump_count + 1 >= guard.reanchor_after


def note_rejected(state: CameraState, result: FrameResult, admission: Admission) -> CameraState:
    """The state after refusing a frame: a jump is remembered so that a real one is followed later."""
    if admission != "sequence_jump":
        return state
    new = state.model_copy()
    prior = state.jump_sequence
    continues = prior is not None and result.sequence > prior
    new.jump_sequence, new.jump_count = result.sequence, (state.jump_count + 1) if continues else 1
    return new


def mark_seen(state: CameraState, result: FrameResult, guard: GuardSettings) -> None:
    """Record an admitted frame in ``state`` (changed in place) so that its redelivery is recognised."""
    seq, high = result.sequence, state.last_sequence
    mask = (1 << guard.dedup_window) - 1
    restarted = high >= 0 and (_restarts(state, result, guard) or seq > high + guard.max_sequence_jump)
    if high < 0 or restarted:
        bits, high = 1, seq
    elif seq > high:
        bits, high = ((int(state.seen, 16) << (seq - high)) | 1) & mask, seq
    else:
        bits = int(state.seen, 16) | (1 << (high - seq))
    state.last_sequence, state.seen = high, format(bits, "x")
    state.last_capture_ns = max(state.last_capture_ns, result.capture_ns) if not restarted else result.capture_ns
    state.jump_sequence, state.jump_count = None, 0


def step(state: CameraState, result: FrameResult, rule: RuleConfig, guard: GuardSettings | None = None,
         now_ns: int | None = None, unhealthy: Collection[str] = ()) -> tuple[CameraState, list[AlertEvent]]:
    """Apply one frame; returns the new state (``state`` is not changed) and the transitions.

    ``unhealthy``: the camera-health checks failing for this camera now (makes its alert suspect).
    A frame that :func:`admit` refuses returns ``state`` itself when nothing needs saving.
    """
    guard = guard or GuardSettings()
    now_ns = time.time_ns() if now_ns is None else now_ns
    admission = admit(state, result, guard, now_ns)
    if admission != "new":
        return note_rejected(state, result, admission), []
    new = state.model_copy(deep=True)
    new.line_id = result.line_id
    mark_seen(new, result, guard)
    new.last_seen_ns = now_ns
    breach = is_breach(result, rule)
    frame = WindowFrame(sequence=result.sequence, capture_ns=result.capture_ns, breach=breach,
                        score=result.normalised_score, heatmap_key=result.heatmap_key)
    new.window = [*new.window, frame][-rule.n:]
    if new.alert is None:
        return new, _maybe_fire(new, rule, unhealthy)
    return new, _update_firing(new, frame, rule) + mark_suspect(new, unhealthy)


def mark_suspect(state: CameraState, unhealthy: Collection[str]) -> list[AlertEvent]:
    """Mark the open alert of ``state`` (changed in place) suspect when checks fail; the ``suspect`` event
    when it just turned suspect. Later failing checks are added to the mark without a new event."""
    alert = state.alert
    new_checks = sorted(set(unhealthy) - set(alert.suspect_checks)) if alert is not None else []
    if alert is None or not new_checks:
        return []
    turned = not alert.suspect
    alert.suspect, alert.suspect_checks = True, [*alert.suspect_checks, *new_checks]
    return [AlertEvent(kind="suspect", alert=alert.model_copy(deep=True))] if turned else []


def _maybe_fire(state: CameraState, rule: RuleConfig, unhealthy: Collection[str]) -> list[AlertEvent]:
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
        suspect=bool(unhealthy), suspect_checks=sorted(set(unhealthy)),
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


def go_silent(state: CameraState, now_ns: int, silent_after_s: float) -> tuple[CameraState, list[AlertEvent]]:
    """Close an open alert whose camera sent nothing for ``silent_after_s`` (wall clock) as ``silent``.

    An alert that cannot resolve (no frames) must not look like a live defect forever; "silent" tells
    the operator to look at the camera instead. A new alert fires when breaching frames come back.
    """
    if state.alert is None or now_ns - state.last_seen_ns < silent_after_s * 1e9:
        return state, []
    new = state.model_copy(deep=True)
    alert = new.alert
    assert alert is not None
    alert.state, alert.end_ns, alert.end_sequence = "silent", max(new.last_capture_ns, alert.start_ns), \
        new.last_sequence
    new.alert, new.window, new.clean_streak = None, [], 0
    new.last_resolved_ns = alert.end_ns
    return new, [AlertEvent(kind="silent", alert=alert)]
