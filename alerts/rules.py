"""The alert rule as a pure state machine per camera: ok -> firing -> resolved or silent (back to ok).

A frame *breaches* when the detector called it anomalous and its normalised score reaches the
rule's ``min_score``. An alert fires when ``k`` of the last ``n`` frames breach (outside the
cooldown after the previous alert), and resolves after ``resolve_after`` clean frames in a row.
Rule time is the frames' capture time, never the wall clock, so replaying a topic gives the same
alerts. The wall clock, passed in as ``now_ns``, bounds it: capture times too far in the future are
refused (:func:`admit`), no capture time moves the rule's clock (a cooldown's start) past ``now_ns``,
and an open alert whose camera stopped sending goes ``silent`` (:func:`go_silent`) instead of firing
forever.

Which frames count (:func:`admit`, bounds in :class:`~alerts.settings.GuardSettings`). A camera's first
frames all count; they form runs of frames near each other (within ``max_sequence_jump``), and the first run
of ``reanchor_after`` frames becomes the camera's *track*: its highest sequence, a bitmap per verdict (clean,
breaching) of the last ``dedup_window`` sequences, and its ``2 x reanchor_after - 1`` highest frames. A frame
is on the track when it is at most ``max_sequence_jump`` past the highest sequence or inside the window below
it. It counts unless the same sequence was taken with the same verdict and it was captured before a frame with
a higher sequence (a redelivery); so frames arriving out of order count. A frame off the track captured no
later than the track's time (the median of its latest capture times) is an old redelivery, from before a
restart or a jump. Any other frame off the track (a jump, a restart, or forged) is held: it counts, with the
held frames near it, once ``reanchor_after`` of them agree, and they become the track.

Adversary and guarantee. The adversary writes up to N = ``reanchor_after - 1`` result records of a camera that
pass intake (its id, key and line), with any sequence and capture time (past, within the accepted skew, or
predicting the real frames exactly), at any positions of the camera's stream, and a score below the rule's
breach (a forged breach can only raise alerts). The camera's real stream: consecutive sequences with rising
capture times, delivered in order or late by less than half the window, any of them redelivered. Then:

1. Every real breaching frame counts when it arrives, and once. It is never a redelivery of a forged
   record: duplicates are keyed by verdict, and forged records are clean. Forged records on the track raise its
   highest sequence by at most N x ``max_sequence_jump``, at most half the window (the settings refuse more),
   so real frames stay on it; a frame above the track's lowest recent frame is new whatever the forged records
   claim. Forged records off the track stay held (N < ``reanchor_after``) and never replace the track, and N
   records cannot move the track's median time. Before the camera has a track, every frame counts.
2. No forged capture time moves the rule's clock past this host's: a cooldown starts at the latest now.
3. What a forged record can still do is what any clean frame does: take a place in the k-of-n window, be one
   frame of a clean streak, and take the place of the real clean frame of its sequence if it comes first.

So k real breaching frames in a row fire an alert when at most n - k forged records arrive among them, on a
camera without an open alert; with the defaults (3 of 5, ``reanchor_after`` 3) that is any placement of N = 2.
An open alert can be resolved up to N clean frames early, and the cooldown then delays the next one by at most
``cooldown_s``. Where producers cannot be kept apart, signed frames close these too (alerts/README.md,
"Authenticated frames").

Suspect alerts: the caller passes the camera-health checks failing now (``unhealthy``, read once per batch
from ``health``). An alert that fires, or is open, while its camera is unhealthy is marked suspect:
its scores may come from the camera fault, not from the parts. The mark stays for the alert's lifetime
(the evidence was taken through a faulty camera); the turn from clean to suspect of an open alert is
its own event kind, ``suspect``, so that deliveries can update what they show.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from linewatch.alerts.settings import GuardSettings, RuleConfig
from linewatch.detector.events import FrameResult

AlertState = Literal["firing", "resolved", "silent"]
EventKind = Literal["firing", "resolved", "silent", "suspect"]
Admission = Literal["new", "reanchor", "duplicate", "future", "sequence_jump"]


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
                                      description="The camera-health checks that were failing (health).")


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


class TrackFrame(BaseModel):
    """Sequence and capture time of one of the highest frames on a camera's track."""

    sequence: int
    capture_ns: int


