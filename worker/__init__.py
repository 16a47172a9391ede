"""The streaming worker: Kafka `tweets` -> micro-batches -> Triton -> Kafka `emotions`."""
