"""The camera producer's settings (``linewatch camera``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config
from linewatch.ingest.product_sources import check_product_source
from linewatch.ingest.regions import RoiConfig
from linewatch.ingest.wire import CAMERA_ID_PATTERN, LINE_ID_PATTERN


class CameraSettings(BaseSettings):
    """One camera producer (``linewatch camera``); CLI flags override ``LINEWATCH_*`` variables."""

    model_config = settings_config()

    camera_id: str = Field(default="cam-1", pattern=CAMERA_ID_PATTERN,
                           description="Message key; one camera's frames stay in order in one partition.")
    line_id: str = Field(default="line-1", pattern=LINE_ID_PATTERN)
    product: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN, description="Product (part type) the line "
                                  "makes now: sent as lw-product, it chooses the detector's model.")
    product_source: str | None = Field(default=None, description="Follow the product the line makes from the PLC: "
                                       "mqtt://host[:port]/TOPIC (retained) or opc.tcp://host:port#NODE_ID "
                                       "(ingest/product_sources.py); each frame carries the product in force at its "
                                       "capture time, `product` until the PLC has spoken.")
    product_source_wait_s: float = Field(default=10.0, ge=0, description="How long to wait for the PLC's product "
                                         "before capturing the first frame.")
    roi: RoiConfig | None = Field(default=None, description="Regions of interest / ignore masks of this camera "
                                  "(ingest/regions.py); the detector reads them from the same cameras file.")
    source: str = Field(default="synthetic:", description="SOURCE string, see ingest.sources.open_source.")
    fps: float | None = Field(default=None, gt=0, description="Frame rate cap; None: as fast as the source gives.")
    resize: tuple[int, int] | None = Field(default=None, description="(width, height) to resize to before encoding.")
    encoding: Literal["jpeg", "png", "raw"] = "jpeg"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    loop: bool = Field(default=False, description="At the end of a file/folder/replay, start again (else stop).")
    queue_size: int = Field(default=8, ge=1, le=10_000, description="Frames buffered between capture and producer.")
    queue_policy: Literal["auto", "drop-oldest", "block"] = Field(
        default="auto", description="When the queue is full: drop the oldest frame (counted) or block the capture. "
                            "auto: drop-oldest for live sources, block for recorded ones.")
    max_message_bytes: int = Field(default=990_000, ge=1024,
                                   description="Size guard, below the broker's message.max.bytes (1 MiB default).")
    oversize_policy: Literal["resize", "reject"] = "resize"
    state_dir: Path = Field(default=Path(".linewatch/state"), description="Per-camera sequence number state.")
    sequence_block: int = Field(default=1000, ge=1, description="Sequence numbers reserved per state-file write.")
    reopen_initial_s: float = Field(default=0.5, gt=0)
    reopen_max_s: float = Field(default=30.0, gt=0)
    create_topics: bool = Field(default=True, description="Create the frames topic when missing.")
    flush_timeout_s: float = Field(default=30.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Serve /metrics here; None: off.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)

    @field_validator("product_source")
    @classmethod
    def _followable(cls, source: str | None) -> str | None:
        return None if source is None else check_product_source(source)
