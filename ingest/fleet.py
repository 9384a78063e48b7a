"""Several cameras in one process, from one YAML file (``linewatch cameras --config FILE.yaml``).

File format (every key of a camera entry is a :class:`CameraSettings` field; ``defaults`` apply to
all cameras and are merged key by key, nested ``kafka``/``topics`` too)::

    metrics_port: 9101            # optional: one /metrics endpoint for all cameras
    defaults:
      line_id: line-1
      fps: 5
      kafka: {bootstrap_servers: "kafka:9092"}
    cameras:
      - {camera_id: cam-1, source: "0"}
      - {camera_id: cam-2, source: "rtsp://user:pass@10.0.0.7/stream1", queue_policy: drop-oldest}
      - {camera_id: cam-3, source: "replay:/data/magnetic_tile?shuffle=1", loop: true}
      - camera_id: cam-4
        source: "1"
        roi:                      # regions of interest / ignore masks (ingest/regions.py)
          exclude: [[[0, 0], [0.25, 0], [0.25, 0.2], [0, 0.2]]]   # a label sticker, top left

The detector and the operator API read the ``roi`` entries of the same file
(``LINEWATCH_CAMERA_REGIONS_FILE``, :func:`load_fleet_regions`).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from linewatch.common.settings import describe_validation_error
from linewatch.errors import ConfigurationError
from linewatch.ingest.camera import CameraStats, run_camera
from linewatch.ingest.metrics import CameraMetrics
from linewatch.ingest.regions import RoiConfig, describe_roi_error
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.wire import CAMERA_ID_PATTERN

log = logging.getLogger(__name__)


class FleetConfigError(ConfigurationError, ValueError):
    """The cameras file is not valid; the message names the file, camera and field."""


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read(path: Path) -> dict[str, Any]:
    """The file as a mapping with a non-empty ``cameras`` list."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FleetConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise FleetConfigError(f"{path}: expected a mapping with a non-empty 'cameras' list")
    return data


def _camera_entries(path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The file's camera entries, each merged over ``defaults``."""
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FleetConfigError(f"{path}: 'defaults' must be a mapping")
    entries = []
    for index, entry in enumerate(data["cameras"]):
        if not isinstance(entry, dict):
            raise FleetConfigError(f"{path}: cameras[{index}] must be a mapping")
        entries.append(_merge(defaults, entry))
    return entries


def load_fleet(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[list[CameraSettings], int | None]:
    """Camera settings from ``path`` (env vars below the file, ``overrides`` above it) and the metrics port."""
    path = Path(path)
    data = _read(path)
    cameras: list[CameraSettings] = []
    for index, entry in enumerate(_camera_entries(path, data)):
        values = _merge(entry, overrides or {})
        if "source" in values:
            values["source"] = str(values["source"])  # a YAML device index is an int
        try:
            cameras.append(CameraSettings(**values))
        except ValidationError as exc:
            name = entry.get("camera_id", f"cameras[{index}]")
            raise FleetConfigError(f"{path}: camera {name}: {describe_validation_error(exc, '')}") from None
    ids = [camera.camera_id for camera in cameras]
    duplicates = sorted({name for name in ids if ids.count(name) > 1})
    if duplicates:
        raise FleetConfigError(f"{path}: camera ids must be unique, repeated: {', '.join(duplicates)}")
    port = data.get("metrics_port")
    if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
        raise FleetConfigError(f"{path}: metrics_port must be a port number, got {port!r}")
    return cameras, port


def load_fleet_regions(path: str | Path) -> dict[str, RoiConfig]:
    """Each camera's ``roi`` from a cameras file (what the detector and the operator page read).

    Only ids and regions are validated here, and no ``LINEWATCH_*`` variable of the reading process
    leaks in: the detector's environment is not the cameras' environment.
    """
    path = Path(path)
    regions: dict[str, RoiConfig] = {}
    for index, entry in enumerate(_camera_entries(path, _read(path))):
        camera = entry.get("camera_id", CameraSettings.model_fields["camera_id"].default)
        if not isinstance(camera, str) or not re.fullmatch(CAMERA_ID_PATTERN, camera):
            raise FleetConfigError(f"{path}: cameras[{index}]: camera_id {camera!r} does not match {CAMERA_ID_PATTERN}")
        if entry.get("roi") is None:
            continue
        try:
            regions[camera] = RoiConfig.model_validate(entry["roi"])
        except ValidationError as exc:
            raise FleetConfigError(f"{path}: camera {camera}: {describe_roi_error(exc)}") from None
    return regions


def run_fleet(cameras: list[CameraSettings], *, metrics: CameraMetrics | None = None,
              stop_event: threading.Event | None = None, max_frames: int | None = None) -> list[CameraStats | None]:
    """Run every camera in its own thread until all end or ``stop_event`` is set.

    A camera that raises is logged and reported as None; the others keep running.
    """
    metrics = metrics or CameraMetrics()
    stop_event = stop_event or threading.Event()
    results: list[CameraStats | None] = [None] * len(cameras)

    def worker(index: int, settings: CameraSettings) -> None:
        try:
            results[index] = run_camera(settings, max_frames=max_frames, stop_event=stop_event, metrics=metrics)
        except Exception:
            log.exception("camera %s stopped with an error", settings.camera_id)

    threads = [threading.Thread(target=worker, args=(i, s), name=f"camera-{s.camera_id}", daemon=True)
               for i, s in enumerate(cameras)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
    return results


class CameraRegionsSettings(BaseModel):
    """Where a service finds each camera's regions (a mixin of the detector's and the operator API's
    settings, so both read the same ``LINEWATCH_CAMERA_REGIONS_FILE`` / ``LINEWATCH_CAMERA_REGIONS``)."""

    camera_regions_file: Path | None = Field(
        default=None, description="The cameras file (`linewatch cameras --config FILE`): each camera's `roi` "
        "(regions of interest / ignore masks) is applied to its frames and drawn on the operator page. Read "
        "once at start-up; a bad polygon stops the service with an error naming the camera.")
    camera_regions: dict[str, RoiConfig] = Field(
        default_factory=dict, description="Regions per camera as JSON (the `roi` shape, ingest/regions.py), e.g. "
        '{"cam-1": {"exclude": [[[0, 0], [0.2, 0], [0.2, 0.1], [0, 0.1]]]}}; an entry here replaces that '
        "camera's entry of camera_regions_file.")

    _file_regions: dict[str, RoiConfig] = PrivateAttr(default_factory=dict)

    @field_validator("camera_regions_file")
    @classmethod
    def _regions_file_readable(cls, value: Path | None) -> Path | None:
        # checked here, so a bad file is one clear error naming the setting before anything starts
        if value is not None:
            load_fleet_regions(value)  # FleetConfigError is a ValueError
        return value

    @model_validator(mode="after")
    def _read_regions_file(self) -> Self:
        if self.camera_regions_file is not None:
            self._file_regions = load_fleet_regions(self.camera_regions_file)
        return self

    def regions(self) -> dict[str, RoiConfig]:
        """Each camera's regions: the cameras file's, replaced per camera by ``camera_regions``."""
        return {**self._file_regions, **self.camera_regions}
