"""Create missing topics (``linewatch topics``); existing topics are left as they are."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.errors import BrokerError

log = logging.getLogger(__name__)


class TopicError(BrokerError, RuntimeError):
    """A topic could not be created or checked; the message names the topic and the reason."""


def all_topic_names(topics: TopicSettings) -> list[str]:
    """Every topic the line uses."""
    return [topics.frames, topics.results, topics.breaches, topics.dead_letters, topics.alerts,
            topics.alert_dead_letters]


def ensure_topics(kafka: KafkaSettings, names: Iterable[str], partitions: int, replication_factor: int = 1,
                  timeout_s: float = 15.0) -> dict[str, str]:
    """Create each of ``names`` that is missing. Returns ``{topic: "created" | "exists"}``.

    Raises:
        TopicError: the broker could not be reached or refused a topic.
    """
    wanted = list(dict.fromkeys(names))
    admin = AdminClient(kafka.client_config())
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise TopicError(f"cannot list topics at {kafka.bootstrap_servers}: {exc}") from None
    result = {name: "exists" for name in wanted if name in existing}
    missing = [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
               for name in wanted if name not in existing]
    if not missing:
        return result
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            result[name] = "created"
            log.info("created topic %s with %d partitions", name, partitions)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"  # created concurrently by another camera
                continue
            raise TopicError(f"cannot create topic {name}: {exc}") from None
    return result
