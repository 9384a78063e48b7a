#!/bin/sh
# Creates (or re-configures) the line's topics on Apache Kafka; idempotent, run by the `topics` job.
# Names are linewatch's defaults (ingest.settings.TopicSettings). Per-topic settings:
#   frames: compression.type=uncompressed (JPEG/PNG do not compress; cameras send uncompressed),
#           max.message.bytes above the cameras' size guard (LINEWATCH_MAX_MESSAGE_BYTES),
#           short retention: frames are only kept long enough to replay an outage.
#   outputs: small JSON records, compressed (zstd), kept longer for audits and replays.
set -eu
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-8}"
REPLICATION="${REPLICATION:-1}"
FRAMES_MAX_MESSAGE_BYTES="${FRAMES_MAX_MESSAGE_BYTES:-1048576}"
FRAMES_RETENTION_MS="${FRAMES_RETENTION_MS:-21600000}"
BIN=/opt/kafka/bin

topic() {  # name partitions config...
  name="$1"; parts="$2"; shift 2
  configs=""
  for c in "$@"; do configs="$configs --config $c"; done
  # shellcheck disable=SC2086
  "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$parts" --replication-factor "$REPLICATION" $configs
  alter=$(echo "$@" | tr ' ' ',')
  "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter --entity-type topics --entity-name "$name" \
    --add-config "$alter"
}

topic frames "$PARTITIONS" compression.type=uncompressed max.message.bytes="$FRAMES_MAX_MESSAGE_BYTES" \
  retention.ms="$FRAMES_RETENTION_MS" cleanup.policy=delete
topic results "$PARTITIONS" compression.type=zstd retention.ms=604800000 cleanup.policy=delete
topic breaches "$PARTITIONS" compression.type=zstd retention.ms=2592000000 cleanup.policy=delete
# Dead letters carry the rejected frame plus error headers: a little more room than frames.
topic dead-letters "$PARTITIONS" compression.type=producer max.message.bytes=$((FRAMES_MAX_MESSAGE_BYTES + 65536)) \
  retention.ms=1209600000 cleanup.policy=delete
topic alerts "$PARTITIONS" compression.type=zstd retention.ms=2592000000 cleanup.policy=delete
topic alert-dead-letters "$PARTITIONS" compression.type=zstd retention.ms=2592000000 cleanup.policy=delete
# Camera-health alert events of `linewatch camera-health` (LINEWATCH_HEALTH_TOPIC), key = camera.
topic camera-health "$PARTITIONS" compression.type=zstd retention.ms=2592000000 cleanup.policy=delete
"$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe
