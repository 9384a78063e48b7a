"""``report.html`` of a shadow replay: one self-contained page (images inlined as data URIs)."""

from __future__ import annotations

import html
from typing import Any

CANDIDATE, ACTIVE = "#d8572a", "#2b7bba"
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}figure{display:inline-block;margin:4px;font-size:12px}
figure img{width:200px;height:auto;display:block}svg text{font-size:11px}.muted{color:#777}"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _histogram(report: dict[str, Any], width: int = 520, height: int = 220) -> str:
    """Normalised-score histograms of both models, side by side per bin; 0.5 is each model's threshold."""
    dist = report["distributions"]
    counts = [dist["candidate"]["normalised_histogram"], dist["active"]["normalised_histogram"]]
    bins, top = len(counts[0]), max(1, *(max(c, default=0) for c in counts))
    pad, plot_w, plot_h = 30, width - 40, height - 50
    bar = plot_w / bins / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{width / 2}" y="13" text-anchor="middle" font-weight="bold">normalised score '
             f'(0.5 = each model\'s own threshold)</text>']
    for k, (series, colour) in enumerate(zip(counts, (CANDIDATE, ACTIVE), strict=True)):
        for i, n in enumerate(series):
            h = plot_h * n / top
            x = pad + i * 2 * bar + k * bar
            parts.append(f'<rect x="{x:.1f}" y="{20 + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{n}</title></rect>')
    mid = pad + plot_w / 2
    parts += [f'<line x1="{mid}" y1="20" x2="{mid}" y2="{20 + plot_h}" stroke="#000" stroke-dasharray="4"/>',
              f'<text x="{pad}" y="{height - 18}">0</text><text x="{pad + plot_w}" y="{height - 18}" '
              f'text-anchor="end">1</text>',
              f'<text x="{pad}" y="{height - 4}" fill="{CANDIDATE}">candidate</text>',
              f'<text x="{pad + 90}" y="{height - 4}" fill="{ACTIVE}">active</text>', "</svg>"]
    return "\n".join(parts)


def _rates_table(report: dict[str, Any]) -> str:
    head = ("<tr><th>camera</th><th>frames</th><th>alert rate, candidate</th><th>alert rate, active</th>"
            "<th>agreement</th><th>only candidate</th><th>only active</th></tr>")
    rows = [("all cameras", report["overall"]), *report["per_camera"].items()]
    body = "".join(f"<tr><td>{_e(name)}</td><td>{a['frames']}</td><td>{_pct(a['alert_rate']['candidate'])}</td>"
                   f"<td>{_pct(a['alert_rate']['active'])}</td><td>{_pct(a['agreement'])}</td>"
                   f"<td>{a['only_candidate']}</td><td>{a['only_active']}</td></tr>" for name, a in rows)
    return f"<table>{head}{body}</table>"


def _disagreements(report: dict[str, Any], images: dict[str, str]) -> str:
    if not report["top_disagreements"]:
        return "<p class=muted>No frames were scored.</p>"
    parts = []
    for d in report["top_disagreements"]:
        caption = (f"{_e(d['camera_id'])} #{d['sequence']} · {_e(d['capture_time'])}<br>candidate "
                   f"{d['candidate']['normalised']:.3f} ({'alert' if d['candidate']['alert'] else 'ok'}) · active "
                   f"{d['active']['normalised']:.3f} ({'alert' if d['active']['alert'] else 'ok'})")
        figures = "".join(f'<figure><img alt="{role} heatmap" src="data:image/png;base64,'
                          f'{images.get(d["heatmaps"][role], "")}">{role}</figure>' for role in ("candidate", "active"))
        parts.append(f"<div><p>{caption}</p>{figures}</div>")
    return "".join(parts)


def render_html(report: dict[str, Any], images: dict[str, str]) -> str:
    """The page; ``images`` maps the report's heatmap paths to base64 PNG."""
    versions = report["versions"]
    overall = report["overall"]
    skipped = ", ".join(f"{k}: {v}" for k, v in report["frames_skipped"].items()) or "none"
    # a live run scores frames as they arrive; a replay re-reads a window of the past: the page says which
    kind = "Live shadow" if report["window"].get("live") else "Shadow replay"
    how = "Scored live" if report["window"].get("live") else "Replayed"
    status = "" if report["complete"] else (f"<p><b>Incomplete:</b> partitions {report['stalled_partitions']} "
                                            "stopped making progress.</p>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{kind} {_e(versions['candidate']['version'])} vs {_e(versions['active']['version'])}</title>
<style>{STYLE}</style></head><body>
<h1>{kind} of product {_e(report['product'])}</h1>
<p>Candidate <code>{_e(versions['candidate']['version'])}</code> (image threshold
{versions['candidate']['image_threshold']:.5g}) against the active <code>{_e(versions['active']['version'])}</code>
(image threshold {versions['active']['image_threshold']:.5g}) on {report['frames_scored']} frames of
<code>{_e(report['window']['topic'])}</code> captured from {_e(report['window']['since'])} to
{_e(report['window']['until'])}. Frames skipped: {_e(skipped)}.</p>{status}
<p>Agreement {_pct(overall['agreement'])}: both alert {overall['both_alert']}, only the candidate
{overall['only_candidate']}, only the active {overall['only_active']}, neither {overall['neither']}.
Correlation of normalised scores: {overall['normalised_score_correlation'] if overall['normalised_score_correlation']
is not None else 'n/a'}.</p>
<h2>Alert rate per camera</h2>{_rates_table(report)}
<h2>Score distributions</h2>{_histogram(report)}
<h2>Where they disagree most</h2>{_disagreements(report, images)}
<p class=muted>{how} at {report['frames_per_second']} frames/s in {report['seconds']} s by a separate consumer
group that commits nothing.</p></body></html>
"""
