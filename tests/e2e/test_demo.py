"""``linewatch demo`` end to end with a tiny budget on synthetic parts, on the session's broker and Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_helpers import ROOT, http_ok

from linewatch.deploy.demo_model import cache_key, ensure_model

TINY = ["--synthetic", "--image-size", "64", "--train-images", "16", "--epochs", "1", "--cameras", "2",
        "--fps", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def cached_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache that already holds the model the ``TINY`` demo asks for (trained here, in-process)."""
    import torch

    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("demo-cache")
    ensure_model(None, cache, epochs=1, image_size=64, train_images=16, device="cpu")
    return cache


def _demo(args: list[str], bootstrap: str, redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url}
    return subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli", "demo", *TINY, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_runs_the_line_and_writes_the_summary(bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _demo(["--duration", "10", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
                 bootstrap, redis_url)
    output, _ = proc.communicate(timeout=140)
    wall_ms = (time.monotonic() - started) * 1000
    assert proc.returncode == 0, output
    assert "training the demo model" in output and "up to 1 epochs with early stopping (demo budget" in output
    assert re.search(r"alerts web page: http://127\.0\.0\.1:\d+/\s+token: \S{16,}", output), output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("run", "model", "frames", "alerts", "accuracy", "throughput", "latency_ms", "heatmap_examples"):
        assert key in summary, key
    frames = summary["frames"]
    assert frames["sent"] >= 2 * 3 * 10 * 0.7 and frames["captured"] == frames["sent"]
    assert frames["unique_results"] == frames["sent"] and frames["missing"] == 0 and frames["dead_letters"] == 0
    acc = summary["accuracy"]
    assert acc["labelled_frames"] == frames["sent"]
    assert acc["true_positives"] + acc["false_negatives"] > 0, "synthetic parts at p=0.3 include defects"
    # Each result is joined to its frame's ground truth: drawn defects rank far above good parts even for a
    # 1-epoch model, while results joined to the wrong frames (or a broken model path) rank at chance (0.5,
    # standard deviation ~0.08 at this size).
    assert acc["image_auroc"] > 0.75, acc
    assert set(summary["alerts"]) >= {"fired", "resolved", "open_at_end"}
    latency = summary["latency_ms"]  # each frame's result comes after its capture and within the run
    assert latency["p50"] > 0 and latency["max"] < wall_ms, (latency, wall_ms)
    assert summary["throughput"]["processed_frames_per_s"] > 0
    html = (tmp_path / "out" / "summary.html").read_text()
    assert summary["heatmap_examples"] and html.count("data:image/png;base64,") == len(summary["heatmap_examples"])
    assert "recall" in html and "false_alarm_rate" in html
    # The trained model went through the registry: registered, promoted, and the detector followed it.
    promotion = summary["promotion"]
    assert promotion["history"] == [f"promote {promotion['version']} by linewatch demo"], promotion
    assert f"registry: version {promotion['version']} promoted for product demo-part" in output
    # The run's state is deleted once its services stop (alert state has no TTL; the run id is never reused).
    import redis

    left = list(redis.Redis.from_url(redis_url).scan_iter(match=f"demo-{summary['run']['run_id']}:*", count=1000))
    assert not left, left[:5]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_reuses_the_cached_model_and_stops_everything_on_sigterm(bootstrap: str, redis_url: str,
                                                                     cached_model_dir: Path, tmp_path: Path) -> None:
    proc = _demo(["--duration", "600", "--out", str(tmp_path / "out"), "--cache-dir", str(cached_model_dir)],
                 bootstrap, redis_url)
    # Read until the demo says its services are up, or until it exits (then its last line says why): no
    # deadline of our own, the test's timeout bounds it. A 100 s deadline here cut the output short on a busy
    # 2-core machine and left a failure that named neither the cause nor the demo's own message.
    text = _output_until(proc, "alerts web page")
    assert "model: reused cached" in text and "training the demo model" not in text, text
    urls = re.findall(r"(http://127\.0\.0\.1:\d+)/", text)
    assert len(urls) == 2, f"expected the detector's and the alerts' URLs in:\n{text}"
    assert all(http_ok(f"{u}/{p}") for u, p in zip(urls, ("readyz", "health"), strict=True))
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text + rest  # interrupted, after stopping what it started
    assert not any(http_ok(f"{u}/{p}") for u, p in zip(urls, ("readyz", "health"), strict=True))


