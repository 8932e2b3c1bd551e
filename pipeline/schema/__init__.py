"""The storage schema: ClickHouse migrations (single node and cluster form) and the Kafka topics."""
