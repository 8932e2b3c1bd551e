-- Ledger of dead-lettered records (policy: Log Data, kept {log_data_days} days). No payload and no
-- personal data: the original bytes live only on the dead-letter topic. The worker writes one row per
-- invalid record after Kafka acknowledged the dead letter and before it commits the source offset, so
-- the crash recovery knows which invalid records were already dead-lettered (no duplicates on replay).
CREATE TABLE IF NOT EXISTS {db}.dead_letters {on_cluster}
(
    ingest_time    DateTime64(3, 'UTC') DEFAULT now64(3),
    src_topic      LowCardinality(String),
    src_topic_id   LowCardinality(String),
    src_partition  UInt16,
    src_offset     UInt64,
    src_index      Int32,
    reason         LowCardinality(String),
    detail         String CODEC(ZSTD(1)),
    payload_bytes  UInt32,
    ingest_batch   UInt64,
    INDEX idx_src_offset src_offset TYPE minmax GRANULARITY 1
)
ENGINE = {engine_mergetree}
PARTITION BY toDate(ingest_time)
ORDER BY (src_topic, src_partition, src_offset, src_index)
TTL toDate(ingest_time) + INTERVAL {log_data_days} DAY
SETTINGS ttl_only_drop_parts = 1, merge_with_ttl_timeout = 3600
