-- Monitoring Data (privacy policy: kept {monitoring_data_days} days): success rate and delay per
-- application x interface x minute. source = 'log' (derived from request_logs) or 'sample' (reported
-- by monitoring samples): never add the two up, they describe the same requests from two sides.
-- latency_q is a mergeable quantilesTiming state: query it with
--   quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)
-- (deterministic: merging per-minute states equals computing over the raw rows).
-- src_partition is part of the key so that one worker owns the rows it writes: the crash recovery
-- rebuilds one partition's minutes from request_logs without touching another worker's rows.
CREATE TABLE IF NOT EXISTS {db}.interface_stats_1m {on_cluster}
(
    minute          DateTime('UTC'),
    sdk_app_id      UInt32,
    interface       LowCardinality(String),
    source          LowCardinality(String),
    src_partition   UInt16,
    requests        SimpleAggregateFunction(sum, UInt64),
    failures        SimpleAggregateFunction(sum, UInt64),
    latency_sum_ms  SimpleAggregateFunction(sum, UInt64),
    latency_max_ms  SimpleAggregateFunction(max, UInt32),
    latency_q       AggregateFunction(quantilesTiming(0.5, 0.9, 0.95, 0.99), UInt32)
)
ENGINE = {engine_aggregating}
PARTITION BY toStartOfHour(minute)
ORDER BY (sdk_app_id, interface, minute, source, src_partition)
TTL toStartOfHour(minute) + INTERVAL {monitoring_data_days} DAY
SETTINGS ttl_only_drop_parts = 1, merge_with_ttl_timeout = 3600
