"""Measure what the health thresholds are chosen from, on folders of good images.

``python -m linewatch.health.measure pixels ROOT...``: per data set, the pixel statistics the
checks use (JPEG-encoded and decoded the health way) and the rolling ratios to a learned baseline.

``python -m linewatch.health.measure scores ROOT --model CKPT --out scores.json``: the model's
raw scores of the good images (file order) and of blurred, darkened and brightened copies, plus the
calibration reference; then ``drift SCORES.json`` prints the drift statistic's range for each replay.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.common.images import list_test, list_train_good
from linewatch.health.checks import drift_statistic
from linewatch.health.settings import CheckConfig, ScoreReference
from linewatch.health.stats import FrameStats, decode_grey, frame_stats, thumb_difference
from linewatch.ingest.wire import encode_frame


def _load(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _stats(root: Path) -> list[FrameStats]:
    frames = [encode_frame(_load(r.path), camera_id="c", line_id="l", sequence=0, capture_ns=0)
              for r in list_train_good(root)]
    return [frame_stats(decode_grey(f.value, f.meta)) for f in frames]


def _rolling_ratio(values: np.ndarray, config: CheckConfig) -> np.ndarray:
    base = float(np.median(values[:config.baseline_frames]))
    start = config.baseline_frames + config.window
    return np.array([np.median(values[i - config.window:i]) / base for i in range(start, len(values) + 1)])


def pixels(roots: list[Path]) -> None:
    """Print the pixel statistics of each data set's good images."""
    config, rng = CheckConfig(), np.random.default_rng(0)
    for root in roots:
        stats = _stats(root)
        diffs = [thumb_difference(a.thumb, b.thumb) for a, b in itertools.pairwise(stats)]
        print(f"{root}: {len(stats)} frames; mean grey {min(s.mean for s in stats):.0f}-"
              f"{max(s.mean for s in stats):.0f}, dark share max {max(s.dark_fraction for s in stats):.3f}, "
              f"saturated share max {max(s.saturated_fraction for s in stats):.3f}, consecutive diff min "
              f"{min(diffs):.2f}")
        orders = [("file order", [np.arange(len(stats))]),
                  ("20 shuffles", [rng.permutation(len(stats)) for _ in range(20)])]
        for order, indices in orders:
            mean = np.concatenate([_rolling_ratio(np.array([stats[i].mean for i in index]), config)
                                   for index in indices])
            focus = np.concatenate([_rolling_ratio(np.array([stats[i].focus for i in index]), config)
                                    for index in indices])
            print(f"  {order}: brightness/baseline {mean.min():.2f}-{mean.max():.2f}, "
                  f"focus/baseline {focus.min():.2f}-{focus.max():.2f}")


def scores(root: Path, model_path: Path, out: Path) -> None:
    """Score good images and drifted copies with a checkpoint; write them with its calibration."""
    from linewatch.detector.model.inference import AnomalyModel

    model = AnomalyModel.load(model_path, device="auto")
    good = [_load(r.path) for r in list_train_good(root)]
    faulty = good[:200]
    variants = {"train_good": good, "test_good": [_load(r.path) for r in list_test(root) if r.label == "good"],
                "blur1": [cv2.GaussianBlur(im, (0, 0), 1) for im in faulty],
                "blur2": [cv2.GaussianBlur(im, (0, 0), 2) for im in faulty],
                "dark50": [(im * 0.5).astype(np.uint8) for im in faulty],
                "bright40": [np.clip(im.astype(np.int16) + 40, 0, 255).astype(np.uint8) for im in faulty]}
    meta = model.metadata
    calibration = meta.calibration
    result: dict[str, Any] = {
        "source": f"STFPM {meta.backbone} {meta.image_size} px, {meta.training.get('epochs_run', '?')} epochs, "
                  f"trained on {'/'.join(root.parts[-2:])}/train/good ({meta.training.get('n_val', '?')} held out "
                  f"for calibration); scores of the images as listed (file order); faults applied to the first "
                  f"{len(faulty)} train/good images; written by `python -m linewatch.health.measure scores`",
        "model_version": model.model_version,
        "calibration": {"p50": calibration.score_stats["p50"], "log_scale": calibration.log_scale,
                        "image_threshold": calibration.image_threshold, "n": calibration.score_stats.get("n")}}
    for name, images in variants.items():
        result[name] = [float(s) for i in range(0, len(images), 16)
                        for s in model.predict(images[i:i + 16]).image_scores]
    out.write_text(json.dumps(result))


HEALTHY = ("train_good", "test_good")
FAULTS = ("blur1", "blur2", "dark50", "bright40")


def replays(data: dict[str, Any]) -> dict[str, list[float]]:
    """The score lists of a scores file, plus every good image of the set (train/good then test/good)."""
    found = {name: data[name] for name in (*HEALTHY, *FAULTS) if name in data}
    found["all_good"] = [*data["train_good"], *data.get("test_good", [])]
    return found


def drift(path: Path, window: int, rise: float, fall: float) -> None:
    """Print the range of the drift statistic over every window of each replay (file order and 20 shuffles)
    and the share of windows at or beyond the thresholds (``rise`` up, ``fall`` down)."""
    data = json.loads(path.read_text())
    reference = ScoreReference(p50=data["calibration"]["p50"], log_scale=data["calibration"]["log_scale"])
    rng = np.random.default_rng(0)
    for name, values in replays(data).items():
        if len(values) < window:
            print(f"{name}: {len(values)} scores, fewer than a window of {window}")
            continue
        orders = [values] + [list(rng.permutation(values)) for _ in range(20)]
        shifts = np.array([drift_statistic([math.log(max(v, 1e-12)) for v in order[i - window:i]], reference)
                           for order in orders for i in range(window, len(order) + 1)])
        beyond = np.mean((shifts >= rise) | (shifts <= -fall))
        print(f"{name}: {len(values)} scores, window {window}: shift {shifts.min():+.2f} .. {shifts.max():+.2f}, "
              f">= +{rise} or <= -{fall}: {beyond:.0%} of windows")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("pixels").add_argument("roots", nargs="+", type=Path)
    p = sub.add_parser("scores")
    p.add_argument("root", type=Path)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("drift")
    p.add_argument("scores", type=Path)
    p.add_argument("--window", type=int, default=CheckConfig().drift_window)
    p.add_argument("--rise", type=float, default=CheckConfig().drift_threshold)
    p.add_argument("--fall", type=float, default=CheckConfig().drift_fall_threshold)
    args = parser.parse_args()
    if args.what == "pixels":
        pixels(args.roots)
    elif args.what == "scores":
        scores(args.root, args.model, args.out)
    else:
        drift(args.scores, args.window, args.rise, args.fall)


if __name__ == "__main__":
    main()