def _output_until(proc: subprocess.Popen[str], marker: str) -> str:
    """The process's output up to and including the first line holding ``marker`` (or all of it, if it exits)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not any(marker in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    return "".join(lines)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_service_whose_port_was_taken_meanwhile_starts_on_another_port(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port() then the child's bind is a race any other process can win; the demo tries another port."""
    from linewatch.deploy import demo_run
    from linewatch.deploy.demo_processes import Processes, wait_http

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    free = iter([taken.getsockname()[1], demo_run.free_port()])
    monkeypatch.setattr(demo_run, "free_port", lambda: next(free))
    processes, tried = Processes(tmp_path), []

    def start(port: int) -> int:  # a real child that exits when its port is taken, like the detector and alerts
        tried.append(port)
        with (tmp_path / "child.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                    cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        processes.started.append(("child", proc))
        wait_http(f"http://127.0.0.1:{port}/", 60, proc, "child", tmp_path / "child.log")
        return port

    try:
        port = demo_run._on_a_free_port(start)
        assert tried == [taken.getsockname()[1], port] and http_ok(f"http://127.0.0.1:{port}/")
    finally:
        processes.stop()
        taken.close()


def test_cache_key_follows_settings_and_data_but_not_the_device() -> None:
    config = {"backbone": "efficientnet_lite0", "image_size": 256, "epochs": 3, "device": "cpu"}
    data = [["000.png", 100], ["001.png", 120]]
    assert cache_key(config, data) == cache_key({**config, "device": "cuda"}, data)
    assert cache_key(config, data) != cache_key({**config, "epochs": 4}, data)
    assert cache_key(config, data) != cache_key(config, [["000.png", 100], ["001.png", 121]])


def test_a_damaged_cached_model_is_trained_again(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    first = ensure_model(None, tmp_path, epochs=1, image_size=64, train_images=4, device="cpu")
    assert not first.cached and first.path.is_file()
    assert ensure_model(None, tmp_path, epochs=1, image_size=64, train_images=4, device="cpu").cached
    first.path.write_bytes(first.path.read_bytes()[:-100])
    again = ensure_model(None, tmp_path, epochs=1, image_size=64, train_images=4, device="cpu")
    assert not again.cached and again.path == first.path


@pytest.mark.slow  # trains a 1-epoch model and scores 24 images
def test_a_demo_model_of_real_data_is_calibrated_on_frames_as_the_cameras_send_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2
    import torch

    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.ingest.synthetic import render_sample

    torch.set_num_threads(1)
    good = tmp_path / "part" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(28):
        cv2.imwrite(str(good / f"{i:03d}.png"), render_sample(i, size=80, defect_probability=0.0).image)
    model = ensure_model(tmp_path / "part", tmp_path / "cache", epochs=1, image_size=64, train_images=4,
                         device="cpu", camera_frames=(96, 96))
    printed = capsys.readouterr().out
    assert "calibrated on 24 good images the training did not use, sent as the cameras send them (96x96 JPEG)" \
        in printed, printed
    training = AnomalyModel.load(model.path, "cpu").metadata.training
    assert training["recalibrated_from"]["n_good"] == 24
    # the same data and settings without the camera's frame size are another model (no stale threshold reused)
    other = ensure_model(tmp_path / "part", tmp_path / "cache", epochs=1, image_size=64, train_images=4,
                         device="cpu")
    assert other.path != model.path and "recalibrated_from" not in AnomalyModel.load(other.path).metadata.training
