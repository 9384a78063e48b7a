"""Settings of the model registry (``LINEWATCH_REGISTRY__*``) and of the commands that use it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config

DEFAULT_DIR = Path(".linewatch")


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


class RegistrySettings(BaseSettings):
    """Everything ``linewatch models``, ``audit`` and ``dataset export --feedback`` read."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    registry: RegistryConfig = Field(default_factory=lambda: RegistryConfig.model_validate({}))
