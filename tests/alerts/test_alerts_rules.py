"""The rule state machine: k of n fires once, m clean frames resolve, cooldown, severity, redelivery."""

from __future__ import annotations

import itertools

from alerts_helpers import FRAME_NS, T0, frame, scores_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from linewatch.alerts.rules import AlertEvent, CameraState, step
from linewatch.alerts.settings import RuleConfig, RuleOverride, RulesSettings

RULE = RuleConfig(k=3, n=5, min_score=0.5, resolve_after=4, cooldown_s=0.0)


def run(scores: list[float], rule: RuleConfig = RULE,
        state: CameraState | None = None) -> tuple[CameraState, list[AlertEvent]]:
    state = state or CameraState(camera_id="cam-1")
    events: list[AlertEvent] = []
    for result in scores_stream("cam-1", scores, first=state.last_sequence + 1):
        state, new = step(state, result, rule)
        events.extend(new)
    return state, events


def test_three_of_five_fires_once_and_resolves_after_m_clean_frames() -> None:
    scores = [0.1, 0.7, 0.2, 0.8, 0.1, 0.95, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1]
    state, events = run(scores)
    assert [e.kind for e in events] == ["firing", "resolved"]
    fired, resolved = events[0].alert, events[1].alert
    assert fired.start_sequence == 1 and fired.frame_count == 3 and fired.state == "firing"
    assert fired.alert_id == resolved.alert_id
    assert resolved.peak_score == 0.95 and resolved.worst_sequence == 5
    assert resolved.frame_count == 4  # 1, 3, 5 fired it; 6 counted while firing
    assert resolved.end_sequence == 10 and resolved.end_ns == T0 + 10 * FRAME_NS
    assert state.alert is None and state.last_sequence == 11


def test_two_breaches_in_five_do_not_fire_and_low_scores_do_not_count() -> None:
    assert run([0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9])[1] == []
    strict = RuleConfig(k=3, n=5, min_score=0.8, resolve_after=4, cooldown_s=0.0)
    assert run([0.6, 0.7, 0.6, 0.7, 0.6], strict)[1] == []


def test_clean_frames_must_be_consecutive_to_resolve() -> None:
    _, events = run([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    assert [e.kind for e in events] == ["firing"]


def test_redelivered_frames_are_ignored() -> None:
    state, events = run([0.9, 0.9, 0.9])
    assert [e.kind for e in events] == ["firing"]
    for result in scores_stream("cam-1", [0.9, 0.9, 0.9]):
        again, new = step(state, result, RULE)
        assert again is state and new == []


def test_camera_restarting_its_sequence_is_not_taken_for_redelivery() -> None:
    """A restart (numbering back to 0, captured later than anything seen) is followed, and none of its frames is
    lost: the first ones are held until ``reanchor_after`` (3) agree, so that one forged frame cannot fake it."""
    state, _ = run([0.1] * 20)
    restarted = [frame("cam-1", seq, 0.9, capture_ns=T0 + (100 + seq) * FRAME_NS) for seq in range(3)]
    held, _ = step(state, restarted[0], RULE)
    held, _ = step(held, restarted[1], RULE)
    assert held is not state and held.last_sequence == 19 and len(held.candidates[0].held) == 2
    new, events = step(held, restarted[2], RULE)
    assert new.last_sequence == 2 and [e.kind for e in events] == ["firing"]
    assert events[0].alert.start_sequence == 0 and events[0].alert.frame_count == 3


def test_cooldown_suppresses_a_new_alert_right_after_resolution() -> None:
    rule = RuleConfig(k=2, n=3, min_score=0.5, resolve_after=2, cooldown_s=1.0)  # 10 frames
    flapping = [0.9, 0.9, 0.1, 0.1] + [0.9, 0.9, 0.1, 0.1] + [0.1] * 6 + [0.9, 0.9]
    _, events = run(flapping, rule)
    assert [e.kind for e in events] == ["firing", "resolved", "firing"]
    assert events[2].alert.start_sequence == 14


def test_severity_from_peak_score() -> None:
    assert [run([s, s, s])[1][0].alert.severity for s in (0.6, 0.8, 0.95)] == ["minor", "major", "critical"]
    assert RULE.severity(0.0) == "minor"


def test_overrides_per_line_then_camera() -> None:
    rules = RulesSettings(lines={"line-2": RuleOverride(k=2, n=4)}, cameras={"cam-9": RuleOverride(k=1, n=4)})
    assert rules.for_camera("line-1", "cam-1") == RuleConfig()
    assert (rules.for_camera("line-2", "cam-1").k, rules.for_camera("line-2", "cam-1").n) == (2, 4)
    assert rules.for_camera("line-2", "cam-9").k == 1
    assert rules.for_camera("line-2", "cam-9").resolve_after == RuleConfig().resolve_after


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60), st.integers(min_value=1, max_value=59))
def test_splitting_the_stream_anywhere_gives_the_same_alerts(scores: list[float], cut: int) -> None:
    """What a restart does: state saved after ``cut`` frames, then everything redelivered."""
    _, whole = run(scores)
    head = scores_stream("cam-1", scores[:cut])
    state = CameraState(camera_id="cam-1")
    events: list[AlertEvent] = []
    for result in head:
        state, new = step(state, result, RULE)
        events.extend(new)
    restored = CameraState.model_validate_json(state.model_dump_json())
    for result in scores_stream("cam-1", scores):  # redelivery from offset 0
        restored, new = step(restored, result, RULE)
        events.extend(new)
    assert [(e.kind, e.alert.alert_id) for e in events] == [(e.kind, e.alert.alert_id) for e in whole]
    kinds = [e.kind for e in whole]
    assert all(a != b for a, b in itertools.pairwise(kinds))  # strictly alternating
