"""Self-contained HTML evaluation report: inline SVG charts and PNG data-URI overlays, no CDN.

Sections: headline metrics, ROC curves (image and pixel) and the PRO curve, histograms of good vs
defective image scores with the calibrated and F1-optimal thresholds, the per-type table, and
heatmap overlays of the worst misses (defective images with the lowest scores) and the worst false
alarms (good images with the highest scores).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.common.images import load_mask, load_rgb
from linewatch.detector.evaluation.results import Evaluation

W, H, PAD, RIGHT = 380, 300, 42, 24  # chart size, left/bottom margin and right margin, pixels
GOOD, DEFECT = "#2b7bba", "#d8572a"
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}.charts,.tiles{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;font-size:12px;max-width:260px}figure img{width:256px;height:auto;display:block}
code{background:#f3f3f3;padding:1px 4px}svg text{font-size:11px}"""


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _axes(title: str, xlabel: str, ylabel: str, xlim: tuple[float, float], ylim: tuple[float, float]) -> list[str]:
    """SVG frame with ticks; the plot area is [PAD, W - RIGHT] x [20, H - PAD]."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img">',
             f'<text x="{W / 2}" y="13" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{PAD}" y="20" width="{W - PAD - RIGHT}" height="{H - PAD - 20}" fill="none" stroke="#999"/>',
             f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle">{html.escape(xlabel)}</text>',
             f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
             f'{html.escape(ylabel)}</text>']
    for frac in np.linspace(0, 1, 5):
        x, y = PAD + frac * (W - PAD - RIGHT), H - PAD - frac * (H - PAD - 20)
        xv, yv = xlim[0] + frac * (xlim[1] - xlim[0]), ylim[0] + frac * (ylim[1] - ylim[0])
        parts += [f'<text x="{x:.1f}" y="{H - PAD + 13}" text-anchor="middle">{xv:.3g}</text>',
                  f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{yv:.3g}</text>']
    return parts


def _to_px(x: np.ndarray, y: np.ndarray, xlim: tuple[float, float],
           ylim: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    px = PAD + (np.asarray(x, float) - xlim[0]) / (xlim[1] - xlim[0] or 1) * (W - PAD - RIGHT)
    py = H - PAD - (np.asarray(y, float) - ylim[0]) / (ylim[1] - ylim[0] or 1) * (H - PAD - 20)
    return px, py


def line_chart(title: str, series: list[tuple[str, np.ndarray, np.ndarray, str]], xlabel: str, ylabel: str,
               xlim: tuple[float, float] = (0.0, 1.0), diagonal: bool = True) -> str:
    """Curves as SVG polylines with a legend; ``series`` holds (label, x, y, colour)."""
    parts = _axes(title, xlabel, ylabel, xlim, (0.0, 1.0))
    if diagonal:
        px, py = _to_px(np.array(xlim), np.array(xlim), xlim, (0.0, 1.0))
        parts.append(f'<line x1="{px[0]}" y1="{py[0]}" x2="{px[1]}" y2="{py[1]}" stroke="#bbb" stroke-dasharray="4"/>')
    for k, (label, x, y, colour) in enumerate(series):
        ok = np.isfinite(x) & np.isfinite(y) & (x <= xlim[1])
        px, py = _to_px(x[ok], y[ok], xlim, (0.0, 1.0))
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
        parts += [f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>',
                  f'<text x="{W - RIGHT - 6}" y="{H - PAD - 10 - 14 * k}" text-anchor="end" fill="{colour}">'
                  f'{html.escape(label)}</text>']
    return "\n".join([*parts, "</svg>"])


def histogram_chart(good: np.ndarray, defect: np.ndarray, thresholds: list[tuple[str, float, str]],
                    bins: int = 30) -> str:
    """Overlaid histograms of good and defective image scores with vertical threshold lines."""
    everything = np.r_[good, defect, [t for _, t, _ in thresholds]]
    lo, hi = float(everything.min()), float(everything.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(s, edges)[0] for s in (good, defect)]
    top = max(1, *(int(c.max()) for c in counts))
    parts = _axes("Image scores: good vs defective", "image score", "images", (lo, hi), (0.0, float(top)))
    for (label, colour), c in zip([("good", GOOD), ("defective", DEFECT)], counts, strict=True):
        for i, n in enumerate(c):
            if n:
                px, py = _to_px(edges[i:i + 2], np.array([0.0, n]), (lo, hi), (0.0, float(top)))
                parts.append(f'<rect x="{px[0]:.1f}" y="{py[1]:.1f}" width="{px[1] - px[0]:.1f}" '
                             f'height="{py[0] - py[1]:.1f}" fill="{colour}" fill-opacity="0.45"/>')
        parts.append(f'<text x="{W - RIGHT - 6}" y="{34 if colour == GOOD else 48}" text-anchor="end" fill="{colour}">'
                     f'{label} ({int(c.sum())})</text>')
    for k, (label, value, dash) in enumerate(thresholds):
        px, _ = _to_px(np.array([value]), np.array([0.0]), (lo, hi), (0.0, 1.0))
        parts += [f'<line x1="{px[0]:.1f}" y1="20" x2="{px[0]:.1f}" y2="{H - PAD}" stroke="#000" '
                  f'stroke-dasharray="{dash}"/>',
                  f'<text x="{W - RIGHT - 6}" y="{64 + 14 * k}" text-anchor="end">'
                  f'{html.escape(label)} = {value:.4g}</text>']
    return "\n".join([*parts, "</svg>"])


def overlay_png(result: Evaluation, index: int, max_side: int = 256) -> str:
    """Image with its heatmap (red = at or above the image threshold) and the mask outline, as a data URI."""
    record, shape = result.records[index], result.shapes[index]
    heat = np.asarray(result.to_image(result.maps[index], shape), np.float32)
    scale = np.clip(heat / max(result.image_threshold, 1e-12), 0, 1)
    colour = cv2.applyColorMap((scale * 255).astype(np.uint8), cv2.COLORMAP_JET)
    image = cv2.cvtColor(load_rgb(record.path), cv2.COLOR_RGB2BGR)
    blend = cv2.addWeighted(image, 0.55, colour, 0.45, 0)
    contours, _ = cv2.findContours(load_mask(record, shape).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(blend, contours, -1, (255, 255, 255), 1)
    factor = max_side / max(shape)
    if factor < 1:
        blend = cv2.resize(blend, (max(1, round(shape[1] * factor)), max(1, round(shape[0] * factor))),
                           interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", blend)
    if not ok:
        raise ValueError(f"could not encode the overlay of {record.path}")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _tiles(result: Evaluation, indices: np.ndarray) -> str:
    if indices.size == 0:
        return "<p>none</p>"
    figures = []
    for i in indices:
        r = result.records[int(i)]
        figures.append(f'<figure><img alt="{html.escape(r.path.name)}" src="{overlay_png(result, int(i))}">'
                       f"<figcaption>{html.escape(r.defect_type)}/{html.escape(r.path.name)}: score "
                       f"{result.image_scores[i]:.4g}</figcaption></figure>")
    return '<div class="tiles">' + "".join(figures) + "</div>"


def render_html(result: Evaluation, worst: int = 6) -> str:
    """The whole report page as one HTML string."""
    m = result.metrics
    head = ["image_auroc", "pixel_auroc", "aupro", "image_f1", "image_f1_optimal", "pixel_f1"]
    rows = "".join(f"<tr><td>{k}</td><td>{_fmt(m.get(k))}</td></tr>" for k in head)
    types = "".join(f"<tr><td>{html.escape(t)}</td><td>{v['count']}</td><td>{_fmt(v['image_auroc'])}</td>"
                    f"<td>{_fmt(v['pixel_auroc'])}</td><td>{_fmt(v['aupro'])}</td><td>{v['regions']}</td></tr>"
                    for t, v in m["per_type"].items())
    roc = line_chart("ROC curves", [(f"image (AUROC {_fmt(m['image_auroc'])})", *result.image_roc, DEFECT),
                                    (f"pixel (AUROC {_fmt(m['pixel_auroc'])})", *result.pixel_roc, GOOD)],
                     "false positive rate", "true positive rate")
    pro = line_chart(f"PRO curve to FPR 0.3 (AUPRO {_fmt(m['aupro'])})", [("PRO", *result.pro_curve, GOOD)],
                     "false positive rate (defect-free pixels)", "per-region overlap", (0.0, 0.3), diagonal=False)
    thresholds = [("calibrated threshold", result.image_threshold, "0")]
    if m.get("image_f1_optimal_threshold") is not None:
        thresholds.append(("F1-optimal threshold", float(m["image_f1_optimal_threshold"]), "5 3"))
    hist = histogram_chart(result.image_scores[~result.labels], result.image_scores[result.labels], thresholds)
    defect_idx, good_idx = np.flatnonzero(result.labels), np.flatnonzero(~result.labels)
    misses = defect_idx[np.argsort(result.image_scores[defect_idx], kind="stable")[:worst]]
    alarms = good_idx[np.argsort(-result.image_scores[good_idx], kind="stable")[:worst]]
    settings = {k: v for k, v in m["settings"].items() if k != "model"}
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>linewatch evaluation {html.escape(str(m['model_version']))}</title><style>{STYLE}</style></head><body>
<h1>Evaluation of model {html.escape(str(m['model_version']))}</h1>
<p>{m['counts']['images']} test images ({m['counts']['good']} good, {m['counts']['defective']} defective,
{m['counts']['defective_empty_mask']} with an empty mask) from <code>{html.escape(m['settings']['data_dir'])}</code>.
Pixel metrics at image resolution; AUPRO to FPR 0.3 over 8-connected regions.</p>
<table><tr><th>metric</th><th>value</th></tr>{rows}</table>
{_operating_points(m)}
<div class="charts">{roc}{pro}{hist}</div>
<h2>Per defect type (each against the good images)</h2>
<table><tr><th>type</th><th>images</th><th>image AUROC</th><th>pixel AUROC</th><th>AUPRO</th><th>regions</th></tr>
{types}</table>
<h2>Worst misses (defective, lowest scores)</h2>{_tiles(result, misses)}
<h2>Worst false alarms (good, highest scores)</h2>{_tiles(result, alarms)}
<p>Overlay colour: map / image threshold (red = at or above it); white outline = ground truth.</p>
{_recipe(m)}
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>
</body></html>
"""


