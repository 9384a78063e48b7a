"""Sources, SOURCE parsing, size guard, sequence state and the cameras file, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.common.images import list_test
from linewatch.ingest.fleet import FleetConfigError, load_fleet
from linewatch.ingest.producer import fit_to_limit, frame_size
from linewatch.ingest.sequence import SequenceStateError, SequenceStore
from linewatch.ingest.sources import (
    FolderSource,
    FrameError,
    OpenCVSource,
    ReplaySource,
    SourceError,
    SourceSpecError,
    SyntheticSource,
    open_source,
)
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import EncodedFrame, encode_frame


def _drain(source: object, limit: int = 1000) -> list:
    frames = []
    for _ in range(limit):
        frame = source.read()  # type: ignore[attr-defined]
        if frame is None:
            break
        frames.append(frame)
    return frames


def test_open_source_parses_every_kind(tmp_path: Path) -> None:
    device = open_source("0")
    assert isinstance(device, OpenCVSource) and device.live and device.target == 0
    stream = open_source("rtsp://admin:s3cret@10.0.0.7/stream1")
    assert stream.live and "s3cret" not in stream.description and "admin:***@" in stream.description
    synthetic = open_source("synthetic:?defect_probability=0.5&size=64&count=3", seed=7)
    assert isinstance(synthetic, SyntheticSource)
    assert (synthetic.defect_probability, synthetic.size, synthetic.count, synthetic.seed) == (0.5, 64, 3, 7)
    replay = open_source("replay:/data/tiles?split=train&shuffle=yes")
    assert isinstance(replay, ReplaySource) and replay.split == "train" and replay.shuffle
    later = open_source(f"folder:{tmp_path / 'later'}?glob=*.png")
    assert isinstance(later, FolderSource) and later.glob == "*.png" and not later.live
    globbed = open_source(str(tmp_path / "*.jpg"))
    assert isinstance(globbed, FolderSource) and globbed.folder == tmp_path and globbed.glob == "*.jpg"
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    video = open_source(str(tmp_path / "clip.avi"))
    assert isinstance(video, OpenCVSource) and not video.live


@pytest.mark.parametrize("spec, words", [
    ("", "empty SOURCE"),
    ("synthetic:?colour=red", "unknown option(s) colour"),
    ("synthetic:?size=huge", "bad option"),
    ("synthetic:?defect_probability=2", "defect_probability"),
    ("replay:/x?split=validation", "split"),
    ("/no/such/place", "folder:/no/such/place"),
    ("synthetic:/path", "options only"),
])
def test_open_source_explains_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(SourceSpecError) as info:
        open_source(spec)
    assert words in str(info.value)


def test_video_file_source_reads_every_frame_in_rgb(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[:, :, 2] = 200  # red in BGR
        bgr[:, :, 1] = i * 20
        writer.write(bgr)
    writer.release()
    source = open_source(str(path))
    with source:
        frames = _drain(source)
    assert len(frames) == 10
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    red, green, blue = (float(frames[5].image[:, :, c].mean()) for c in range(3))
    assert abs(red - 200) < 8 and abs(green - 100) < 8 and blue < 8  # RGB order, content kept
    assert frames[0].source_id == "clip.avi#0"
    with pytest.raises(SourceError, match="no such file"):
        OpenCVSource(tmp_path / "missing.avi").open()


def test_folder_source_sorted_glob_and_bad_file(tmp_path: Path) -> None:
    for name, value in (("b.png", 20), ("a.png", 10), ("c.jpg", 30)):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "d.png").write_bytes(b"corrupt")
    with FolderSource(tmp_path, glob="*.png") as source:
        first, second = source.read(), source.read()
        assert first is not None and second is not None
        assert (first.source_id, second.source_id) == ("a.png", "b.png")
        assert int(first.image[0, 0, 0]) == 10
        with pytest.raises(FrameError, match=r"d\.png"):
            source.read()
        assert source.read() is None
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "nope").open()
    with pytest.raises(SourceError, match="no images"):
        FolderSource(tmp_path, glob="*.bmp").open()


def _tiny_mvtec(root: Path) -> None:
    for kind, names in (("good", ["000", "001"]), ("crack", ["000"]), ("blowhole", ["000"])):
        (root / "test" / kind).mkdir(parents=True)
        for name in names:
            cv2.imwrite(str(root / "test" / kind / f"{name}.png"), np.full((16, 16, 3), 99, np.uint8))
            if kind != "good":
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / kind / f"{name}_mask.png"), np.zeros((16, 16), np.uint8))


def test_replay_source_reports_truth(tmp_path: Path) -> None:
    _tiny_mvtec(tmp_path)
    with open_source(f"replay:{tmp_path}") as source:
        frames = _drain(source)
    truth = [(f.label, f.defect_type, f.source_id) for f in frames]
    assert truth == [("defect", "blowhole", "blowhole/000.png"), ("defect", "crack", "crack/000.png"),
                     ("good", None, "good/000.png"), ("good", None, "good/001.png")]
    shuffled = [r.path for r in ReplaySource(tmp_path, shuffle=True, seed=3).records()]
    assert shuffled == [r.path for r in ReplaySource(tmp_path, shuffle=True, seed=3).records()]
    assert sorted(shuffled) == sorted(r.path for r in list_test(tmp_path))
    with pytest.raises(SourceError, match="no test/ folder"):
        ReplaySource(tmp_path / "empty").open()


@pytest.mark.realdata
def test_replay_source_on_magnetic_tile(magnetic_tile: Path) -> None:
    source = ReplaySource(magnetic_tile, shuffle=True, seed=1)
    records = source.records()
    assert len(records) == len(list_test(magnetic_tile))
    labels = {r.label for r in records}
    assert labels == {"good", "defect"}
    with source:
        frames = [source.read() for _ in range(5)]
    for frame, record in zip(frames, records, strict=False):
        assert frame is not None and frame.label == record.label and frame.image.ndim == 3


def test_synthetic_source_is_reproducible_with_truth() -> None:
    source = SyntheticSource(defect_probability=0.5, size=32, seed=4, count=6)
    with source:
        frames = _drain(source)
    assert len(frames) == 6
    for index, frame in enumerate(frames):
        sample = render_sample(source.sample_seed(index), 32, 0.5)
        assert np.array_equal(frame.image, sample.image)
        assert (frame.label, frame.defect_type) == (sample.label, sample.defect_type)
    assert {f.label for f in frames} <= {"good", "defect"}


def test_size_guard_resizes_or_rejects() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)

    def encode(image: np.ndarray) -> EncodedFrame:
        return encode_frame(image, camera_id="c", line_id="l", sequence=1, capture_ns=1, encoding="png")

    assert frame_size(encode(noise)) > 200_000
    frame, note = fit_to_limit(noise, encode, 200_000, "resize")
    assert frame is not None and frame_size(frame) <= 200_000
    assert frame.meta.width < 800 and abs(frame.meta.width / frame.meta.height - 800 / 600) < 0.02
    assert "resized to" in note
    rejected, note = fit_to_limit(noise, encode, 200_000, "reject")
    assert rejected is None and "rejected" in note
    small, note = fit_to_limit(noise[:10, :10], encode, 200_000, "reject")
    assert small is not None and note == ""


def test_sequence_continues_after_clean_stop_and_never_repeats_after_crash(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path, "cam-1", block=10)
    assert [store.next() for _ in range(3)] == [0, 1, 2]
    store.close()
    again = SequenceStore(tmp_path, "cam-1", block=10)
    assert again.next() == 3  # clean stop: no gap
    taken = [again.next() for _ in range(12)]  # crosses a block boundary
    # crash: no close(); the next process starts after the reserved block, never below
    after_crash = SequenceStore(tmp_path, "cam-1", block=10).next()
    assert after_crash > max(taken) and after_crash - max(taken) <= 10
    assert json.loads((tmp_path / "cam-1.seq.json").read_text())["next"] > after_crash
    assert SequenceStore(tmp_path, "other").next() == 0
    (tmp_path / "bad.seq.json").write_text("{not json")
    with pytest.raises(SequenceStateError, match=r"bad\.seq\.json"):
        SequenceStore(tmp_path, "bad")


def test_cameras_file_merges_defaults_and_explains_errors(tmp_path: Path) -> None:
    good = tmp_path / "cams.yaml"
    good.write_text("metrics_port: 9109\ndefaults:\n  line_id: line-7\n  fps: 5\n"
                    "  kafka: {bootstrap_servers: 'k:9092'}\ncameras:\n  - {camera_id: a, source: 0}\n"
                    "  - {camera_id: b, source: 'synthetic:', fps: 2, kafka: {client_options: {linger.ms: '1'}}}\n")
    cameras, port = load_fleet(good)
    assert port == 9109
    assert [(c.camera_id, c.source, c.fps, c.line_id) for c in cameras] == [("a", "0", 5, "line-7"),
                                                                            ("b", "synthetic:", 2, "line-7")]
    assert cameras[1].kafka.bootstrap_servers == "k:9092" and cameras[1].kafka.client_options == {"linger.ms": "1"}
    dup = tmp_path / "dup.yaml"
    dup.write_text("cameras:\n  - {camera_id: a}\n  - {camera_id: a}\n")
    with pytest.raises(FleetConfigError, match="repeated: a"):
        load_fleet(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - {camera_id: a, fps: -1}\n")
    with pytest.raises(FleetConfigError, match=r"camera a: .*FPS"):
        load_fleet(bad)
    with pytest.raises(FleetConfigError, match="non-empty 'cameras'"):
        load_fleet(_write(tmp_path / "e.yaml", "x: 1\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