class Candidate(BaseModel):
    """A run of frames near each other: before the camera has a track, its first frames (counted); after, frames
    off the track (a jump, a restart, or forged), held until ``reanchor_after`` agree."""

    held: list[WindowFrame] = Field(default_factory=list, description="In sequence order.")


class CameraState(BaseModel):
    """Everything the rule remembers about one camera (persisted as JSON)."""

    camera_id: str
    line_id: str = ""
    last_sequence: int = Field(default=-1, description="Highest sequence on the camera's track; -1: no track yet.")
    last_capture_ns: int = Field(default=-1, description="Latest capture time taken, never past this host's clock.")
    seen: str = Field(default="0", description="Hex bitmap of clean frames: bit i set = sequence last_sequence - i "
                                               "was taken clean.")
    seen_breach: str = Field(default="0", description="Hex bitmap of breaching frames, like seen.")
    latest: list[TrackFrame] = Field(default_factory=list, description="The track's 2 x reanchor_after - 1 highest "
                                                                       "frames, highest first.")
    established: bool = Field(default=False, description="The camera has a track: reanchor_after frames agreed.")
    candidates: list[Candidate] = Field(default_factory=list, description="Runs of frames not (yet) on the track, "
                                                                          "most recent first.")
    window: list[WindowFrame] = Field(default_factory=list)
    clean_streak: int = 0
    alert: Alert | None = None
    last_resolved_ns: int | None = None
    partition: int = Field(default=-1, description="Input partition of the camera's frames (who owns it).")
    last_seen_ns: int = Field(default=0, description="Wall clock of the last frame taken (for the silence rule).")

    @model_validator(mode="before")
    @classmethod
    def _from_previous_version(cls, data: Any) -> Any:
        """A state saved before verdicts were told apart: its one bitmap stands for both verdicts (so what it saw
        stays a redelivery), and its track counts as established at its last capture time."""
        if not isinstance(data, dict) or "seen_breach" in data or data.get("last_sequence", -1) < 0:
            return data
        last = {"sequence": data["last_sequence"], "capture_ns": data.get("last_capture_ns", -1)}
        return {**data, "seen_breach": data.get("seen", "0"), "latest": [last], "established": True}


def is_breach(result: FrameResult, rule: RuleConfig) -> bool:
    """True when the frame counts towards an alert under ``rule``."""
    return result.anomalous and result.normalised_score >= rule.min_score


def admit(state: CameraState, result: FrameResult, guard: GuardSettings, now_ns: int,
          rule: RuleConfig | None = None) -> Admission:
    """Whether a frame counts: ``new``; ``reanchor`` (it completes held frames off the track, which count with it);
    or why not: ``duplicate``, ``future``, ``sequence_jump`` (off the track: held until others agree).

    Pure: :func:`step` applies it. ``rule`` decides which frames breach (without one, the detector's verdict).
    """
    if result.capture_ns > now_ns + guard.max_capture_ahead_s * 1e9:
        return "future"
    breach = result.anomalous if rule is None else is_breach(result, rule)
    if not state.established:  # none of the first frames can be told forged: all count, each run remembers its own
        return "duplicate" if _held_again(state, result, breach, guard) else "new"
    if not _on_track(state, result.sequence, guard):
        return "duplicate" if _older_than_track(state, result) else _off_track(state, result, breach, guard)
    seen = _was_seen(state, result.sequence, breach)
    if seen and (_repeats_latest(state, result) or _captured_before_a_later_frame(state, result)):
        return "duplicate"
    if not seen and (result.sequence > _lowest_latest(state) or _captured_before_a_later_frame(state, result)):
        return "new"
    return _off_track(state, result, breach, guard)  # a restart inside the window, or a forged claim on a sequence


def _on_track(state: CameraState, seq: int, guard: GuardSettings) -> bool:
    high = state.last_sequence
    return high - guard.dedup_window < seq <= high + guard.max_sequence_jump


def _was_seen(state: CameraState, seq: int, breach: bool) -> bool:
    """Taken before with the same verdict: a redelivery carries its original's verdict, a forged clean frame
    therefore never hides a breaching one."""
    offset = state.last_sequence - seq
    return offset >= 0 and bool((int(state.seen_breach if breach else state.seen, 16) >> offset) & 1)


