"""Forged frames cannot suppress a camera's alerts: the pure rule against the guard's adversary.

The adversary (see ``alerts.rules``): up to ``reanchor_after - 1`` forged result records of the victim camera,
at any positions in its real stream, with any sequence and capture time (huge ones, ones within the guard's
bounds, ones that predict the real frames exactly) and a score below the breach. The named tests are the
attacks found in review, each of which silenced the camera before; the property test draws the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from alerts_helpers import FRAME_NS, T0, frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from linewatch.alerts.rules import Admission, AlertEvent, CameraState, admit, step
from linewatch.alerts.settings import GuardSettings, RuleConfig
from linewatch.detector.events import FrameResult

pytestmark = pytest.mark.unit

CAMERA = "cam-victim"
CLEAN, HIT = 0.1, 0.9
NOW = T0 + 3600 * 10**9  # this host's clock when the camera captured its frame 0 (nanoseconds)
LATENCY_NS = 50_000_000  # capture to processing by the alerts service
SECOND = 10**9
DEFAULT_RULE = RuleConfig()  # 3 of 5, resolve after 5 clean, cooldown 30 s
GUARD = GuardSettings()


@dataclass(frozen=True)
class Delivery:
    """One record as the alerts service sees it: the result and this host's clock when it is processed."""

    result: FrameResult
    now_ns: int
    real: bool = True


def real(seq: int, score: float, *, first: int = 0, spacing_ns: int = FRAME_NS) -> Delivery:
    """Frame ``seq`` of the real camera, whose frame ``first`` was captured at :data:`NOW`."""
    captured = NOW + (seq - first) * spacing_ns
    return Delivery(frame(CAMERA, seq, score, capture_ns=captured), captured + LATENCY_NS)


def forged(seq: int, capture_ns: int, now_ns: int, score: float = CLEAN, anomalous: bool = False) -> Delivery:
    result = frame(CAMERA, seq, score, capture_ns=capture_ns).model_copy(update={"anomalous": anomalous})
    return Delivery(result, now_ns, real=False)


def feed(deliveries: list[Delivery], rule: RuleConfig = DEFAULT_RULE, guard: GuardSettings = GUARD,
         state: CameraState | None = None) -> tuple[CameraState, list[AlertEvent], list[Admission]]:
    """Step every delivery; returns the final state, the transitions and each delivery's admission."""
    state = state or CameraState(camera_id=CAMERA)
    events: list[AlertEvent] = []
    admissions: list[Admission] = []
    for delivery in deliveries:
        admissions.append(admit(state, delivery.result, guard, delivery.now_ns, rule))
        state, new = step(state, delivery.result, rule, guard, delivery.now_ns)
        events.extend(new)
    return state, events, admissions


def fired(events: list[AlertEvent]) -> int:
    return sum(e.kind == "firing" for e in events)


def test_probe_from_review_one_frame_far_ahead_with_capture_290_s_ahead_no_longer_silences_the_camera() -> None:
    """The review's probe: before, the forged frame moved the duplicate window by 5,000 and its capture time
    (within the 300 s skew) made every real frame 2..9 a 'redelivery': no alert."""
    history = [real(0, CLEAN), real(1, CLEAN)]
    breaching = [real(seq, HIT) for seq in range(2, 10)]
    at = history[-1].now_ns
    probe = forged(1 + 5_000, at + 290 * SECOND, at)
    assert fired(feed(history + breaching)[1]) == 1  # the control: the same real frames alone
    state, events, admissions = feed([*history, probe, *breaching])
    assert fired(events) == 1 and events[0].alert.start_sequence == 2
    assert admissions[3:] == ["new"] * 8  # every real frame counts
    assert state.last_sequence == 9 and state.last_capture_ns <= breaching[-1].now_ns


def test_the_probe_against_an_established_camera_is_held_off_its_track() -> None:
    """Once ``reanchor_after`` frames agree on the camera's track, the probe's frame is not counted at all."""
    history = [real(seq, CLEAN) for seq in range(5)]
    at = history[-1].now_ns
    state, events, admissions = feed([*history, forged(4 + 5_000, at + 290 * SECOND, at),
                                      *(real(seq, HIT) for seq in range(5, 8))])
    assert admissions[5:] == ["sequence_jump", "new", "new", "new"] and fired(events) == 1
    assert [f.sequence for f in state.window] == [3, 4, 5, 6, 7]


