"""Settings of ``linewatch verdicts`` (``LINEWATCH_`` environment variables, nested with ``__``).

Example: ``LINEWATCH_MQTT__HOST=broker.plant``, ``LINEWATCH_DEADLINES__CAMERAS='{"cam-1": 250}'``,
``LINEWATCH_OPCUA__PLC_NODE_TEMPLATE='{"reject": "ns=3;s=\\"Gate\\".\\"{camera}\\".Reject"}'``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings

from linewatch.common.settings import KafkaSettings, TopicSettings, settings_config

VERDICT_FIELDS = ("verdict", "reject", "late", "score", "raw_score", "sequence", "part_id", "product",
                  "model_version", "latency_ms", "capture_time", "camera_id", "line_id")
LatePolicy = Literal["reject", "pass", "as_scored"]


class MqttSettings(BaseModel):
    """The MQTT broker verdicts are published to (one JSON message per frame)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = Field(default="linewatch/verdicts",
                              description="Verdicts go to <prefix>/<line>/<camera>; status to <prefix>/status.")
    qos: int = Field(default=1, ge=0, le=2, description="MQTT QoS: 1 = at least once (default), 2 = exactly once.")
    client_id: str | None = Field(default=None, description="None: linewatch-verdicts-<host>-<pid>, so replicas "
                                                           "never take over each other's connection.")
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    ack_timeout_s: float = Field(default=5.0, gt=0, description="Wait this long for the broker's PUBACK.")


class OpcUaSettings(BaseModel):
    """OPC UA: write verdicts to a PLC's server and/or serve them from our own server."""

    plc_endpoint: str | None = Field(default=None, description="e.g. opc.tcp://plc:4840; None = do not write.")
    plc_username: str | None = None
    plc_password: SecretStr | None = None
    plc_node_template: dict[str, str] = Field(
        default_factory=dict,
        description="Verdict field -> node id with {camera} / {line} placeholders, for every camera.")
    plc_nodes: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Camera id -> (verdict field -> node id); wins over the template.")
    timeout_s: float = Field(default=4.0, gt=0, description="OPC UA request timeout.")
    serve: bool = Field(default=False, description="Also serve the verdicts from an OPC UA server of our own.")
    server_endpoint: str = "opc.tcp://0.0.0.0:4841/linewatch/"
    namespace_uri: str = "urn:linewatch:verdicts"

    def nodes_for(self, camera_id: str, line_id: str) -> dict[str, str]:
        """The PLC node of each verdict field for one camera (template first, the camera's own entries win)."""
        nodes = {field: node.replace("{camera}", camera_id).replace("{line}", line_id)
                 for field, node in self.plc_node_template.items()}
        nodes.update(self.plc_nodes.get(camera_id, {}))
        unknown = set(nodes) - set(VERDICT_FIELDS)
        if unknown:
            raise ValueError(f"unknown verdict fields {sorted(unknown)}; known: {', '.join(VERDICT_FIELDS)}")
        return nodes


class DeadlineSettings(BaseModel):
    """How long a camera's part may take from capture to published verdict before it has passed the gate."""

    default_ms: float = Field(default=1000.0, gt=0)
    cameras: dict[str, float] = Field(default_factory=dict, description="Camera id -> deadline in ms.")
    late_policy: LatePolicy = Field(
        default="reject", description="Verdict of a late part: reject (fail-safe), pass, or as_scored.")

    def for_camera(self, camera_id: str) -> float:
        """Deadline of one camera in milliseconds."""
        return float(self.cameras.get(camera_id, self.default_ms))


class VerdictsSettings(BaseSettings):
    """Everything ``linewatch verdicts`` needs."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings.model_validate({}))
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    mqtt: MqttSettings = Field(default_factory=lambda: MqttSettings.model_validate({}))
    opcua: OpcUaSettings = Field(default_factory=lambda: OpcUaSettings.model_validate({}))
    deadlines: DeadlineSettings = Field(default_factory=lambda: DeadlineSettings.model_validate({}))

    group_id: str = "linewatch-verdicts"
    session_timeout_ms: int = Field(default=10000, ge=1000)
    batch_size: int = Field(default=64, ge=1, description="Results consumed per loop; small keeps latency low.")
    poll_timeout_s: float = Field(default=0.05, gt=0, description="Longest wait for a result before looping.")
    fetch_wait_max_ms: int = Field(default=10, ge=0, le=500,
                                   description="librdkafka fetch.wait.max.ms "
                                               "(docs/decisions/0006-kafka-fetch-wait.md).")
    start_from: Literal["latest", "earliest"] = Field(
        default="latest", description="Where a new consumer group starts; a backlog of old parts is useless.")
    retry_backoff_s: float = Field(default=0.5, gt=0, description="Wait after a sink failure before retrying.")
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(default=9110, ge=0, le=65535, description="Prometheus /metrics; None = off.")