def _operating_points(m: dict[str, Any]) -> str:
    """Recall where plants run, and how firmly the calibrated threshold is known."""
    recall = m.get("image_recall_at_fpr") or {}
    cal = m.get("calibration") or {}
    interval = cal.get("threshold_interval_90")
    spread = (f"90% bootstrap interval of the calibrated threshold over its {_fmt(cal.get('n_good'))} held-out good "
              f"images: {_fmt(interval[0])} .. {_fmt(interval[1])} (a wide interval: recalibrate on more good frames "
              "with <code>linewatch calibrate</code>)" if interval else "no bootstrap interval in this checkpoint")
    cells = m.get("map_cells") or ["?", "?"]
    return (f"<p>Recall at 1% false alarms {_fmt(recall.get('0.01'))}, at 0.1% {_fmt(recall.get('0.001'))}; "
            f"the calibrated threshold raised false alarms on {_fmt(m.get('calibrated_false_alarm_rate'))} of the "
            f"good test images (target {_fmt(cal.get('target_false_alarm_rate'))}). {spread}. "
            f"Anomaly map: {cells[0]}x{cells[1]} cells.</p>")


def _recipe(m: dict[str, Any]) -> str:
    """The recipe that trained the model and, for ``--recipe auto``, every candidate's selection figures."""
    recipe, selection = m.get("recipe"), m.get("selection")
    if recipe is None:
        return ""
    if not selection:
        return f"<h2>Recipe</h2><p>Trained with the recipe <b>{html.escape(str(recipe))}</b>.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(name)}{' (chosen)' if name == selection['chosen'] else ''}</td>"
        f"<td>{_fmt(f['score'])}</td><td>{_fmt(f['image_auroc'])}</td><td>{_fmt(f['pixel_auroc'])}</td>"
        f"<td>{html.escape(', '.join(f'{k} {_fmt(v)}' for k, v in f['image_auroc_by_kind'].items()))}</td>"
        f"<td>{_fmt(f.get('image_auroc_kinds_median'))}</td><td>{_fmt(f.get('aupro'))}</td>"
        f"<td>{_fmt(f['train_seconds'])}</td></tr>" for name, f in selection["candidates"].items())
    return (f"<h2>Recipe: {html.escape(str(recipe))}, chosen automatically</h2><p>On {selection['images']} images "
            f"({selection['defects']} with defects, {html.escape(str(selection['on']))}). Rule: "
            f"{html.escape(selection['rule'])}.</p><table><tr><th>recipe</th><th>selection score</th>"
            f"<th>image AUROC</th><th>pixel AUROC</th><th>image AUROC by defect kind</th><th>median over kinds</th>"
            f"<th>AUPRO</th><th>train s</th></tr>"
            f"{rows}</table>")


def write_report(result: Evaluation, path: str | Path, worst: int = 6) -> Path:
    """Write :func:`render_html` to ``path``."""
    out = Path(path)
    out.write_text(render_html(result, worst), encoding="utf-8")
    return out