def test_a_forged_frame_claiming_an_upcoming_sequence_does_not_make_the_real_one_a_redelivery() -> None:
    """Before: forged frame 3 (captured exactly when the real frame 3 would be) arrived first, and the real
    frame 3 was taken as its redelivery: 2 of the 3 breaching frames counted, no alert."""
    history = [real(0, CLEAN), real(1, CLEAN)]
    predicted = real(3, HIT).result.capture_ns
    claim = forged(3, predicted, history[-1].now_ns)
    _, events, admissions = feed([*history, claim, real(2, HIT), real(3, HIT), real(4, HIT)])
    assert fired(events) == 1 and admissions[-3:] == ["new", "new", "new"]
    assert events[0].alert.frame_count == 3


def test_a_forged_restart_cannot_knock_an_established_camera_off_its_numbering() -> None:
    """Before: a forged sequence 0 captured 'now' was taken for a restart; the real frames 50,005... were then a
    jump of 50,000 and refused until ``reanchor_after`` of them agreed: two of the three breaches were lost."""
    first = 50_000
    history = [real(seq, CLEAN, first=first) for seq in range(first, first + 5)]
    at = history[-1].now_ns
    restart = forged(0, at, at)
    breaching = [real(seq, HIT, first=first) for seq in range(first + 5, first + 8)]
    _, events, admissions = feed([*history, restart, *breaching])
    assert fired(events) == 1
    assert admissions[5] == "sequence_jump" and admissions[6:] == ["new"] * 3


def test_a_forged_first_frame_of_a_new_camera_costs_it_no_frame() -> None:
    """Before: a forged frame 0 ahead of a new camera's first frame 50,000 anchored it, and the real frames were a
    jump: the first two were refused, the alert never fired. Now a camera's first frames all count, and the first
    ``reanchor_after`` that agree become its track; the forged one is left behind."""
    first = 50_000
    squatter = forged(0, NOW - SECOND, NOW - SECOND)
    breaching = [real(seq, HIT, first=first) for seq in range(first, first + 3)]
    state, events, admissions = feed([squatter, *breaching, forged(1, NOW, NOW)])
    assert admissions == ["new", "new", "new", "new", "duplicate"]  # captured before the track: an old frame
    assert fired(events) == 1 and events[0].alert.frame_count == 3
    assert events[0].alert.start_sequence == first and state.last_sequence == first + 2 and state.established
    assert feed(breaching, state=state)[2] == ["duplicate"] * 3


def test_forged_frames_among_a_new_camera_s_first_frames_hide_none_of_them() -> None:
    """Found by the differential fuzz on an earlier draft: a forged frame one window above a new camera, then its
    frames out of order; the real frame 0, arriving late, must still count, and later redeliveries must not."""
    guard = GuardSettings(dedup_window=64, max_sequence_jump=8, reanchor_after=4)
    rule = RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=0.0)
    first = 1_000_000
    above = forged(first + 64, NOW + 450 * 10**6, NOW + 450 * 10**6)
    late = [real(first + seq, HIT if seq in (0, 2, 3) else CLEAN, first=first) for seq in (4, 1, 2, 3, 0)]
    _, events, admissions = feed([above, *late, *late], rule, guard)
    assert admissions == ["new"] * 6 + ["duplicate"] * 5
    assert fired(events) == 1 and events[0].alert.frame_count == 3


