"""Registry pieces that need no services: --since parsing, audit writes and pruning on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from linewatch.detector.events import FrameResult, Latency
from linewatch.detector.registry.audit import AuditWriter, query_audit
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.times import iso, parse_since

pytestmark = pytest.mark.unit

NOW = 1_800_000_000 * 10**9


@pytest.mark.parametrize(("text", "back_s"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600)])
def test_since_durations_count_back_from_now(text: str, back_s: int) -> None:
    assert parse_since(text, now_ns=NOW) == NOW - back_s * 10**9


def test_since_accepts_iso_times_and_refuses_anything_else() -> None:
    assert parse_since(iso(NOW)) == NOW
    assert parse_since("2027-01-15T08:00:00") == parse_since("2027-01-15T08:00:00+00:00")
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("yesterday")


def _result(sequence: int, capture_ns: int) -> FrameResult:
    return FrameResult(camera_id="cam-0", line_id="l", sequence=sequence, capture_ns=capture_ns, image_score=1.0,
                       normalised_score=0.4, anomalous=False, threshold=2.0, model_version="abcdef012345",
                       heatmap_key=None, latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0, end_to_end_ms=0))


def test_duplicates_are_ignored_and_retention_prunes_by_capture_time(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    writer = AuditWriter(db)
    day = 86400 * 10**9
    results = [_result(0, NOW - 10 * day), _result(1, NOW - 2 * day), _result(2, NOW)]
    assert writer.write_results(results) == 3
    assert writer.write_results(results[1:]) == 0  # redelivered after a restart
    assert writer.prune(retention_s=7 * 86400, now_ns=NOW) == 1
    assert [r["sequence"] for r in query_audit(db, camera="cam-0")] == [1, 2]
    assert query_audit(db)[0]["product"] is None  # an unregistered version is audited all the same
