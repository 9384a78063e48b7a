"""Do the camera-health checks catch injected camera faults on every shared set, and stay quiet on healthy replays?

Each set's train/good images are split by index: even ones choose the thresholds (``tune``), odd ones check
them (``check``); the check half is never used to tune. A replay is one camera: its frames are JPEG-encoded as
a camera sends them and decoded the health way, and fed to the real ``CameraMonitor`` with the default settings,
which learns its baseline from its own first frames.

- ``python benchmarks/health_faults.py tune [--datasets DIR]``: on the even halves (file order and shuffled), how
  far healthy windows stray from the camera's baseline, in its own spreads: the limits are chosen from this.
- ``python benchmarks/health_faults.py check [--datasets DIR] [--out FILE]``: on the odd halves, per set and
  fault, whether and after how many faulty frames a check fires, and the false alarms of healthy replays.

Faults: dark (x0.5), bright (x1.5, clipped), bright+60 (clipped), blur (Gaussian, sigma 2 px), freeze (one frame
repeated), shift (translated by 10 % of the width; the uncovered strip reflects the image, as more of the scene
would fill it). A fault replay is ``baseline_frames + window`` healthy frames, then the faulty ones.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from linewatch.common.images import list_train_good
from linewatch.health.checks import CameraMonitor, learn_baseline
from linewatch.health.settings import CheckConfig
from linewatch.health.stats import LAYOUT_SIDE, FrameStats, decode_grey, frame_stats, layout, layout_distance
from linewatch.ingest.wire import encode_frame

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = ("bsdata", "magnetic_tile", "mvtec3d_tire", "paper_brg02_rl", "paper_brg03_tl")
FAULT_FRAMES = 60  # faulty frames replayed after the healthy start
HEALTHY_FRAMES = 240  # a healthy replay repeats a small check half until it is this long
SHUFFLES = 5
SORTED = 0.8
MARGIN = 1.3  # a fault z within 1.3x the largest healthy one cannot be told from healthy with a margin


def darken(image: np.ndarray) -> np.ndarray:
    return np.round(image.astype(np.float32) * 0.5).astype(np.uint8)


def brighten(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image.astype(np.float32) * 1.5), 0, 255).astype(np.uint8)


def brighten_plus_60(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.int16) + 60, 0, 255).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 2)


def shift(image: np.ndarray) -> np.ndarray:
    """The view moved sideways by 10 % of the width."""
    dx = max(1, round(0.1 * image.shape[1]))
    matrix = np.array([[1, 0, dx], [0, 1, 0]], np.float32)
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


# freeze is no pixel change: the replay repeats the first faulty frame (see fault_stats)
FAULTS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "dark x0.5": darken, "bright x1.5": brighten, "bright +60": brighten_plus_60, "blur 2 px": blur,
    "freeze": None, "shift 10 %": shift}
EXPECTED_CHECK = {"dark x0.5": "exposure", "bright x1.5": "exposure", "bright +60": "exposure",
                  "blur 2 px": "focus", "freeze": "frozen", "shift 10 %": "drift"}


def load_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def camera_stats(image: np.ndarray) -> FrameStats:
    """What the health service computes from this image sent by a camera (JPEG, reduced grey decode)."""
    frame = encode_frame(image, camera_id="c", line_id="l", sequence=0, capture_ns=0)
    return frame_stats(decode_grey(frame.value, frame.meta))


def half(root: Path, parity: int, limit: int | None = None) -> list[Path]:
    """Even (0, tuning) or odd (1, checking) train/good images in file order, evenly sampled down to ``limit``."""
    paths = [r.path for r in list_train_good(root)][parity::2]
    if limit is not None and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def cycled(items: list[FrameStats], length: int) -> list[FrameStats]:
    """A short half repeated: a camera over a small set of parts."""
    return [items[i % len(items)] for i in range(max(length, len(items)))]


@dataclass(frozen=True)
class Replay:
    """What one replay through the default checks raised."""

    fired: list[tuple[int, str]]  # (frame index, check) of every firing event

    def first_after(self, onset: int) -> tuple[int, str] | None:
        """The first alert at or after ``onset``, as (frames after onset, check)."""
        later = [(i - onset + 1, check) for i, check in self.fired if i >= onset]
        return later[0] if later else None

    def before(self, onset: int) -> list[str]:
        return [check for i, check in self.fired if i < onset]


def replay(frames: list[FrameStats], config: CheckConfig) -> Replay:
    """Feed frames to a fresh camera monitor (frames 0.2 s apart) and note every alert that fires."""
    monitor, fired = CameraMonitor("c", "l", config), list[tuple[int, str]]()
    for i, stats in enumerate(frames):
        for event in monitor.observe_frame(stats, i * 0.2, i):
            if event.status == "firing":
                fired.append((i, event.check))
    return Replay(fired)


def fault_frames(images: list[np.ndarray], fault: str, start: int, count: int) -> list[FrameStats]:
    """``count`` faulty frames made from the images from ``start`` on (cycled)."""
    change = FAULTS[fault]
    if change is None:
        return [camera_stats(images[start % len(images)])] * count
    return [camera_stats(change(images[(start + i) % len(images)])) for i in range(count)]


def fault_replay(images: list[np.ndarray], healthy: list[FrameStats], fault: str, config: CheckConfig,
                 count: int = FAULT_FRAMES) -> tuple[Replay, int]:
    """Healthy frames until the baseline is learned and the window is full, then ``count`` faulty ones."""
    onset = config.baseline_frames + config.window
    start = cycled(healthy, onset)[:onset]
    return replay(start + fault_frames(images, fault, onset, count), config), onset


def sorted_by_brightness(stats: list[FrameStats]) -> float:
    """Rank correlation of brightness with the file index (1: the files are sorted by brightness)."""
    ranks = np.argsort(np.argsort([s.mean for s in stats]))
    return float(np.corrcoef(ranks, np.arange(len(stats)))[0, 1]) if len(stats) > 2 else 0.0


def camera_order(images: list[np.ndarray], stats: list[FrameStats]) -> tuple[list[np.ndarray], list[FrameStats]]:
    """The order a fault replay uses: file order, or a mixed one where the files are sorted by brightness (else
    the sort's own drift would count as a fault found, and a baseline of the darkest files as the camera's)."""
    if abs(sorted_by_brightness(stats)) <= SORTED:
        return images, stats
    order = np.random.default_rng(0).permutation(len(images))
    return [images[i] for i in order], [stats[i] for i in order]


def healthy_orders(stats: list[FrameStats], shuffles: int, length: int = HEALTHY_FRAMES,
                   seed: int = 0) -> dict[str, list[FrameStats]]:
    """The half in file order and in ``shuffles`` random orders, each repeated up to ``length`` frames.

    A file order sorted by brightness (rank correlation above ``SORTED``: magnetic_tile's files brighten from
    about 66 to 155 grey levels, 2.3x, from first to last) is left out: replayed, it is a slow exposure drift
    by construction, which no healthy fixed camera shows and which the exposure check should flag.
    """
    rng = np.random.default_rng(seed)
    orders = {} if abs(sorted_by_brightness(stats)) > SORTED else {"file order": cycled(stats, length)}
    for k in range(shuffles):
        orders[f"shuffle {k}"] = cycled([stats[i] for i in rng.permutation(len(stats))], length)
    return orders


def tune(datasets: Path) -> None:
    """Limits from the even halves: between the largest healthy excursion and the smallest faulty one.

    Each limit is in the camera's own spreads (z). Healthy: the largest z of any window of any replay (file
    order and shuffles) of any set. Faulty: per set, the z of a window full of the fault that the statistic is
    meant to catch; those at least MARGIN x the largest healthy z count (one limit serves every camera). The
    limit is the geometric midpoint of the largest healthy z and the smallest such fault z, rounded to 0.5:
    about the same margin, as a ratio, on both sides.
    """
    config = CheckConfig()
    healthy: dict[str, float] = {}
    faulty: dict[str, list[float]] = {}
    for name in SETS:
        images = [load_rgb(p) for p in half(datasets / name / name, 0)]
        stats = [camera_stats(im) for im in images]
        worst = {key: max(row[key] for row in (excursions(f, config) for f in healthy_orders(stats, SHUFFLES).values()))
                 for key in STATISTICS}
        faults = fault_excursions(*camera_order(images, stats), config)
        print(f"{name} ({len(stats)} frames): healthy max " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items())
              + "; faults " + ", ".join(f"{f}: {k} {v:.1f}" for f, (k, v) in faults.items()))
        for key, value in worst.items():
            healthy[key] = max(healthy.get(key, 0.0), value)
        for key, value in faults.values():
            faulty.setdefault(key, []).append(value)
    for key in STATISTICS:  # one limit serves every camera: a fault must clear every set's healthy range, by MARGIN
        separable = min((v for v in faulty[key] if v >= MARGIN * healthy[key]), default=math.nan)
        limit = math.sqrt(healthy[key] * separable)
        print(f"{key}: healthy max {healthy[key]:.2f}, smallest fault above it {separable:.2f}, geometric "
              f"midpoint {limit:.2f}, rounded to 0.5: {round(limit * 2) / 2:.1f}")


# the statistic each pixel fault should move, and its z in a window full of the fault
STATISTICS = ("z brightness", "z focus", "z layout")
STATISTIC_OF = {"dark x0.5": "z brightness", "bright x1.5": "z brightness", "bright +60": "z brightness",
                "blur 2 px": "z focus", "shift 10 %": "z layout"}


def fault_excursions(images: list[np.ndarray], healthy: list[FrameStats],
                     config: CheckConfig) -> dict[str, tuple[str, float]]:
    """Per pixel fault: the z of its statistic over a window of faulty frames after a healthy baseline."""
    start = cycled(healthy, config.baseline_frames)[:config.baseline_frames]
    result = {}
    for fault, key in STATISTIC_OF.items():
        frames = start + fault_frames(images, fault, config.baseline_frames, config.window)
        result[fault] = (key, excursions(frames, config)[key])
    return result


def excursions(frames: list[FrameStats], config: CheckConfig) -> dict[str, float]:
    """The largest excursions of the rolling medians from the baseline learned on the first frames, in its spreads."""
    baseline = learn_baseline(frames[:config.baseline_frames])
    reference = np.asarray(baseline.layout, np.float32).reshape(LAYOUT_SIDE, LAYOUT_SIDE)
    log_mean = np.log([max(s.mean, 1e-3) for s in frames]) - math.log(baseline.mean)
    log_focus = np.log([max(s.focus, 1e-3) for s in frames]) - math.log(baseline.focus)
    layouts = np.array([layout_distance(layout(s.thumb), reference) for s in frames])
    w, first = config.window, config.baseline_frames
    ends = range(first + w, len(frames) + 1)  # the checks judge once the baseline is set and the window full
    bright = max(abs(float(np.median(log_mean[e - w:e]))) for e in ends)
    fall = max(-float(np.median(log_focus[e - w:e])) for e in ends)
    view = max(float(np.median(layouts[e - w:e])) for e in ends) - (baseline.layout_distance or 0.0)
    return {"z brightness": bright / max(baseline.mean_spread or 0.0, 1e-9),
            "z focus": fall / max(baseline.focus_spread or 0.0, 1e-9),
            "z layout": view / max(baseline.layout_spread or 0.0, 1e-9)}


@dataclass(frozen=True)
class SetResult:
    """One set's check half through the default checks."""

    name: str
    images: int
    detections: dict[str, tuple[int, str] | None]  # fault -> (frames after onset, check) or None
    early: dict[str, list[str]]  # fault -> alerts before the fault began (false alarms)
    healthy_alarms: dict[str, list[str]]  # replay order -> alerts of a healthy replay
    brightness_rank: float  # rank correlation of brightness with the file index
    sorted_alarms: list[str] | None  # alerts of the file order when it is sorted by brightness (not healthy)


