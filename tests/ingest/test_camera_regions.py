"""Regions of interest in the camera config: the cameras file's ``roi`` entries, as the detector reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from linewatch.ingest.fleet import FleetConfigError, load_fleet, load_fleet_regions
from linewatch.ingest.regions import RoiConfig

pytestmark = pytest.mark.unit

CAMERAS = """
defaults: {line_id: line-1}
cameras:
  - camera_id: cam-1
    source: "synthetic:"
    roi:
      exclude: [[[0, 0], [0.25, 0], [0.25, 0.25], [0, 0.25]]]
  - camera_id: cam-2
    source: "synthetic:"
    roi: {units: pixels, frame_size: [200, 100], include: [[[0, 0], [100, 0], [100, 100], [0, 100]]]}
  - {camera_id: cam-3, source: "synthetic:"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_the_detector_reads_the_same_regions_the_cameras_file_gives_each_camera(tmp_path: Path) -> None:
    path = write(tmp_path, CAMERAS)
    regions = load_fleet_regions(path)
    assert sorted(regions) == ["cam-1", "cam-2"]  # cam-3 has none: the whole frame counts
    assert regions["cam-1"].exclude == [[(0, 0), (0.25, 0), (0.25, 0.25), (0, 0.25)]]
    assert regions["cam-2"].normalised().include == [[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]]
    cameras, _ = load_fleet(path)
    assert [c.roi for c in cameras] == [regions["cam-1"], regions["cam-2"], None]


@pytest.mark.parametrize(("roi", "why"), [
    ("{exclude: [[[0, 0], [1, 1]]]}", r"cam-1: roi: exclude\[0\] has 2 points"),
    ("{exclude: [[[0, 0], [1.5, 0], [0, 1]]]}", r"cam-1: roi: exclude\[0\] has points outside 0\.\.1"),
    ("{units: pixels, exclude: [[[0, 0], [5, 0], [0, 5]]]}", "needs frame_size"),
    ("{exclude: [[[0, 0], [1, 0], [zero, 1]]]}", "roi.exclude.0.2.0"),
])
def test_a_bad_polygon_is_one_clear_error_naming_file_and_camera(tmp_path: Path, roi: str, why: str) -> None:
    path = write(tmp_path, f"cameras:\n  - {{camera_id: cam-1, roi: {roi}}}\n")
    with pytest.raises(FleetConfigError, match=why) as caught:
        load_fleet_regions(path)
    assert str(path) in str(caught.value)
    with pytest.raises(FleetConfigError, match="camera cam-1"):
        load_fleet(path)  # the camera process refuses the same file at its start


def test_environment_of_the_reading_process_does_not_leak_into_regions(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_ROI", RoiConfig(exclude=[[(0, 0), (1, 0), (0, 1)]]).model_dump_json())
    assert sorted(load_fleet_regions(write(tmp_path, CAMERAS))) == ["cam-1", "cam-2"]
