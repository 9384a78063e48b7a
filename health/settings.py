"""Settings of ``linewatch camera-health`` (``LINEWATCH_`` environment variables, nested with ``__``).

Thresholds are stated with the numbers measured on healthy replays of the shared good images
(health/README.md); per-camera overrides: ``LINEWATCH_CHECKS__CAMERAS='{"cam-3": {"focus_ratio": 0.2}}'``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config

# Chosen on the even-indexed train/good images of the five shared sets, checked on the odd ones
# (benchmarks/health_faults.py; results and the rule in benchmarks/results/health_faults.md)
BASELINE_FRAMES = 100
BRIGHTNESS_SPREAD_LIMIT = 5.0
FOCUS_SPREAD_LIMIT = 2.5
BRIGHTNESS_TOLERANCE = 0.15
FOCUS_TOLERANCE = 0.3
LAYOUT_LIMIT = 4.0
LAYOUT_TOLERANCE = 0.02


class CheckConfig(BaseModel):
    """Thresholds of the health checks of one camera."""

    window: int = Field(default=15, ge=3, le=1000, description="Frames in the rolling median of each pixel check.")
    baseline_frames: int = Field(default=BASELINE_FRAMES, ge=5,
                                 description="First frames that set the camera's baseline (and how much it varies: "
                                             "30 let a run of similar parts pass for the camera's range).")
    frozen_diff: float = Field(default=0.3, ge=0.0,
                               description="Mean |grey difference| of consecutive 32x32 thumbnails below which "
                                           "two frames count as identical (healthy minimum measured: 0.57).")
    frozen_frames: int = Field(default=20, ge=2, description="Identical consecutive frames that make a frozen stream.")
    dark_fraction: float = Field(default=0.6, gt=0.0, le=1.0,
                                 description="Median share of pixels <= 10 that is too dark (healthy max 0.145).")
    saturated_fraction: float = Field(default=0.5, gt=0.0, le=1.0,
                                      description="Median share of pixels >= 250 that is saturated (healthy max 0.24).")
    brightness_low: float = Field(default=0.4, gt=0.0,
                                  description="Median brightness / baseline below this is always an exposure fault "
                                              "(the outer bound; a learned baseline's own band, "
                                              "brightness_spread_limit, is narrower where the camera is steady).")
    brightness_high: float = Field(default=3.0, gt=1.0, description="... above this.")
    focus_ratio: float = Field(default=0.25, gt=0.0, lt=1.0,
                               description="Median Laplacian variance / baseline below this is always out of focus "
                                           "(the outer bound; see focus_spread_limit).")
    brightness_spread_limit: float = Field(
        default=BRIGHTNESS_SPREAD_LIMIT, gt=0.0,
        description="A camera with a learned baseline: its rolling median brightness this many of its baseline's "
                    "own spreads (robust sd of log brightness) from the baseline is an exposure fault, within "
                    "[brightness_low, brightness_high] (healthy max measured: 3.3 spreads, bsdata in file order; "
                    "the faults: 7.7 and more).")
    focus_spread_limit: float = Field(
        default=FOCUS_SPREAD_LIMIT, gt=0.0,
        description="... its rolling median sharpness this many spreads (robust sd of log Laplacian variance) "
                    "below the baseline is out of focus, never below focus_ratio (healthy max measured: 1.2; "
                    "a 2 px blur: 4.7 and more).")
    brightness_tolerance: float = Field(default=BRIGHTNESS_TOLERANCE, gt=0.0,
                                        description="Brightness within baseline x / (1 + this) and x (1 + this) "
                                                    "never fires, however steady the camera.")
    focus_tolerance: float = Field(default=FOCUS_TOLERANCE, gt=0.0,
                                   description="Sharpness above baseline / (1 + this) never fires, however steady "
                                               "the camera.")
    layout_limit: float = Field(default=LAYOUT_LIMIT, gt=0.0,
                                description="View drift: the rolling median distance of the frames' brightness "
                                            "layout from the baseline's, this many baseline spreads above the "
                                            "baseline frames' own distance, is a moved view (healthy max measured: "
                                            "1.2; a 10 % shift: 13.6 and more where the view has a layout).")
    layout_tolerance: float = Field(default=LAYOUT_TOLERANCE, gt=0.0,
                                    description="View drift smaller than this (fraction of the mean brightness, "
                                                "mean over the 8x8 layout) never fires.")
    silence_s: float = Field(default=30.0, gt=0.0, description="No frame for this long is a silent camera.")
    drift_window: int = Field(default=200, ge=5, le=10_000,
                              description="Scores in the drift window (100 let a healthy run of one surface type "
                                          "through: README).")
    drift_threshold: float = Field(default=0.8, gt=0.0,
                                   description="Rise of the median log score, in calibration log-score standard "
                                               "deviations, that is drift (healthy max measured: +0.59).")
    drift_fall_threshold: float = Field(default=0.6, gt=0.0,
                                        description="Fall of the median log score, in the same units, that is "
                                                    "drift (healthy min measured: -0.43).")
    confirm: int = Field(default=3, ge=1, description="Checks in a row that change a check's state (hysteresis).")


class CheckOverride(BaseModel):
    """A partial :class:`CheckConfig` for one camera."""

    model_config = {"extra": "forbid"}

    window: int | None = None
    baseline_frames: int | None = None
    frozen_diff: float | None = None
    frozen_frames: int | None = None
    dark_fraction: float | None = None
    saturated_fraction: float | None = None
    brightness_low: float | None = None
    brightness_high: float | None = None
    focus_ratio: float | None = None
    brightness_spread_limit: float | None = None
    focus_spread_limit: float | None = None
    brightness_tolerance: float | None = None
    focus_tolerance: float | None = None
    layout_limit: float | None = None
    layout_tolerance: float | None = None
    silence_s: float | None = None
    drift_window: int | None = None
    drift_threshold: float | None = None
    drift_fall_threshold: float | None = None
    confirm: int | None = None


class ChecksSettings(BaseModel):
    """The default thresholds and overrides per camera."""

    default: CheckConfig = Field(default_factory=lambda: CheckConfig.model_validate({}))
    cameras: dict[str, CheckOverride] = Field(default_factory=dict)

    def for_camera(self, camera_id: str) -> CheckConfig:
        """One camera's thresholds."""
        override = self.cameras.get(camera_id)
        if override is None:
            return self.default
        return CheckConfig.model_validate({**self.default.model_dump(), **override.model_dump(exclude_none=True)})