def test_a_forged_resolution_cannot_start_a_cooldown_in_the_future() -> None:
    """A forged clean frame that ends an open alert (here the fifth clean frame in a row) claimed a capture time
    290 s ahead: before, the cooldown ran 290 s + 30 s and breaches 40 s later were ignored. The rule's clock
    never runs ahead of this host's now: the cooldown ends 30 s after the resolution."""
    rule = RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=30.0)
    second = SECOND  # one real frame a second keeps the stream short
    opened = [real(seq, HIT, spacing_ns=second) for seq in range(3)]
    clean = [real(seq, CLEAN, spacing_ns=second) for seq in range(3, 7)]
    at = clean[-1].now_ns
    resolving = forged(7, at + 290 * second, at)
    later = [real(seq, CLEAN, spacing_ns=second) for seq in range(7, 47)]
    breaching = [real(seq, HIT, spacing_ns=second) for seq in range(47, 50)]
    _, events, _ = feed([*opened, *clean, resolving, *later, *breaching], rule)
    assert [e.kind for e in events] == ["firing", "resolved", "firing"]
    assert events[2].alert.start_sequence == 47


def test_forged_frames_beyond_the_guarantee_still_cannot_confirm_a_jump_alone() -> None:
    """``reanchor_after - 1`` forged frames continuing each other far ahead stay held: they never move the
    camera's track nor count in its window."""
    history = [real(seq, CLEAN) for seq in range(5)]
    at = history[-1].now_ns
    far = [forged(10**9 + i, at + i, at) for i in range(GUARD.reanchor_after - 1)]
    state, _, admissions = feed([*history, *far])
    assert admissions[5:] == ["sequence_jump"] * (GUARD.reanchor_after - 1)
    assert state.last_sequence == 4 and len(state.window) == 5


def test_a_real_jump_is_followed_and_its_held_frames_count() -> None:
    """A camera that really skipped ahead (detector shed a burst): its first frames past the jump are held,
    and count, in sequence order, when ``reanchor_after`` of them agree."""
    history = [real(seq, CLEAN) for seq in range(5)]
    gap = 5 + 10 * GUARD.max_sequence_jump
    breaching = [real(seq, HIT) for seq in range(gap, gap + 3)]
    state, events, admissions = feed([*history, *breaching, real(4, CLEAN)])
    assert admissions[5:] == ["sequence_jump", "sequence_jump", "reanchor", "duplicate"]
    assert fired(events) == 1 and events[0].alert.start_sequence == gap
    assert state.last_sequence == gap + 2


def test_guard_bounds_must_be_consistent() -> None:
    """Forged frames on the track can move its highest sequence by ``max_sequence_jump`` each; the guarantee's
    ``reanchor_after - 1`` of them plus the camera's own step must stay within half the duplicate window."""
    assert GUARD.max_sequence_jump * GUARD.reanchor_after <= GUARD.dedup_window // 2
    with pytest.raises(ValidationError, match="max_sequence_jump"):
        GuardSettings(max_sequence_jump=10_000)
    with pytest.raises(ValidationError, match="max_sequence_jump"):
        GuardSettings(dedup_window=64, reanchor_after=3)  # the default jump is too large for such a window
    assert GuardSettings(dedup_window=64, max_sequence_jump=8, reanchor_after=4).reanchor_after == 4


def test_state_saved_by_the_previous_version_keeps_its_redeliveries_recognised() -> None:
    """A state persisted before this change (one bitmap, no verdicts, a pending jump) loads, and the frames it
    saw are still duplicates whatever their verdict; the next frames count."""
    legacy = ('{"camera_id": "cam-victim", "line_id": "line-1", "last_sequence": 9, "last_capture_ns": '
              f'{NOW + 9 * FRAME_NS}, "seen": "3ff", "jump_sequence": 900000, "jump_count": 1, "window": [], '
              '"clean_streak": 0, "alert": null, "last_resolved_ns": null, "partition": 0, "last_seen_ns": 0}')
    state = CameraState.model_validate_json(legacy)
    _, _, admissions = feed([real(seq, HIT) for seq in range(8, 12)], state=state)
    assert admissions == ["duplicate", "duplicate", "new", "new"]


# --- the property: any N forged frames, anywhere, and k real breaching frames in a row still fire ---

