"""The demo summary's arithmetic: dedup, missing frames, recall, false-alarm rate, alerts, latency, HTML."""

from __future__ import annotations

from pathlib import Path

from linewatch.deploy.demo_collect import Collected
from linewatch.deploy.demo_report import format_text, summarise, write_outputs
from linewatch.detector.events import FrameResult, Latency


def _result(seq: int, label: str, anomalous: bool, camera: str = "cam-1", latency_ms: float = 100.0,
            defect_type: str | None = None) -> FrameResult:
    return FrameResult(camera_id=camera, line_id="line-1", sequence=seq, capture_ns=seq, image_score=1.0,
                       normalised_score=0.9 if anomalous else 0.1, anomalous=anomalous, threshold=0.5,
                       model_version="m", heatmap_key=None, label=label,
                       defect_type=defect_type or ("good" if label == "good" else "crack"),
                       latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0, end_to_end_ms=latency_ms),
                       processed_ns=1_000_000_000 + seq * 100_000_000)


def _alert(kind: str, alert_id: str, worst: int) -> dict:
    return {"kind": kind, "alert": {"alert_id": alert_id, "camera_id": "cam-1", "worst_sequence": worst,
                                    "severity": "major"}}


def test_summary_counts_each_frame_once_and_scores_it_against_the_truth(tmp_path: Path) -> None:
    # 4 defects (3 caught), 6 good parts (2 false alarms); frame 0 delivered twice; 1 dead letter.
    results = [_result(i, "defect", i != 3, latency_ms=10.0 * (i + 1)) for i in range(4)]
    results += [_result(i, "good", i in (4, 5), latency_ms=10.0 * (i + 1)) for i in range(4, 10)]
    results.append(_result(0, "defect", True, latency_ms=999.0))
    alerts = [_alert("firing", "a1", 1), _alert("resolved", "a1", 1), _alert("firing", "a2", 5)]
    data = Collected(results=results, alert_events=alerts, dead_letters=[{"dl-error-class": "undecodable"}])
    summary = summarise(data, sent=12, captured=12, dropped=0, started_ns=0, stopped_ns=10_000_000_000,
                        extra={"run": {"cameras": 1}})
    frames = summary["frames"]
    assert (frames["results"], frames["unique_results"], frames["duplicates"]) == (11, 10, 1)
    assert frames["dead_letters"] == 1 and frames["missing"] == 1  # 12 sent = 10 results + 1 dead letter + 1 lost
    acc = summary["accuracy"]
    counts = [acc[k] for k in ("true_positives", "false_negatives", "false_positives", "true_negatives")]
    assert counts == [3, 1, 2, 4]
    assert acc["recall"] == 0.75 and acc["false_alarm_rate"] == round(2 / 6, 4) and acc["precision"] == 0.6
    assert acc["recall_by_defect_type"] == {"crack": {"caught": 3, "of": 4, "recall": 0.75}}
    alert = summary["alerts"]
    assert (alert["fired"], alert["resolved"], alert["open_at_end"]) == (2, 1, 1)
    assert alert["worst_frame_truly_defective"] == 1 and alert["alert_precision"] == 0.5  # frame 5 is good
    assert summary["latency_ms"]["p50"] == 55.0 and summary["latency_ms"]["max"] == 100.0  # the first copy counts
    assert summary["throughput"]["offered_frames_per_s"] == 1.2
    assert summary["throughput"]["processed_frames_per_s"] == 10.0  # 10 frames, 0.9 s from first to last
    text = format_text(summary)
    assert "recall 0.75" in text and "false-alarm rate 0.3333" in text and "missing 1" in text
    json_path, html_path = write_outputs(tmp_path, summary, [])
    assert json_path.is_file() and "false_alarm_rate" in html_path.read_text()


def test_summary_without_ground_truth_or_results_reports_none_not_a_crash() -> None:
    summary = summarise(Collected(), sent=0, captured=0, dropped=0, started_ns=0, stopped_ns=1, extra={})
    assert summary["accuracy"]["recall"] is None and summary["accuracy"]["false_alarm_rate"] is None
    assert summary["latency_ms"]["p50"] is None and summary["throughput"]["processed_frames_per_s"] is None
    assert "recall -" in format_text(summary)


def _scored(seq: int, label: str, score: float, defect_type: str) -> FrameResult:
    return _result(seq, label, False, defect_type=defect_type).model_copy(update={"image_score": score})


def test_operating_point_sets_the_threshold_on_the_lines_good_frames() -> None:
    # 200 good frames scoring 0..199: at 1% false alarms the threshold is 198 (2 goods above it would be 1%).
    results = [_scored(i, "good", float(i), "good") for i in range(200)]
    results += [_scored(1000 + i, "defect", s, t) for i, (s, t) in
                enumerate([(250.0, "crack"), (198.0, "crack"), (199.5, "blob"), (10.0, "blob")])]
    summary = summarise(Collected(results=results), sent=204, captured=204, dropped=0, started_ns=0,
                        stopped_ns=1_000_000_000, extra={})
    point = summary["accuracy"]["operating_point_1pct"]
    assert point["false_alarm_rate"] == 0.005  # only 199 is above 198
    assert point["recall_by_defect_type"] == {"blob": {"caught": 1, "of": 2, "recall": 0.5},
                                              "crack": {"caught": 1, "of": 2, "recall": 0.5}}
    assert "at 1% false alarms" in format_text(summary) and "blob 1/2" in format_text(summary)
