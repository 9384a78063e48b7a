"""Settings of the model registry (``LINEWATCH_REGISTRY__*``) and of the commands that use it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings

from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config
from linewatch.ingest.wire import CAMERA_ID_PATTERN

DEFAULT_DIR = Path(".linewatch")
ALL_LINES = ""  # same as db.ALL_LINES: an every-line assignment


class RegistryConfig(BaseModel):
    """Where the registry keeps its records and model files."""

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DIR / 'registry.db'}",
        description="SQLAlchemy URL: sqlite:///path (embedded default) or "
                    "postgresql+psycopg://user:password@host:5432/db (production).")
    model_store: Path = Field(default=DEFAULT_DIR / "models",
                              description="Folder of content-addressed model files (sha256 names).")
    audit_retention_days: float = Field(default=90.0, gt=0,
                                        description="Audit rows older than this (capture time) are pruned.")
    audit_group_id: str = Field(default="linewatch-audit", description="Consumer group of `linewatch audit run`.")
    shadow_group_prefix: str = Field(default="linewatch-shadow",
                                     description="Shadow replays use this prefix plus a unique suffix as group.")

    @field_validator("database_url")
    @classmethod
    def _database_url_usable(cls, value: str) -> str:
        # Checked here so that a typo is a one-line configuration error, not a traceback from the engine.
        # The dialect is looked up (a module of SQLAlchemy), not connected to; its driver loads on first use.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(value).get_dialect()
        except (ArgumentError, NoSuchModuleError) as exc:
            raise ValueError(f"not a usable SQLAlchemy URL: {exc}") from None
        return value


class RoutingConfig(BaseModel):
    """How a detector picks models from the registry (``LINEWATCH_ROUTING__*``); used only with a registry."""

    default_product: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN, description="Product of frames "
                                        "without an lw-product header; unset: those frames use the `model` file.")
    line: str = Field(default=ALL_LINES, max_length=200, description="Line whose assignments this detector follows "
                      "(a line's own promotion wins over the product's every-line one); empty: every-line only.")
    poll_s: float = Field(default=5.0, gt=0, description="How often the registry is asked for new promotions.")
    fallback: bool = Field(default=False, description="Frames of a product with no assigned model are scored by "
                           "the `model` file instead of being dead-lettered (no_model_for_product).")
    known_good: dict[str, Path] = Field(default_factory=dict, description="Per product, a golden-sample image a "
                                        "new model must not call anomalous before it goes live.")
    max_products: int = Field(default=32, ge=1, description="Products followed at once (one loaded model each); "
                              "frames of further products are dead-lettered.")


class RegistrySettings(BaseSettings):
    """Everything ``linewatch models``, ``audit`` and ``dataset export --feedback`` read."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    registry: RegistryConfig = Field(default_factory=lambda: RegistryConfig.model_validate({}))