class Baseline(BaseModel):
    """A camera's healthy brightness and sharpness; pinned here, or learned from its first frames.

    A learned baseline also keeps how much its frames varied (spreads) and their brightness layout, so each
    camera is judged against its own steadiness: a steady camera's halved exposure is a fault even when a
    camera that mixes bright and dark parts would see that much on a healthy day. A pinned baseline without
    them is judged by the fixed limits alone.
    """

    mean: float = Field(gt=0.0)
    focus: float = Field(gt=0.0)
    mean_spread: float | None = Field(default=None, ge=0.0, description="Robust sd of log brightness.")
    focus_spread: float | None = Field(default=None, ge=0.0, description="Robust sd of log Laplacian variance.")
    layout: list[float] | None = Field(default=None, description="Median 8x8 brightness layout / mean (row-major).")
    layout_distance: float | None = Field(default=None, ge=0.0,
                                          description="Median distance of the baseline frames' layouts from it.")
    layout_spread: float | None = Field(default=None, ge=0.0, description="Robust sd of those distances.")


class ScoreReference(BaseModel):
    """The calibration distribution of a model's good scores (from the checkpoint's calibration)."""

    p50: float = Field(gt=0.0, description="Median raw image score of held-out good images.")
    log_scale: float = Field(gt=0.0, description="Standard deviation of their log scores.")


class HealthSettings(BaseSettings):
    """Everything ``linewatch camera-health`` needs."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings.model_validate({}))
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    redis: RedisSettings = Field(default_factory=lambda: RedisSettings.model_validate({}))
    redis_state: bool = Field(default=True, description="Keep p:cam:{camera}:health in Redis (suspect marking).")
    redis_ttl_s: int = Field(default=120, ge=10, description="The health hash expires this long after a refresh.")
    checks: ChecksSettings = Field(default_factory=lambda: ChecksSettings.model_validate({}))
    baselines: dict[str, Baseline] = Field(default_factory=dict, description="Camera id -> pinned pixel baseline.")
    baseline_ttl_s: int = Field(default=30 * 86400, ge=60,
                                description="A learned baseline kept in Redis (p:cam:{camera}:baseline, reused "
                                            "after a restart) expires this long after its camera's last frame.")
    score_references: dict[str, ScoreReference] = Field(
        default_factory=dict, description="Model version -> calibration scores; else learned from the first frames.")
    reference_checkpoints: list[str] = Field(
        default_factory=list, description="Checkpoints whose calibration becomes score_references (by version).")

    health_topic: str = Field(default="camera-health", description="Camera-health alert events (JSON, key camera).")
    group_id: str = "linewatch-camera-health"
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="How soon a stopped health service's "
                                    "partitions move (the other services' default; librdkafka's is 45 s).")
    start_from: Literal["latest", "earliest"] = "latest"
    decode_min_side: int = Field(default=160, ge=32, description="Downscaled decode keeps the long side >= this.")
    alertmanager_url: str | None = Field(default=None, description="Also post alerts here, e.g. http://am:9093.")
    alertname: str = "LinewatchCameraHealth"
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(default=9111, ge=0, le=65535)
