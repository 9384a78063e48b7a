"""The detector against the real broker and Redis: results, breaches, dead letters, heatmaps, probes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import redis
from confluent_kafka import Producer
from service_helpers import create_topics, produce_frames, read_topic, settings_for, topic_names

from linewatch.common import cache_keys
from linewatch.common.heatmap_codec import overlay_from_fields
from linewatch.detector.events import Breach, FrameResult
from linewatch.detector.service import DetectorService
from linewatch.ingest.wire import encode_frame, meta_to_headers


def _start(service: DetectorService) -> threading.Thread:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


def test_every_frame_yields_one_result_bad_frames_are_dead_lettered(bootstrap: str, redis_url: str, unique: str,
                                                                     tiny_model: Path) -> None:
    topics = topic_names(unique)
    create_topics(bootstrap, topics)
    good = encode_frame(np.full((64, 64, 3), 128, np.uint8), camera_id="cam-bad", line_id="line-1", sequence=0,
                        capture_ns=time.time_ns())
    huge_meta = type(good.meta)(**{**good.meta.__dict__, "width": 9000, "height": 9000})
    bad = {
        "undecodable": (b"\x13random bytes\x00" * 20, good.headers),
        "truncated": (good.value[:40], good.headers),
        "missing_header": (good.value, [(n, v) for n, v in good.headers if n != "lw-seq"]),
        "unsupported_version": (good.value, [(n, b"2" if n == "lw-version" else v) for n, v in good.headers]),
        "oversized": (good.value, meta_to_headers(huge_meta)),
        "no_headers": (good.value, None),
    }
    sent = produce_frames(bootstrap, topics["frames"], cameras=3, per_camera=6)
    producer = Producer({"bootstrap.servers": bootstrap})
    for name, (value, headers) in bad.items():
        producer.produce(topics["frames"], key=name.encode(), value=value, headers=headers)
    assert producer.flush(15) == 0
    sent |= produce_frames(bootstrap, topics["frames"], cameras=3, per_camera=4, first_sequence=6)

    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model, heatmaps_per_camera=4))
    thread = _start(service)
    try:
        results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= len(sent), 90)
        dead = read_topic(bootstrap, topics["dead_letters"], lambda m: len(m) >= len(bad), 30)
        assert service.ready_event.wait(5)
        port = service.health_port
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        metrics_text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        service.stop_event.set()
        thread.join(60)
    assert not thread.is_alive()

    parsed = [FrameResult.model_validate_json(m.value()) for m in results]
    assert {(r.camera_id, r.sequence) for r in parsed} == sent
    assert len(parsed) == len(sent)  # no duplicates in a clean run
    assert all(m.key() == r.camera_id.encode() for m, r in zip(results, parsed, strict=True))
    assert all(r.model_version == service.model.model_version and r.latency.end_to_end_ms > 0 for r in parsed)

    by_key = {m.key().decode(): m for m in dead}
    assert set(by_key) == set(bad)
    for name, (value, _headers) in bad.items():
        headers = dict(by_key[name].headers())
        assert by_key[name].value() == value  # kept as received
        assert headers["dl-topic"] == topics["frames"].encode()
        assert int(headers["dl-offset"]) >= 0 and headers["dl-error"]
        expected = {"truncated": (b"undecodable", b"dimension_mismatch"), "no_headers": (b"missing_header",)}
        assert headers["dl-error-class"] in expected.get(name, (name.encode(),))

    anomalous = [r for r in parsed if r.anomalous]
    breaches = read_topic(bootstrap, topics["breaches"], lambda m: len(m) >= len(anomalous), 20)
    assert len(breaches) == len(anomalous)
    for m in breaches:
        breach = Breach.model_validate_json(m.value())
        assert breach.anomalous and 0 <= breach.region.area_fraction <= 1
    assert "linewatch_detector_frames_processed_total" in metrics_text
    assert 'linewatch_detector_dead_letters_total{reason="oversized"} 1.0' in metrics_text

    # Heatmaps: the latest N=4 per camera, each with frame JPEG and 16-bit map; older ones deleted
    # unless they are breaches (those keep their longer TTL).
    client = redis.Redis.from_url(redis_url)
    prefix = f"lwt-{unique}"
    assert {c.decode() for c in client.smembers(cache_keys.cameras_key(prefix))} == {"cam-0", "cam-1", "cam-2"}
    recent = client.lrange(cache_keys.recent_key(prefix, "cam-0"), 0, -1)
    assert [k.decode() for k in recent] == [cache_keys.heatmap_key(prefix, "cam-0", s) for s in range(9, 5, -1)]
    latest = client.hgetall(cache_keys.latest_key(prefix, "cam-0"))
    assert latest[b"sequence"] == b"9"
    stored = client.hgetall(recent[0])
    # The detector stores the map (16-bit PNG) and a small JPEG of the frame, not a rendered overlay;
    # readers draw the overlay from them when someone looks.
    assert cache_keys.FIELD_OVERLAY.encode() not in stored
    assert stored[b"map"].startswith(b"\x89PNG") and stored[b"frame"].startswith(b"\xff\xd8")
    overlay = cv2.imdecode(np.frombuffer(overlay_from_fields(stored) or b"", np.uint8), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape[2] == 3 and max(overlay.shape[:2]) <= 256
    verdicts = {r.sequence: r.anomalous for r in parsed if r.camera_id == "cam-0"}
    for seq, anomalous in verdicts.items():
        key = cache_keys.heatmap_key(prefix, "cam-0", seq)
        ttl = client.ttl(key)
        if anomalous:
            assert 60 < ttl <= 300, (seq, ttl)  # breach_ttl_s of settings_for
        elif seq >= 6:
            assert 0 < ttl <= 60, (seq, ttl)
        else:
            assert ttl == -2, f"evicted ordinary heatmap {key} still exists"
    assert json.loads(results[0].value())["heatmap_key"] is not None
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_tensor_batches_of_the_gpu_decode_path_score_like_numpy_batches(tiny_model: Path) -> None:
    import torch

    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.ingest.synthetic import render_sample

    model = AnomalyModel.load(tiny_model, device="cpu")
    frames = np.stack([render_sample(i, size=64).image for i in range(3)])
    from_numpy = model.predict(frames)
    from_tensor = model.predict(torch.from_numpy(frames))
    np.testing.assert_allclose(from_tensor.image_scores, from_numpy.image_scores, rtol=1e-5)
    np.testing.assert_allclose(from_tensor.maps, from_numpy.maps, rtol=1e-4, atol=1e-6)
    assert (from_tensor.anomalous == from_numpy.anomalous).all()
