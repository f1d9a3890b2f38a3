"""The Kafka-compatible broker: embedded Tansu process management, topic administration, its CLI."""
