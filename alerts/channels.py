"""Build the delivery channels the settings ask for, plus the Kafka ``alerts`` topic channel."""

from __future__ import annotations

import json

from pydantic import SecretStr

from linewatch.alerts.deliveries import Channel, DeliveryError
from linewatch.alerts.rules import AlertEvent
from linewatch.alerts.settings import AlertsSettings
from linewatch.common.kafka import DeliveryFailedError, DeliveryProducer


class KafkaChannel:
    """Writes alert transitions (JSON, key = camera) to the ``alerts`` topic."""

    name = "kafka"
    kinds: tuple[str, ...] = ("firing", "resolved", "silent", "suspect")

    def __init__(self, producer: DeliveryProducer, topic: str, timeout_s: float = 10.0) -> None:
        self.producer, self.topic, self.timeout_s = producer, topic, timeout_s

    def send(self, event: AlertEvent) -> None:
        """Produce one transition and wait for the broker's acknowledgement."""
        value = json.dumps({"event_id": event.event_id, "kind": event.kind,
                            "alert": event.alert.model_dump(mode="json")}).encode()
        try:
            self.producer.send_and_wait(self.topic, event.alert.camera_id.encode(), value, timeout_s=self.timeout_s)
        except DeliveryFailedError as exc:
            raise DeliveryError(f"kafka {exc}") from exc


def _reveal(value: SecretStr | str) -> str:
    """The secret's text; also takes a plain str (``model_copy(update=...)`` skips validation)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def build_channels(settings: AlertsSettings, producer: DeliveryProducer) -> list[Channel]:
    """Every configured channel, in delivery order."""
    from linewatch.alerts.deliveries.alertmanager import AlertmanagerChannel
    from linewatch.alerts.deliveries.grafana import GrafanaChannel
    from linewatch.alerts.deliveries.webhook import WebhookChannel

    base = settings.http.public_base_url
    channels: list[Channel] = []
    if settings.alertmanager_url:
        channels.append(AlertmanagerChannel(settings.alertmanager_url, alertname=settings.alertname,
                                            public_base_url=base, timeout_s=settings.webhook_timeout_s))
    if settings.webhook_url and settings.webhook_secret:
        channels.append(WebhookChannel(_reveal(settings.webhook_url), _reveal(settings.webhook_secret),
                                       public_base_url=base, timeout_s=settings.webhook_timeout_s))
    if settings.grafana_url and settings.grafana_token:
        channels.append(GrafanaChannel(settings.grafana_url, _reveal(settings.grafana_token),
                                       public_base_url=base, dashboard_uid=settings.grafana_dashboard_uid,
                                       timeout_s=settings.webhook_timeout_s))
    if settings.publish_alerts_topic:
        channels.append(KafkaChannel(producer, settings.topics.alerts))
    return channels
