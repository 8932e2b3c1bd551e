-- Erasure audit trail (retention.yaml "records": kept {erasure_log_days} days). One row per table touched by
-- one `imtel erase` run: when, which app, what was asked, how many rows existed and were deleted, and
-- who asked (a requester reference such as a ticket id). No personal data: no IP, no request content,
-- so the Log/Monitoring Data limits do not apply; it must outlive the erased data to prove the erasure.
-- Tiny table (a few rows per request): no partitions, rows expire individually.
CREATE TABLE IF NOT EXISTS {db}.erasure_log {on_cluster}
(
    erased_at      DateTime64(3, 'UTC'),
    erasure_id     UUID,
    sdk_app_id     UInt32,
    scope          LowCardinality(String),
    table_name     LowCardinality(String),
    rows_before    UInt64,
    rows_deleted   UInt64,
    requested_by   String,
    reference      String,
    note           String
)
ENGINE = {engine_mergetree}
ORDER BY (sdk_app_id, erased_at)
TTL toDateTime(erased_at) + INTERVAL {erasure_log_days} DAY