@st.composite
def rules_and_guards(draw: st.DrawFn) -> tuple[RuleConfig, GuardSettings]:
    """A rule whose window has room for the forged frames the guard's guarantee covers (n - k >= N)."""
    reanchor = draw(st.integers(min_value=1, max_value=4))
    window = draw(st.sampled_from([64, 1024]))
    guard = GuardSettings(dedup_window=window, reanchor_after=reanchor,
                          max_sequence_jump=max(1, window // 2 // reanchor))
    k = draw(st.integers(min_value=1, max_value=4))
    n = k + reanchor - 1 + draw(st.integers(min_value=0, max_value=2))
    rule = RuleConfig(k=k, n=n, resolve_after=draw(st.integers(min_value=1, max_value=6)),
                      cooldown_s=draw(st.sampled_from([0.0, 30.0])))
    return rule, guard


def forged_sequences(first: int, count: int, window: int) -> st.SearchStrategy[int]:
    near = st.integers(min_value=max(0, first - 3 * window), max_value=first + count + 3 * window)
    upcoming = st.integers(min_value=first, max_value=first + count + 2)  # claims the real frames' own numbers
    return st.one_of(st.integers(min_value=0, max_value=2**63 - 1), near, upcoming)


def forged_captures(first: int, seq: int) -> st.SearchStrategy[int]:
    predicted = NOW + (seq - first) * FRAME_NS  # exactly the real frame's capture time, when seq is one of them
    return st.one_of(st.integers(min_value=0, max_value=2**63 - 1),
                     st.integers(min_value=NOW - 10**12, max_value=NOW + 310 * SECOND),  # within the skew, or past it
                     st.just(max(0, predicted)))


@st.composite
def attacks(draw: st.DrawFn) -> tuple[RuleConfig, GuardSettings, list[Delivery], range]:
    """The camera's real stream (history, a run of k breaching frames, a tail) with up to N forged frames and a
    few redeliveries of real frames mixed in; returns the deliveries and the run's sequences."""
    rule, guard = draw(rules_and_guards())
    first = draw(st.sampled_from([0, 7, 1_000_000, 2**40]))
    history = draw(st.integers(min_value=0, max_value=12))
    tail = draw(st.integers(min_value=0, max_value=3))
    scores = [CLEAN] * history + [HIT] * rule.k + [CLEAN] * tail
    stream = [real(first + i, score, first=first) for i, score in enumerate(scores)]
    run = range(first + history, first + history + rule.k)
    deliveries: list[Delivery] = list(stream)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):  # the broker redelivers some real frames
        original = stream[draw(st.integers(min_value=0, max_value=len(stream) - 1))]
        after = deliveries.index(original) + 1  # a redelivery comes after its original
        deliveries.insert(draw(st.integers(min_value=after, max_value=len(deliveries))), original)
    for _ in range(draw(st.integers(min_value=0, max_value=guard.reanchor_after - 1))):
        position = draw(st.integers(min_value=0, max_value=len(deliveries)))
        seq = draw(forged_sequences(first, len(stream), guard.dedup_window))
        at = deliveries[min(position, len(deliveries) - 1)].now_ns
        score = draw(st.floats(min_value=0.0, max_value=rule.min_score, exclude_max=True))
        deliveries.insert(position, forged(seq, draw(forged_captures(first, seq)), at, score, draw(st.booleans())))
    return rule, guard, deliveries, run


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attacks())
def test_up_to_reanchor_after_minus_one_forged_frames_never_suppress_k_real_breaches_in_a_row(
        attack: tuple[RuleConfig, GuardSettings, list[Delivery], range]) -> None:
    """Every real breaching frame counts when it arrives, and the alert fires by the run's last frame."""
    rule, guard, deliveries, run = attack
    last = max(i for i, d in enumerate(deliveries) if d.real and d.result.sequence == run[-1])
    _, events, admissions = feed(deliveries[:last + 1], rule, guard)
    assert fired(events) >= 1, "the run of breaching frames fired no alert"
    first_seen: set[int] = set()
    for delivery, admission in zip(deliveries[:last + 1], admissions, strict=True):
        seq = delivery.result.sequence
        if delivery.real and seq in run and seq not in first_seen:
            first_seen.add(seq)
            assert admission == "new", f"real breaching frame {seq}: {admission}"
