-- Monitoring Data (privacy policy: kept {monitoring_data_days} days): samples as reporters sent them.
-- Folded into interface_stats_1m with source = 'sample' by the worker after each acknowledged insert.
CREATE TABLE IF NOT EXISTS {db}.monitoring_samples {on_cluster}
(
    window_start    DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    sdk_app_id      UInt32,
    interface       LowCardinality(String),
    window_seconds  UInt16,
    requests        UInt32,
    failures        UInt32,
    latency_avg_ms  Float64,
    latency_max_ms  UInt32,
    reporter        LowCardinality(String),
    src_topic_id    LowCardinality(String),
    src_partition   UInt16,
    src_offset      UInt64 CODEC(Delta, ZSTD(1)),
    src_index       UInt32,
    ingest_batch    UInt64 CODEC(Delta, ZSTD(1)),
    ingest_time     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_src_offset src_offset TYPE minmax GRANULARITY 1,
    INDEX idx_ingest_batch ingest_batch TYPE minmax GRANULARITY 1
)
ENGINE = {engine_mergetree}
PARTITION BY toStartOfHour(window_start)
ORDER BY (sdk_app_id, interface, window_start)
TTL toStartOfHour(window_start) + INTERVAL {monitoring_data_days} DAY
SETTINGS ttl_only_drop_parts = 1, merge_with_ttl_timeout = 3600
