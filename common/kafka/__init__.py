"""The one Kafka layer of every service: the consumer loop's record filter and rebalance handling
(:mod:`.consumer`), the commit gate (:mod:`.commit`) and a producer with delivery tracking (:mod:`.producer`)."""

from linewatch.common.kafka.commit import CommitGate, OutOfOrderError, TopicPartitionKey
from linewatch.common.kafka.consumer import Assignment, commit_positions, commit_stored, records, store_ready
from linewatch.common.kafka.producer import DeliveryFailedError, DeliveryProducer

__all__ = ["Assignment", "CommitGate", "DeliveryFailedError", "DeliveryProducer", "OutOfOrderError",
           "TopicPartitionKey", "commit_positions", "commit_stored", "records", "store_ready"]
