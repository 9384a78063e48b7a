"""Settings of the streaming detector (``LINEWATCH_`` environment variables, nested with ``__``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config
from linewatch.detector.model.vocabulary import Backend
from linewatch.detector.registry.settings import RegistryConfig, RoutingConfig
from linewatch.ingest.fleet import CameraRegionsSettings
from linewatch.ingest.wire import CAMERA_ID_PATTERN, MAX_PIXELS, MAX_SIDE

DecodeMode = Literal["cpu", "gpu", "auto"]


class DetectorSettings(BaseSettings, CameraRegionsSettings):
    """Everything ``linewatch detect`` and :func:`detector.service.run_detector` need."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    redis: RedisSettings = Field(default_factory=lambda: RedisSettings.model_validate({}))
    registry: RegistryConfig | None = Field(default=None, description="Model registry (LINEWATCH_REGISTRY__"
                                            "DATABASE_URL etc.): when set, models follow its promotions per product "
                                            "without a restart (hot swap); unset: the `model` file scores every frame.")
    routing: RoutingConfig = Field(default_factory=lambda: RoutingConfig.model_validate({}))

    model: Path = Field(default=Path("models/stfpm.safetensors"), description="Checkpoint from `linewatch train`.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    backend: Backend = Field(
        default=Backend.AUTO,
        description="Model runtime; auto = the fastest measured on this machine (detector/model/backends).",
    )
    torch_threads: int = Field(default=0, ge=0, description="torch intra-op threads on CPU; 0 = torch's default.")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="A batch closes at this many frames...")
    max_wait_ms: float = Field(default=20.0, ge=0.0, description="...or this long after its first frame arrived.")
    decode_workers: int = Field(default=2, ge=1, le=64, description="Threads decoding JPEG/PNG while the model runs.")
    decode_mode: DecodeMode = Field(default="cpu", description="cpu (OpenCV threads), gpu (nvjpeg via torchvision), "
                                                        "auto (gpu when the model runs on CUDA).")
    max_side: int = Field(default=MAX_SIDE, ge=16, le=MAX_SIDE, description="Frames wider or taller than this are "
                          "dead-lettered; set it from the cameras' real resolution (the longer side, plus margin).")
    max_pixels: int = Field(default=MAX_PIXELS, ge=256, le=MAX_PIXELS, description="Frames with more pixels are "
                            "dead-lettered; set it from the cameras' real resolution (e.g. 2448x2048 -> 5013504).")
    max_batch_pixels: int = Field(default=48_000_000, ge=1, description="A batch closes before its frames' pixels "
                                  "would exceed this (3 bytes each decoded), whatever max_batch_size says; a "
                                  "single larger frame runs alone. Bounds the memory of a batch of big frames.")
    max_future_skew_s: float = Field(default=300.0, ge=0, description="Frames captured further in the future than "
                                     "this (camera clock ahead of ours) are dead-lettered.")
    camera_allow_list: list[str] | None = Field(default=None, description="When set, frames of other cameras are "
                                                "dead-lettered (their ids never reach Redis, metrics or results).")
    group_id: str = "linewatch-detector"
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new group starts; earliest so no frame is skipped.")
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="How soon a dead detector's partitions move.")
    max_poll_interval_ms: int = Field(default=60_000, ge=1000, description="A stuck loop leaves the group after this.")
    queued_max_messages_kbytes: int = Field(default=16_384, ge=1, description="Prefetch bound per consumer (KiB).")
    fetch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Most bytes one fetch returns.")
    fetch_wait_max_ms: int = Field(default=10, ge=0, le=500, description="librdkafka fetch.wait.max.ms "
                                   "(docs/decisions/0006-kafka-fetch-wait.md).")
    statistics_interval_ms: int = Field(default=5_000, ge=0, description="librdkafka statistics (lag); 0 = off.")
    commit_interval_ms: int = Field(default=1_000, ge=100, description="Auto-commit of stored (acked) offsets.")
    heatmaps_per_camera: int = Field(default=20, ge=1, description="Latest N heatmaps kept per camera.")
    camera_key_ttl_s: int = Field(default=86_400, ge=1, description="Lifetime of a camera's latest/recent keys and "
                                  "of the cameras set, renewed on every write: a silent camera's keys go away.")
    heatmap_stall_s: float = Field(default=1.0, gt=0, description="A Redis write running this long counts as a "
                                   "stall: later heatmaps are skipped and their results carry no heatmap_key.")
    heatmap_ttl_s: int = Field(default=600, ge=1, description="Lifetime of an ordinary heatmap.")
    breach_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="Lifetime of a breach heatmap (kept longer).")
    heatmap_map_size: int = Field(default=64, ge=8, le=512, description="Side of the low-resolution 16-bit map.")
    overlay_max_side: int = Field(default=256, ge=32, description="Frames stored for overlays (JPEG) are "
                                  "downscaled to at most this side.")
    cache_queue_batches: int = Field(default=8, ge=1, description="Batches queued for Redis before skipping.")
    metrics_port: int | None = Field(default=9108, ge=0, le=65535,
                                     description="HTTP port of /metrics, /healthz, /readyz; 0 = any free port.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of /metrics, /healthz, /readyz (no auth): "
                              "local only by default; a container that is scraped/probed sets 0.0.0.0 explicitly.")
    camera_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-camera image thresholds (raw score), e.g. from `linewatch calibrate "
        "--print-threshold` on that camera's good frames; other cameras use the model's calibrated threshold.")
    delivery_retries: int = Field(default=3, ge=0, description="Re-sends of an output whose delivery failed.")
    output_max_bytes: int = Field(default=1_000_000, ge=1000, description="Largest output record (librdkafka "
                                  "message.max.bytes); outputs that cannot fit are dead-lettered, cut to fit.")

    @field_validator("camera_allow_list")
    @classmethod
    def _allowed_ids_follow_the_id_rule(cls, value: list[str] | None) -> list[str] | None:
        bad = [camera for camera in value or [] if not re.fullmatch(CAMERA_ID_PATTERN, camera)]
        if bad:
            raise ValueError(f"camera ids {bad[:5]} do not match {CAMERA_ID_PATTERN}")
        return value

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka consumer settings (see docs in service.py for why each is set)."""
        config = self.kafka.client_config()
        config.update({
            "group.id": self.group_id,
            "auto.offset.reset": self.auto_offset_reset,
            # We store an offset only once every output of every earlier frame is acknowledged;
            # auto-commit then commits just those stored offsets (plus a sync commit on revoke/stop).
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": self.commit_interval_ms,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(250, self.session_timeout_ms // 4),
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "queued.max.messages.kbytes": self.queued_max_messages_kbytes,
            "fetch.max.bytes": self.fetch_max_bytes,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "receive.message.max.bytes": max(self.fetch_max_bytes + 512, 100_000_000),
        })
        if self.statistics_interval_ms:
            config["statistics.interval.ms"] = self.statistics_interval_ms
        return config

    def producer_config(self) -> dict[str, Any]:
        """librdkafka producer settings for results, breaches and dead letters."""
        config = self.kafka.client_config()
        config.update({
            "enable.idempotence": True,  # broker retries never duplicate or reorder an output
            "acks": "all",
            "linger.ms": 5,  # one batch's outputs leave in one request
            "message.timeout.ms": 60_000,
            "message.max.bytes": self.output_max_bytes,
        })
        return config
