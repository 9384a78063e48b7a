"""The shared kernel every layer may import: settings plumbing, Kafka and Redis connection settings,
topic creation, the Redis key schema, and image folders / image I/O. It imports no other layer."""
