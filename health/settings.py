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


class CheckConfig(BaseModel):
    """Thresholds of the health checks of one camera."""

    window: int = Field(default=15, ge=3, le=1000, description="Frames in the rolling median of each pixel check.")
    baseline_frames: int = Field(default=30, ge=5, description="First frames that set the camera's baseline.")
    frozen_diff: float = Field(default=0.3, ge=0.0,
                               description="Mean |grey difference| of consecutive 32x32 thumbnails below which "
                                           "two frames count as identical (healthy minimum measured: 0.57).")
    frozen_frames: int = Field(default=20, ge=2, description="Identical consecutive frames that make a frozen stream.")
    dark_fraction: float = Field(default=0.6, gt=0.0, le=1.0,
                                 description="Median share of pixels <= 10 that is too dark (healthy max 0.145).")
    saturated_fraction: float = Field(default=0.5, gt=0.0, le=1.0,
                                      description="Median share of pixels >= 250 that is saturated (healthy max 0.24).")
    brightness_low: float = Field(default=0.4, gt=0.0,
                                  description="Median brightness / baseline below this is an exposure fault "
                                              "(healthy min 0.58).")
    brightness_high: float = Field(default=3.0, gt=1.0, description="... above this (healthy max 2.70).")
    focus_ratio: float = Field(default=0.25, gt=0.0, lt=1.0,
                               description="Median Laplacian variance / baseline below this is out of focus "
                                           "(healthy min 0.35; a 2 px Gaussian blur gives 0.02-0.39).")
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
    """A camera's healthy brightness and sharpness; pinned here, or learned from its first frames."""

    mean: float = Field(gt=0.0)
    focus: float = Field(gt=0.0)


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
    start_from: Literal["latest", "earliest"] = "latest"
    decode_min_side: int = Field(default=160, ge=32, description="Downscaled decode keeps the long side >= this.")
    alertmanager_url: str | None = Field(default=None, description="Also post alerts here, e.g. http://am:9093.")
    alertname: str = "LinewatchCameraHealth"
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(default=9111, ge=0, le=65535)
