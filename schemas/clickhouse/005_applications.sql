-- Configuration Data: the application registry that names apps on dashboards and queries.
-- Policy: kept while the app is in use; deleted {configuration_data_days} days after it is terminated.
-- Latest state per app wins (ReplacingMergeTree on updated_at); active apps never expire.
CREATE TABLE IF NOT EXISTS {db}.applications {on_cluster}
(
    sdk_app_id      UInt32,
    name            String,
    status          LowCardinality(String),
    created_at      DateTime('UTC'),
    terminated_at   Nullable(DateTime('UTC')),
    retention_days  Nullable(UInt16),
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine_replacing}
ORDER BY sdk_app_id
TTL coalesce(terminated_at, toDateTime('2099-12-31 00:00:00', 'UTC')) + INTERVAL {configuration_data_days} DAY
