"""The demo's summary: numbers from the collected topics, printed, and written as JSON and HTML."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.common.heatmap_codec import read_overlay
from linewatch.deploy.demo_collect import Collected
from linewatch.detector.events import FrameResult

# Examples picked for the HTML page: (kind, how many).
EXAMPLE_KINDS = (("caught defect", 3), ("missed defect", 2), ("false alarm", 2), ("good part", 1))


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def dedup(results: list[FrameResult]) -> list[FrameResult]:
    """One result per (camera, sequence): the first one read."""
    seen: dict[tuple[str, int], FrameResult] = {}
    for result in results:
        seen.setdefault((result.camera_id, result.sequence), result)
    return list(seen.values())


def kind_of(result: FrameResult) -> str | None:
    """caught defect / missed defect / false alarm / good part, or None without ground truth."""
    if result.label not in ("good", "defect"):
        return None
    if result.label == "defect":
        return "caught defect" if result.anomalous else "missed defect"
    return "false alarm" if result.anomalous else "good part"


def accuracy(results: list[FrameResult]) -> dict[str, Any]:
    """Per-frame verdict against the replay's ground truth, overall and per defect type."""
    kinds = Counter(kind_of(r) for r in results)
    tp, fn, fp, tn = (kinds[k] for k in ("caught defect", "missed defect", "false alarm", "good part"))
    by_type: dict[str, list[int]] = {}
    for r in results:
        if r.label == "defect":
            caught = by_type.setdefault(r.defect_type or "unknown", [0, 0])
            caught[0] += int(r.anomalous)
            caught[1] += 1
    labelled = [r for r in results if r.label in ("good", "defect")]
    return {
        "operating_point_1pct": operating_point(labelled, 0.01),
        "labelled_frames": tp + fn + fp + tn,
        # Threshold-free: how well the line's scores rank defective above good frames.
        "image_auroc": _round(_auroc(labelled)), "true_positives": tp, "false_negatives": fn,
        "false_positives": fp, "true_negatives": tn, "recall": _rate(tp, tp + fn),
        "false_alarm_rate": _rate(fp, fp + tn), "precision": _rate(tp, tp + fp),
        "recall_by_defect_type": {t: {"caught": c, "of": n, "recall": _rate(c, n)}
                                  for t, (c, n) in sorted(by_type.items())},
    }


