"""Ingestion: Kafka message bytes to validated, minimised rows in columnar buffers (decoders, privacy rules,
limits, admission)."""
