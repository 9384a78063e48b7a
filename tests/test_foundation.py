"""The foundation talks to a real broker and a real Redis, and explains bad settings."""

from __future__ import annotations

import subprocess
import sys
import time

import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.deploy.local import LocalStack


def test_broker_round_trip_with_consumer_group_and_commit(bootstrap: str, unique: str) -> None:
    topic = f"found-{unique}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(10):
        producer.produce(topic, key=f"cam-{i % 2}", value=f"frame-{i}".encode())
    assert producer.flush(15) == 0

    group = f"group-{unique}"
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000,
    })
    consumer.subscribe([topic])
    seen: list[bytes] = []
    next_offsets: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 10 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        seen.append(msg.value())
        next_offsets[msg.partition()] = msg.offset() + 1
        consumer.commit(message=msg, asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    consumer.close()
    assert sorted(seen) == sorted(f"frame-{i}".encode() for i in range(10))
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == next_offsets


def test_redis_write_and_read(stack: LocalStack, unique: str) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    key = f"lw-test:{unique}"
    client.set(key, b"\x00heatmap", ex=60)
    assert client.get(key) == b"\x00heatmap"
    client.delete(key)


def test_bad_setting_gives_one_line_error() -> None:
    code = "from linewatch.common.settings import load_settings, settings_config, TopicSettings\n" \
           "from pydantic_settings import BaseSettings\n" \
           "class S(BaseSettings):\n    model_config = settings_config()\n" \
           "    topics: TopicSettings = TopicSettings()\n" \
           "load_settings(S)\n"
    env = {"LINEWATCH_TOPICS__PARTITIONS": "zero", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "LINEWATCH_TOPICS__PARTITIONS" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_lists_subcommands() -> None:
    proc = subprocess.run([sys.executable, "-m", "linewatch.deploy.cli",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "stack" in proc.stdout