def operating_point(labelled: list[FrameResult], rate: float) -> dict[str, Any] | None:
    """Recall per defect type and false alarms at the threshold that passes ``rate`` of the line's good frames.

    The plant's view: set the threshold where the good parts on this line raise ``rate`` false alarms
    (measured afterwards from the replay's truth, so it is an upper bound of what calibration can reach).
    """
    good = np.array([r.image_score for r in labelled if r.label == "good"], dtype=float)
    if good.size == 0 or not any(r.label == "defect" for r in labelled):
        return None
    threshold = float(np.quantile(good, 1.0 - rate, method="higher"))
    by_type: dict[str, list[int]] = {}
    for r in labelled:
        if r.label == "defect":
            counts = by_type.setdefault(r.defect_type or "unknown", [0, 0])
            counts[0] += int(r.image_score > threshold)
            counts[1] += 1
    caught = sum(c for c, _ in by_type.values())
    return {"false_alarm_rate": _rate(int((good > threshold).sum()), good.size),
            "recall": _rate(caught, sum(n for _, n in by_type.values())),
            "recall_by_defect_type": {t: {"caught": c, "of": n, "recall": _rate(c, n)}
                                      for t, (c, n) in sorted(by_type.items())}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _auroc(labelled: list[FrameResult]) -> float | None:
    from linewatch.detector.evaluation.metrics import auroc

    labels = [r.label == "defect" for r in labelled]
    if all(labels) or not any(labels):
        return None
    return float(auroc([r.image_score for r in labelled], labels))


def alert_summary(events: list[dict[str, Any]], results: list[FrameResult]) -> dict[str, Any]:
    """Alerts fired and resolved; per alert, whether its worst frame was truly a defect."""
    firing = {e["alert"]["alert_id"]: e["alert"] for e in events if e.get("kind") == "firing"}
    resolved = {e["alert"]["alert_id"] for e in events if e.get("kind") == "resolved"}
    truth = {(r.camera_id, r.sequence): r.label for r in results}
    worst = [truth.get((a["camera_id"], a["worst_sequence"])) for a in firing.values()]
    true_alerts = sum(label == "defect" for label in worst)
    return {
        "fired": len(firing), "resolved": len(resolved & set(firing)), "open_at_end": len(set(firing) - resolved),
        "by_severity": dict(Counter(a["severity"] for a in firing.values())),
        "worst_frame_truly_defective": true_alerts,
        "alert_precision": _rate(true_alerts, sum(label in ("good", "defect") for label in worst)),
    }


def summarise(data: Collected, *, sent: int, captured: int, dropped: int, started_ns: int, stopped_ns: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    """Everything the demo reports, as a JSON-able dict."""
    unique = dedup(data.results)
    latencies = np.array([r.latency.end_to_end_ms for r in unique], dtype=float)
    processed = np.array(sorted(r.processed_ns for r in unique), dtype=float)
    active_s = (processed[-1] - processed[0]) / 1e9 if len(processed) > 1 else 0.0
    run_s = max((stopped_ns - started_ns) / 1e9, 1e-9)
    summary: dict[str, Any] = dict(extra)
    summary["frames"] = {
        "captured": captured, "sent": sent, "dropped_at_camera": dropped, "results": len(data.results),
        "unique_results": len(unique), "duplicates": len(data.results) - len(unique),
        "dead_letters": len(data.dead_letters), "unreadable_outputs": data.unreadable,
        "missing": max(0, sent - len(unique) - len(data.dead_letters)),
        "dead_letter_reasons": dict(Counter(d.get("dl-error-class", "?") for d in data.dead_letters)),
    }
    summary["alerts"] = alert_summary(data.alert_events, unique)
    summary["accuracy"] = accuracy(unique)
    summary["throughput"] = {
        "offered_frames_per_s": round(sent / run_s, 2),
        "processed_frames_per_s": round((len(unique) - 1) / active_s, 2) if active_s > 0 else None,
    }
    summary["latency_ms"] = {
        "p50": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "p99": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "max": round(float(latencies.max()), 1) if len(latencies) else None,
    }
    return summary


def pick_examples(results: list[FrameResult], redis_client: Any) -> list[dict[str, Any]]:
    """A few heatmap overlays from Redis: the clearest catches, misses, false alarms and a good part."""
    picked: list[dict[str, Any]] = []
    for kind, count in EXAMPLE_KINDS:
        # Catches and false alarms by highest score, misses and good parts by score closest to the threshold.
        pool = sorted((r for r in dedup(results) if kind_of(r) == kind and r.heatmap_key),
                      key=lambda r: -r.normalised_score if kind in ("caught defect", "false alarm")
                      else abs(r.normalised_score - 0.5))
        for result in pool:
            if sum(p["kind"] == kind for p in picked) >= count:
                break
            if result.source_id and any(p["source_id"] == result.source_id for p in picked):
                continue  # cameras replay the same images: show different parts
            try:
                # drawn from the stored map and frame (the pool holds only results with a key)
                png = read_overlay(redis_client, result.heatmap_key) if result.heatmap_key else None
            except Exception:  # an example image is a nicety; the summary does not depend on it
                png = None
            if png:
                picked.append({"kind": kind, "camera_id": result.camera_id, "sequence": result.sequence,
                               "source_id": result.source_id, "defect_type": result.defect_type,
                               "normalised_score": round(result.normalised_score, 3), "png": bytes(png)})
    return picked


def write_outputs(out_dir: Path, summary: dict[str, Any], examples: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``summary.json`` and a self-contained ``summary.html``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "heatmap_examples": [{k: v for k, v in e.items() if k != "png"} for e in examples]}
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    html_path = out_dir / "summary.html"
    html_path.write_text(render_html(summary, examples), encoding="utf-8")
    return json_path, html_path


def _table(title: str, values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in values.items())
    return f"<section><h2>{html.escape(title)}</h2><table>{rows}</table></section>"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def render_html(summary: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    """The summary page: tables of every section and the example heatmaps, images inlined."""
    order = ["accuracy", "frames", "alerts", "throughput", "latency_ms", "run", "model"]
    names = order + [n for n in summary if n not in order]
    sections = [_table(name.replace("_", " "), summary[name]) for name in names
                if isinstance(summary.get(name), dict)]
    figures = "".join(
        f"<figure><img alt='heatmap' src='data:image/png;base64,{base64.b64encode(e['png']).decode()}'>"
        f"<figcaption><b>{html.escape(e['kind'])}</b><br>{html.escape(e['camera_id'])} #{e['sequence']}"
        f"<br>{html.escape(str(e['source_id'] or ''))}<br>score {e['normalised_score']}</figcaption></figure>"
        for e in examples)
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f4f4f4}"
             "section{display:inline-block;vertical-align:top;margin:0 2em 1em 0}"
             "figure{display:inline-block;margin:0 1em 1em 0;text-align:center}img{max-width:256px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>linewatch demo summary</title>"
            f"<style>{style}</style></head><body><h1>linewatch demo summary</h1>{''.join(sections)}"
            f"<h2>Example heatmaps (from the Redis cache)</h2><div>{figures or 'none cached'}</div></body></html>\n")


def format_text(summary: dict[str, Any]) -> str:
    """The summary as the terminal shows it."""
    f, a, acc = summary["frames"], summary["alerts"], summary["accuracy"]
    t, lat = summary["throughput"], summary["latency_ms"]
    lines = [
        "=== linewatch demo summary ===",
        f"frames: captured {f['captured']}, sent {f['sent']}, results {f['unique_results']} "
        f"(+{f['duplicates']} duplicates), dead letters {f['dead_letters']}, missing {f['missing']}",
        f"alerts: fired {a['fired']}, resolved {a['resolved']}, open at end {a['open_at_end']}, "
        f"worst frame truly defective in {a['worst_frame_truly_defective']} of {a['fired']}",
        f"per frame vs ground truth ({acc['labelled_frames']} labelled): recall {_fmt(acc['recall'])}, "
        f"false-alarm rate {_fmt(acc['false_alarm_rate'])}, precision {_fmt(acc['precision'])} "
        f"(at the model's calibrated threshold); image AUROC of the line's scores {_fmt(acc.get('image_auroc'))}",
        "recall by defect type: " + (", ".join(f"{k} {v['caught']}/{v['of']}"
                                               for k, v in acc["recall_by_defect_type"].items()) or "-"),
        _operating_point_line(acc.get("operating_point_1pct")),
        f"throughput: offered {t['offered_frames_per_s']} frames/s, processed {_fmt(t['processed_frames_per_s'])} "
        f"frames/s; end-to-end latency p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms",
    ]
    return "\n".join(lines)


def _operating_point_line(point: dict[str, Any] | None) -> str:
    if point is None:
        return "at 1% false alarms on the line's good frames: - (needs good and defective frames)"
    types = ", ".join(f"{k} {v['caught']}/{v['of']}" for k, v in point["recall_by_defect_type"].items())
    return (f"at 1% false alarms on the line's good frames (false-alarm rate {_fmt(point['false_alarm_rate'])}): "
            f"recall {_fmt(point['recall'])}; by defect type: {types or '-'}")
