"""Load soak at 80% of the rated pipeline throughput: memory of each process, p99 latency, consumer lag.

The rate comes from benchmarks/results/detector_pipeline.md ("line rating with its cameras, frames/s": the
highest camera rate the line kept up with, cameras on the same host, measured with the default model).
Full size runs that model for 10 minutes; reduced size runs the tiny
64 px model for ~24 s at the same rate (the timing is not asserted there).

Memory: RSS of each process is sampled every 2 s and reported over time. The first half of the run is
warm-up (allocator arenas, oneDNN primitives per batch shape, librdkafka buffers filling); flatness is
judged on the second half only: the least-squares growth over the second half must stay within
``max(RSS_FLOOR_MIB, RSS_FRACTION x RSS)`` of the process (see benchmarks/results/reliability.md,
"Detector memory").
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from helpers.faults import FULL, ROOT, TopicCollector, create_topics, report, rss_mib, size, spawn, wait_until

from linewatch.deploy.local import free_port
from linewatch.detector.events import FrameResult

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
CAMERAS = 4
RSS_FLOOR_MIB = 32.0  # tolerance of the second-half growth: at least this many MiB ...
RSS_FRACTION = 0.05  # ... or this fraction of the process's RSS, whichever is larger


def second_half_growth(samples: list[tuple[float, float]]) -> float:
    """MiB the least-squares line through the second half of (seconds, MiB) samples rises over that half."""
    half = samples[len(samples) // 2:]
    if len(half) < 2 or half[-1][0] <= half[0][0]:
        return 0.0
    t = np.array([x for x, _ in half])
    slope = float(np.polyfit(t, np.array([m for _, m in half]), 1)[0])
    return slope * float(t[-1] - t[0])


def memory_figures(series: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, object]]:
    """Per process: RSS every ~10 s, start/end, second-half growth, its tolerance and the verdict."""
    out: dict[str, dict[str, object]] = {}
    for name, samples in series.items():
        growth = second_half_growth(samples)
        tolerance = max(RSS_FLOOR_MIB, RSS_FRACTION * samples[len(samples) // 2][1])
        out[name] = {"rss_over_time_mib": [[round(t), round(m, 1)] for t, m in samples[::5]],
                     "start_mib": round(samples[0][1], 1), "end_mib": round(samples[-1][1], 1),
                     "second_half_growth_mib": round(growth, 1), "tolerance_mib": round(tolerance, 1),
                     "flat": growth <= tolerance}
    return out


def rated_fps() -> float:
    """The line's rating from the detector benchmark's results: the highest total camera rate it kept up with
    while its cameras ran on the same host, else the median pipeline frames/s on a backlog."""
    text = (ROOT / "benchmarks" / "results" / "detector_pipeline.md").read_text()
    for label in ("line rating with its cameras, frames/s", "pipeline, frames/s"):
        row = re.search(rf"^\| {re.escape(label)} \|(.+)\|\s*$", text, re.MULTILINE)
        if row:
            return float(row.group(1).split("|")[-1])
    raise AssertionError("no rating row in benchmarks/results/detector_pipeline.md")


def _lag(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return float("nan")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("linewatch_detector_consumer_lag{"))


@pytest.mark.timeout(1800)
def test_soak_at_80_percent_of_rated_throughput(bootstrap: str, redis_url: str, unique: str, tiny_model: Path,
                                                tmp_path: Path) -> None:
    duration_s = size(24.0, 600.0)
    total_fps = 0.8 * rated_fps()
    fps = total_fps / CAMERAS
    model = tiny_model
    if FULL:  # the architecture the rated figure was measured with: TrainConfig's defaults, 1 epoch
        from linewatch.detector.model.training.train import TrainConfig, train
        from linewatch.ingest.synthetic import render_sample

        images = [render_sample(i, size=256, defect_probability=0.0).image for i in range(16)]
        model = train(TrainConfig(epochs=1, batch_size=8, device="cpu"), images, tmp_path / "soak.safetensors",
                      progress=False).path
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: CAMERAS if role == "frames" else 1 for role, name in topics.items()})
    metrics_port = free_port()
    env = {"LINEWATCH_TOPICS__RESULTS": topics["results"], "LINEWATCH_TOPICS__BREACHES": topics["breaches"],
           "LINEWATCH_TOPICS__DEAD_LETTERS": topics["dead_letters"], "LINEWATCH_REDIS__KEY_PREFIX": f"lwr-{unique}",
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000", "LINEWATCH_STATISTICS_INTERVAL_MS": "1000",
           "LINEWATCH_API_TOKEN": "y1UHbiWtlqpYVwOrbXNgaaq8XSEPQKoyyxlFnxeKuOw",
           "LINEWATCH_GROUP_ID": f"alerts-{unique}",
           "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "LINEWATCH_REDIS__URL": redis_url}
    fleet = tmp_path / "cameras.yaml"
    fleet.write_text(yaml.safe_dump({"defaults": {
        "line_id": "line-1", "source": "synthetic:?size=256", "fps": fps, "queue_policy": "drop-oldest",
        "state_dir": str(tmp_path / "state"), "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"frames": topics["frames"], "partitions": CAMERAS}},
        "cameras": [{"camera_id": f"cam-{i}"} for i in range(CAMERAS)]}))
    results = TopicCollector(bootstrap, topics["results"], lambda m: FrameResult.model_validate_json(m.value()))
    procs = {
        "detector": spawn(["detect", "--model", str(model), "--bootstrap-servers", bootstrap, "--redis-url",
                           redis_url, "--frames-topic", topics["frames"], "--group-id", f"det-{unique}",
                           "--device", "cpu", "--metrics-port", str(metrics_port), "--torch-threads", "2"],
                          env, tmp_path / "detector.log"),
        "alerts": spawn(["alerts", "--no-api"], env, tmp_path / "alerts.log"),
    }
    try:
        wait_until(lambda: _lag(metrics_port) == _lag(metrics_port), 180, "the detector's metrics")
        time.sleep(3)
        procs["cameras"] = spawn(["cameras", "--config", str(fleet)], env, tmp_path / "cameras.log")
        wait_until(lambda: len(results) > 0, 180, "the first result")
        started, lags = time.monotonic(), []
        series: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        while (elapsed := time.monotonic() - started) < duration_s:
            for name, proc in procs.items():
                series[name].append((elapsed, rss_mib(proc.pid)))
            time.sleep(2)
            lags.append(_lag(metrics_port))
        procs["cameras"].send_signal(signal.SIGTERM)
        procs["cameras"].wait(60)
        time.sleep(5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(60) for name, proc in procs.items()}
        results.close()
    cut = len(results.items) // 10  # the first 10%: warm-up
    latencies = np.array([r.latency.end_to_end_ms for r in results.items[cut:]])
    period_ms = 1000 / fps
    valid_lags = [x for x in lags if x == x]
    figures = {"rated_fps": rated_fps(), "offered_fps": round(total_fps, 2), "cameras": CAMERAS,
               "duration_s": duration_s, "model": "default (TrainConfig) 1 epoch" if FULL else "tiny 64px",
               "results": len(results.items), "memory": memory_figures(series),
               "p50_ms": round(float(np.percentile(latencies, 50)), 1),
               "p99_ms": round(float(np.percentile(latencies, 99)), 1), "two_periods_ms": round(2 * period_ms, 1),
               "p99_within_two_periods": bool(np.percentile(latencies, 99) <= 2 * period_ms),
               "lag_max": max(valid_lags, default=0), "lag_last": valid_lags[-1] if valid_lags else None,
               "exit_codes": codes}
    report("soak", figures)
    assert all(code == 0 for code in codes.values()), codes
    assert len(results.items) > 0.5 * total_fps * duration_s
    # Bounded lag: at the end it is not above what two seconds of offered frames make.
    assert figures["lag_last"] is not None and figures["lag_last"] <= max(20, 2 * total_fps)
    not_flat = {k: v for k, v in figures["memory"].items() if not v["flat"]}
    assert not not_flat, f"memory still growing after warm-up: {not_flat}"