def check_set(root: Path, config: CheckConfig, limit: int | None = None, shuffles: int = SHUFFLES,
              fault_count: int = FAULT_FRAMES, healthy_length: int = HEALTHY_FRAMES) -> SetResult:
    """Every fault and the healthy replays of one set's odd half (sampled down to ``limit`` images)."""
    images = [load_rgb(p) for p in half(root, 1, limit)]
    sorted_by_file = [camera_stats(im) for im in images]
    rank = sorted_by_brightness(sorted_by_file)
    images, healthy = camera_order(images, sorted_by_file)
    detections, early = {}, {}
    for fault in FAULTS:
        result, onset = fault_replay(images, healthy, fault, config, fault_count)
        detections[fault], early[fault] = result.first_after(onset), result.before(onset)
    alarms = {order: [check for _i, check in replay(frames, config).fired]
              for order, frames in healthy_orders(sorted_by_file, shuffles, healthy_length).items()}
    sorted_order = ([check for _i, check in replay(cycled(sorted_by_file, healthy_length), config).fired]
                    if abs(rank) > SORTED else None)
    return SetResult(root.name, len(images), detections, early, alarms, rank, sorted_order)


def table(results: list[SetResult]) -> str:
    faults = list(FAULTS)
    lines = ["| set (check images) | " + " | ".join(faults) + " | healthy replays: alerts |",
             "|---" * (len(faults) + 2) + "|"]
    for r in results:
        cells = []
        for fault in faults:
            found = r.detections[fault]
            cell = f"yes, {found[0]} frames ({found[1]})" if found else "**no**"
            if r.early[fault]:
                cell += f"; before onset: {', '.join(r.early[fault])}"
            cells.append(cell)
        alarms = sum(len(a) for a in r.healthy_alarms.values())
        detail = "none" if not alarms else "; ".join(f"{o}: {', '.join(a)}" for o, a in r.healthy_alarms.items() if a)
        detail += f" ({len(r.healthy_alarms)} replays of >= {HEALTHY_FRAMES} frames)"
        if r.sorted_alarms is not None:
            detail += (f"; file order, sorted by brightness (rank correlation {r.brightness_rank:.2f}), left out: "
                       f"{', '.join(r.sorted_alarms) or 'none'}")
        lines.append(f"| {r.name} ({r.images}) | " + " | ".join(cells) + f" | {detail} |")
    return "\n".join(lines)


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{model}, {cores} cores, load {' '.join(load)}"


def check(datasets: Path, out: Path | None) -> None:
    config, started = CheckConfig(), time.monotonic()
    results = [check_set(datasets / name / name, config) for name in SETS if (datasets / name / name).is_dir()]
    report = (f"Measured {datetime.now(UTC).isoformat(timespec='minutes')} on {machine()}, "
              f"{time.monotonic() - started:.0f} s; command: `{' '.join(['python', *sys.argv])}`\n\n{table(results)}\n")
    print(report)
    if out is not None:
        out.write_text(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["tune", "check"])
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--out", type=Path, help="check: also write the table here")
    args = parser.parse_args()
    if args.mode == "tune":
        tune(args.datasets)
    else:
        check(args.datasets, args.out)


if __name__ == "__main__":
    main()
