-- Log Data (privacy policy: kept {log_data_days} days). One row per interface request.
-- The exit IP is stored minimised (client_net: /24 or /48 prefix, keyed hash, or empty) - never in full.
-- Partitioned by day and expired by whole parts (ttl_only_drop_parts): the TTL counts from the start of
-- the row's day, so no row outlives the policy while whole-day parts are dropped without rewrites.
-- src_* columns say which Kafka record a row came from: the exactly-once recovery reads them.
CREATE TABLE IF NOT EXISTS {db}.request_logs {on_cluster}
(
    request_time   DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    sdk_app_id     UInt32,
    interface      LowCardinality(String),
    request_id     String CODEC(ZSTD(1)),
    client_net     String CODEC(ZSTD(1)),
    latency_ms     UInt32 CODEC(T64, ZSTD(1)),
    error_code     Int32 CODEC(T64, ZSTD(1)),
    exception      String CODEC(ZSTD(3)),
    region         LowCardinality(String),
    platform       LowCardinality(String),
    src_topic_id   LowCardinality(String),
    src_partition  UInt16,
    src_offset     UInt64 CODEC(Delta, ZSTD(1)),
    src_index      UInt32 CODEC(T64, ZSTD(1)),
    ingest_batch   UInt64 CODEC(Delta, ZSTD(1)),
    ingest_time    DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1)),
    INDEX idx_src_offset src_offset TYPE minmax GRANULARITY 1,
    INDEX idx_ingest_batch ingest_batch TYPE minmax GRANULARITY 1,
    INDEX idx_error_code error_code TYPE set(256) GRANULARITY 4
)
ENGINE = {engine_mergetree}
PARTITION BY toDate(request_time)
ORDER BY (sdk_app_id, interface, request_time)
TTL toDate(request_time) + INTERVAL {log_data_days} DAY
SETTINGS ttl_only_drop_parts = 1, merge_with_ttl_timeout = 3600, index_granularity = 8192
