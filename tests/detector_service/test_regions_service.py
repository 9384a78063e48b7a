"""Regions of interest through the running detector (real broker and Redis): an ignore mask from the
cameras file removes a false alarm inside it and keeps a defect outside it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from confluent_kafka import Producer
from service_helpers import create_topics, read_topic, settings_for, topic_names

from linewatch.detector.events import Breach, FrameResult
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.roi import RoiConfig, cell_mask
from linewatch.detector.service import DetectorService
from linewatch.ingest.synthetic import SyntheticSample, render_sample
from linewatch.ingest.wire import encode_frame

LEFT_HALF = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
CAMERAS_FILE = """
cameras:
  - camera_id: cam-masked
    source: "synthetic:"
    roi: {exclude: [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]]}
  - {camera_id: cam-open, source: "synthetic:"}
"""


def pick_frames(model: AnomalyModel) -> tuple[SyntheticSample, SyntheticSample]:
    """A defect wholly inside the left half that the mask silences, and one wholly in the right half
    that breaches with the mask too (chosen with the model itself, so the test does not rest on luck)."""
    mask = cell_mask(RoiConfig(exclude=[LEFT_HALF]), (64, 64), model.image_size)
    inside = outside = None
    for seed in range(6000, 6400):
        sample = render_sample(seed, size=64, defect_probability=1.0)
        columns = np.flatnonzero(sample.mask.any(axis=0))
        if not columns.size:
            continue
        open_p = model.predict(sample.image[None])
        masked = model.predict(sample.image[None], masks=mask[None])
        if inside is None and columns.max() < 28 and open_p.anomalous[0] and not masked.anomalous[0]:
            inside = sample
        if outside is None and columns.min() >= 36 and masked.anomalous[0]:
            outside = sample
        if inside is not None and outside is not None:
            return inside, outside
    pytest.fail("no synthetic defect pair found for the region test (the tiny model changed?)")


def test_an_ignore_mask_in_the_cameras_file_silences_defects_inside_and_keeps_those_outside(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path, tmp_path: Path) -> None:
    inside, outside = pick_frames(AnomalyModel.load(tiny_model, "cpu"))
    cameras_file = tmp_path / "cameras.yaml"
    cameras_file.write_text(CAMERAS_FILE)
    topics = topic_names(unique)
    create_topics(bootstrap, topics)
    frames = {("cam-masked", 0): inside, ("cam-masked", 1): outside, ("cam-open", 0): inside}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for (camera, sequence), sample in frames.items():
        # PNG: the pixels the detector scores are the ones the frames were chosen on
        frame = encode_frame(sample.image, camera_id=camera, line_id="line-1", sequence=sequence,
                             capture_ns=time.time_ns(), encoding="png")
        producer.produce(topics["frames"], key=frame.key, value=frame.value, headers=frame.headers)
    assert producer.flush(15) == 0

    settings = settings_for(bootstrap, redis_url, topics, unique, tiny_model, camera_regions_file=cameras_file)
    service = DetectorService(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= len(frames), 90)
        breaches = read_topic(bootstrap, topics["breaches"], lambda m: len(m) >= 2, 30)
    finally:
        service.stop_event.set()
        thread.join(60)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"lwt-{unique}:*"):
            client.delete(key)
    assert not thread.is_alive()

    verdicts = {(r.camera_id, r.sequence): r.anomalous
                for r in (FrameResult.model_validate_json(m.value()) for m in results)}
    assert verdicts == {("cam-masked", 0): False, ("cam-masked", 1): True, ("cam-open", 0): True}
    breached = {(b.camera_id, b.sequence): b for b in (Breach.model_validate_json(m.value()) for m in breaches)}
    assert set(breached) == {("cam-masked", 1), ("cam-open", 0)}
    region = breached[("cam-masked", 1)].region
    assert region.bbox is not None and region.bbox[0] >= 32  # the breach region never reaches into the mask


def test_a_bad_polygon_in_the_regions_file_is_one_start_up_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from linewatch.detector.service.settings import DetectorSettings

    bad = tmp_path / "cameras.yaml"
    bad.write_text("cameras:\n  - {camera_id: cam-7, roi: {exclude: [[[0, 0], [1, 1]]]}}\n")
    with pytest.raises(ValidationError, match=r"cam-7: roi: exclude\[0\] has 2 points"):
        DetectorSettings(camera_regions_file=bad)
    inline = DetectorSettings(camera_regions_file=None, camera_regions={"cam-7": {"exclude": [LEFT_HALF]}})
    assert inline.regions()["cam-7"].exclude == [LEFT_HALF]