def _repeats_latest(state: CameraState, result: FrameResult) -> bool:
    return any(f.sequence == result.sequence and f.capture_ns == result.capture_ns for f in state.latest)


def _captured_before_a_later_frame(state: CameraState, result: FrameResult) -> bool:
    """A real late frame (or a redelivery) was captured before a frame with a higher sequence; a restarted camera's
    frame was captured after all of them."""
    return any(f.sequence > result.sequence and f.capture_ns >= result.capture_ns for f in state.latest)


def _lowest_latest(state: CameraState) -> int:
    return min((f.sequence for f in state.latest), default=state.last_sequence)


def _older_than_track(state: CameraState, result: FrameResult) -> bool:
    """Off the track and captured no later than it: a redelivery of frames it left behind (before a restart or
    jump). The track's time is the median of its latest capture times, which ``reanchor_after - 1`` forged
    frames cannot move; a track not yet established has no time to trust."""
    captures = sorted(f.capture_ns for f in state.latest)
    return state.established and bool(captures) and result.capture_ns <= captures[len(captures) // 2]


def _candidates_near(state: CameraState, seq: int, guard: GuardSettings) -> list[Candidate]:
    """The held runs that ``seq`` continues (within ``max_sequence_jump`` of one of their frames)."""
    return [c for c in state.candidates if any(abs(seq - f.sequence) <= guard.max_sequence_jump for f in c.held)]


def _run_near(state: CameraState, seq: int, guard: GuardSettings) -> list[WindowFrame]:
    """The frames of every run that ``seq`` continues, in sequence order: the run it would make."""
    return sorted((f for c in _candidates_near(state, seq, guard) for f in c.held), key=lambda f: f.sequence)


def _held_again(state: CameraState, result: FrameResult, breach: bool, guard: GuardSettings) -> bool:
    """The very frame (sequence, capture time, verdict) is in a run already: a redelivery."""
    return any(f.sequence == result.sequence and f.capture_ns == result.capture_ns and f.breach == breach
               for f in _run_near(state, result.sequence, guard))


def _off_track(state: CameraState, result: FrameResult, breach: bool, guard: GuardSettings) -> Admission:
    """A frame the track cannot take: held, unless it is already, or it completes ``reanchor_after`` near frames."""
    if _held_again(state, result, breach, guard):
        return "duplicate"
    return "reanchor" if len(_run_near(state, result.sequence, guard)) + 1 >= guard.reanchor_after else "sequence_jump"


def hold(state: CameraState, frame: WindowFrame, guard: GuardSettings) -> CameraState:
    """The state after holding a frame off the track with the held frames near it (``state`` is not changed)."""
    new = state.model_copy()
    new.candidates = _joined(state, frame, guard)
    return new


def _joined(state: CameraState, frame: WindowFrame, guard: GuardSettings) -> list[Candidate]:
    """The runs after ``frame`` joins (and so merges) the runs it continues, most recent first. At most
    ``reanchor_after`` are kept: the camera's own and one per forged frame that the guarantee covers."""
    near = _candidates_near(state, frame.sequence, guard)
    others = [c for c in state.candidates if all(c is not n for n in near)]
    run = sorted([*(f for c in near for f in c.held), frame], key=lambda f: f.sequence)
    return [Candidate(held=run), *others][:guard.reanchor_after]


def mark_seen(state: CameraState, frame: WindowFrame, guard: GuardSettings) -> None:
    """Put a taken frame on the camera's track (``state`` changed in place) so that its redelivery is recognised."""
    seq, high = frame.sequence, state.last_sequence
    clean, breach = int(state.seen, 16), int(state.seen_breach, 16)
    if seq > high:
        clean, breach = _shifted(clean, seq - high, guard), _shifted(breach, seq - high, guard)
        high = seq
    if high - seq < guard.dedup_window:
        if frame.breach:
            breach |= 1 << (high - seq)
        else:
            clean |= 1 << (high - seq)
    state.last_sequence, state.seen, state.seen_breach = high, format(clean, "x"), format(breach, "x")
    latest = [*state.latest, TrackFrame(sequence=seq, capture_ns=frame.capture_ns)]
    state.latest = sorted(latest, key=lambda f: (f.sequence, f.capture_ns), reverse=True)[:2 * guard.reanchor_after - 1]


def _shifted(bits: int, by: int, guard: GuardSettings) -> int:
    """``bits`` moved up by ``by`` sequences, keeping the window (never a huge shift: sequences reach 2^63)."""
    return 0 if by >= guard.dedup_window else (bits << by) & ((1 << guard.dedup_window) - 1)


def _take(state: CameraState, frame: WindowFrame, guard: GuardSettings, admission: Admission) -> list[WindowFrame]:
    """Record an admitted frame (``state`` changed in place); returns the frames that count now, in order: for
    ``reanchor``, the held frames near it too."""
    if admission == "reanchor":
        run = sorted([*_run_near(state, frame.sequence, guard), frame], key=lambda f: f.sequence)
        _adopt(state, run, guard)
        return run
    if state.established:
        mark_seen(state, frame, guard)
    else:
        state.candidates = _joined(state, frame, guard)
        state.last_sequence = max(state.last_sequence, frame.sequence)
        if len(state.candidates[0].held) >= guard.reanchor_after:
            _adopt(state, state.candidates[0].held, guard)
    return [frame]


def _adopt(state: CameraState, run: list[WindowFrame], guard: GuardSettings) -> None:
    """Make a run of ``reanchor_after`` agreeing frames the camera's track (``state`` changed in place). A jump
    ahead keeps what the window knew of the frames before it; a restart (or a camera's first run) starts anew."""
    if not state.established or run[0].sequence <= state.last_sequence:
        state.last_sequence, state.seen, state.seen_breach, state.latest = -1, "0", "0", []
    for frame in run:
        mark_seen(state, frame, guard)
    state.established, state.candidates = True, []


def step(state: CameraState, result: FrameResult, rule: RuleConfig, guard: GuardSettings | None = None,
         now_ns: int | None = None, unhealthy: Collection[str] = ()) -> tuple[CameraState, list[AlertEvent]]:
    """Apply one frame; returns the new state (``state`` is not changed) and the transitions.

    ``unhealthy``: the camera-health checks failing for this camera now (makes its alert suspect).
    A frame that :func:`admit` refuses returns ``state`` itself when nothing needs saving.
    """
    guard = guard or GuardSettings()
    now_ns = time.time_ns() if now_ns is None else now_ns
    admission = admit(state, result, guard, now_ns, rule)
    if admission in ("future", "duplicate"):
        return state, []
    frame = WindowFrame(sequence=result.sequence, capture_ns=result.capture_ns, breach=is_breach(result, rule),
                        score=result.normalised_score, heatmap_key=result.heatmap_key)
    if admission == "sequence_jump":
        return hold(state, frame, guard), []
    new = state.model_copy(deep=True)
    new.line_id, new.last_seen_ns = result.line_id, now_ns
    events: list[AlertEvent] = []
    for taken in _take(new, frame, guard, admission):
        events.extend(_count(new, taken, rule, now_ns, unhealthy))
    return new, events


def _count(state: CameraState, frame: WindowFrame, rule: RuleConfig, now_ns: int,
           unhealthy: Collection[str]) -> list[AlertEvent]:
    """Apply one taken frame to the rule (``state`` changed in place)."""
    state.last_capture_ns = max(state.last_capture_ns, min(frame.capture_ns, now_ns))
    state.window = [*state.window, frame][-rule.n:]
    if state.alert is None:
        return _maybe_fire(state, rule, unhealthy, now_ns)
    return _update_firing(state, frame, rule, now_ns) + mark_suspect(state, unhealthy)


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


def _maybe_fire(state: CameraState, rule: RuleConfig, unhealthy: Collection[str], now_ns: int) -> list[AlertEvent]:
    breaches = [f for f in state.window if f.breach]
    if len(breaches) < rule.k:
        return []
    at_ns = min(state.window[-1].capture_ns, now_ns)  # the rule's clock never runs ahead of this host's
    if state.last_resolved_ns is not None and at_ns - state.last_resolved_ns < rule.cooldown_s * 1e9:
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


def _update_firing(state: CameraState, frame: WindowFrame, rule: RuleConfig, now_ns: int) -> list[AlertEvent]:
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
    state.last_resolved_ns = min(frame.capture_ns, now_ns)  # a capture time ahead cannot stretch the cooldown
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
