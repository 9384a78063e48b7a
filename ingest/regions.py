"""A camera's regions of interest and ignore masks: polygons in the camera's config.

One :class:`RoiConfig` per camera, the ``roi`` key of a camera entry in the cameras file (``linewatch
cameras --config``) or ``LINEWATCH_ROI`` for a single ``linewatch camera``::

    roi:
      units: normalised            # 0..1 of the frame's width and height (the default)
      include: []                  # polygons that count; none = the whole frame
      exclude:                     # ignore masks (fixtures, conveyor edges, labels), applied after include
        - [[0.0, 0.0], [0.25, 0.0], [0.25, 0.2], [0.0, 0.2]]

or in pixels of a snapshot: ``units: pixels`` with ``frame_size: [1920, 1080]`` (width, height of that
snapshot), so a frame of another size (a camera ``resize``, a new resolution) scales the polygons instead
of shifting them. The camera process only validates the regions (a bad polygon stops it at start-up);
the detector applies them (``detector/model/roi.py``) and the operator page draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from linewatch.errors import ConfigurationError

Point = tuple[float, float]


class RoiError(ConfigurationError, ValueError):
    """A region configuration that cannot describe a region (the message says which polygon and why)."""


class RoiConfig(BaseModel):
    """One camera's regions: polygons of (x, y) points, x to the right, y down."""

    model_config = ConfigDict(extra="forbid")  # a misspelt 'exlude' must not silently mean "no mask"

    units: Literal["normalised", "pixels"] = "normalised"
    frame_size: tuple[int, int] | None = Field(
        default=None, description="(width, height) of the frame pixel coordinates were read on; required with "
                                  "units: pixels (other frame sizes scale the polygons).")
    include: list[list[Point]] = Field(default_factory=list, description="Regions that count; none = all.")
    exclude: list[list[Point]] = Field(default_factory=list, description="Ignore masks, applied after include.")
    min_cover: float = Field(default=0.5, gt=0.0, le=1.0, description="Share of a map cell inside that counts it.")

    @model_validator(mode="after")
    def _valid_polygons(self) -> RoiConfig:
        if self.units == "pixels" and self.frame_size is None:
            raise RoiError("units: pixels needs frame_size: [width, height] of the frame the points were read on")
        if self.frame_size is not None and min(self.frame_size) < 1:
            raise RoiError(f"frame_size {list(self.frame_size)} must be positive (width, height)")
        width, height = self.frame_size if self.units == "pixels" and self.frame_size else (1, 1)
        for kind, polygons in (("include", self.include), ("exclude", self.exclude)):
            for i, polygon in enumerate(polygons):
                if len(polygon) < 3:
                    raise RoiError(f"{kind}[{i}] has {len(polygon)} points; a polygon needs at least 3")
                if any(not (0 <= x <= width and 0 <= y <= height) for x, y in polygon):
                    where = f"the {width}x{height} frame" if self.units == "pixels" else "0..1 (units: normalised)"
                    raise RoiError(f"{kind}[{i}] has points outside {where}")
        return self

    @property
    def is_whole_frame(self) -> bool:
        """Whether the regions change nothing."""
        return not self.include and not self.exclude

    def normalised(self) -> RoiConfig:
        """The same regions in normalised units (what the detector and the operator page work in)."""
        if self.units == "normalised":
            return self
        assert self.frame_size is not None  # the validator requires it with pixels
        width, height = self.frame_size

        def scale(polygons: list[list[Point]]) -> list[list[Point]]:
            return [[(x / width, y / height) for x, y in polygon] for polygon in polygons]

        return RoiConfig(units="normalised", include=scale(self.include), exclude=scale(self.exclude),
                         min_cover=self.min_cover)


def describe_roi_error(exc: ValidationError) -> str:
    """One line per problem of a region configuration, naming the key (``roi.exclude.0``) and why."""
    parts = []
    for error in exc.errors():
        where = ".".join(["roi", *(str(item) for item in error["loc"])])
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def load_roi_file(path: str | Path) -> RoiConfig:
    """One camera's regions from a YAML or JSON file: the ``roi`` mapping itself, or a mapping with an
    ``roi`` key (a camera entry pasted from the cameras file). Any problem is a :class:`RoiError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RoiError(f"{path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("roi"), dict):
        data = data["roi"]
    if not isinstance(data, dict):
        raise RoiError(f"{path}: expected a region mapping (units, include, exclude, ...), got {type(data).__name__}")
    try:
        return RoiConfig.model_validate(data)
    except ValidationError as exc:
        raise RoiError(f"{path}: {describe_roi_error(exc)}") from None
